"""The `expiryd` command."""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from collections.abc import Callable, Sequence

from expiryd import __version__, config, logs
from expiryd.errors import ServiceError, UserError
from expiryd.redact import scrub

EXAMPLES = {
    "run": "expiryd run --config /etc/expiryd/expiryd.toml",
    "work": "expiryd work --config /etc/expiryd/expiryd.toml   (beside at least one run)",
    "check": "expiryd check --config /etc/expiryd/expiryd.toml",
    "status": "expiryd status --config /etc/expiryd/expiryd.toml   (or --json)",
    "schedule": "expiryd schedule order:cancel:SN123 --in 30m",
    "init-db": "expiryd init-db --config expiryd.toml",
    "dead": "expiryd dead list",
    "list": "expiryd dead list --json | jq .error",
    "replay": "expiryd dead replay order:cancel:SN123   (or: --all)",
    "purge": "expiryd dead purge order:cancel:SN123   (or: --all)",
}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return int(args.command(args))
    except UserError as exc:
        print(f"expiryd: error: {scrub(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # never a traceback for the user, unless asked for one
        if os.environ.get("EXPIRYD_DEBUG"):
            raise
        print(
            f"expiryd: error: {logs.describe_error(exc)} (set EXPIRYD_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        return 1


def _run(args: argparse.Namespace) -> int:
    from expiryd.service.daemon import Daemon

    settings = config.load(args.config)
    logs.configure(args.log_format, args.log_level)
    return Daemon(settings, configure_redis=args.configure_redis).run()


def _work(args: argparse.Namespace) -> int:
    from expiryd.service.daemon import Daemon

    settings = config.load(args.config)
    logs.configure(args.log_format, args.log_level)
    return Daemon(settings, listen=False).run()


def _check(args: argparse.Namespace) -> int:
    from expiryd.service.checks import run_checks

    failed = False
    for result in run_checks(config.load(args.config)):
        print(result, flush=True)
        failed = failed or not result.ok
    return 1 if failed else 0


def _status(args: argparse.Namespace) -> int:
    import json

    from expiryd.redis.connections import CONNECTION_ERRORS, RedisTarget
    from expiryd.redis.keyspace import Keyspace
    from expiryd.redis.shards import shard_keyspaces
    from expiryd.service.status import gather, render

    settings = config.load(args.config)
    target = RedisTarget.from_url(settings.redis.url)
    client = target.client()
    try:
        shards = shard_keyspaces(target, client, settings.redis.prefix)
        report = gather(client, Keyspace(settings.redis.prefix, target.db), shards)
    except CONNECTION_ERRORS as exc:
        raise ServiceError(f"Redis at {target.safe_url}: {logs.describe_error(exc)}") from None
    finally:
        client.close()
    if args.json:
        print(json.dumps(report.as_json()))
    else:
        print("\n".join(render(report)))
    return 0 if report.healthy else 1


def _schedule(args: argparse.Namespace) -> int:
    from expiryd.durations import parse_duration
    from expiryd.redis.connections import CONNECTION_ERRORS, RedisTarget

    try:
        seconds = parse_duration(args.delay)
    except ValueError as exc:
        raise UserError(f"--in: {exc}") from None
    target = RedisTarget.from_url(config.load(args.config).redis.url)
    client = target.client()
    try:
        client.set(args.key, args.value, ex=seconds)
    except CONNECTION_ERRORS as exc:
        raise ServiceError(f"Redis at {target.safe_url}: {logs.describe_error(exc)}") from None
    finally:
        client.close()
    print(f"{args.key} expires in {seconds}s (db {target.db})")
    return 0


def _init_db(args: argparse.Namespace) -> int:
    from expiryd.database import inbox
    from expiryd.database.engine import describe_target, make_engine
    from expiryd.database.sample import create_sample_table

    settings = config.load(args.config)
    engine = make_engine(settings.database)
    tables = [(settings.orders.table, lambda: create_sample_table(engine, settings.orders))]
    if settings.database.inbox:
        table = settings.database.inbox_table
        tables.append((table, lambda: inbox.create_table(engine, table)))
    try:
        for name, create in tables:
            try:
                created = create()
            except Exception as exc:
                target = describe_target(engine)
                raise ServiceError(f"{target}: {logs.describe_error(exc)}") from None
            state = "created" if created else "already exists; left as it is"
            print(f"table {name!r} in {describe_target(engine)} {state}")
    finally:
        engine.dispose()
    return 0


def _config_option(default: object) -> argparse.ArgumentParser:
    holder = argparse.ArgumentParser(add_help=False)
    holder.add_argument(
        "--config",
        metavar="PATH",
        default=default,
        help=f"the TOML config file (default: $EXPIRYD_CONFIG or ./{config.defaults.CONFIG_PATH})",
    )
    return holder


def _dead_letters(args: argparse.Namespace) -> int:
    from expiryd.service import deadletters

    settings = config.load(args.config)
    with deadletters.open_queues(settings) as queues:
        if args.dead_action == "list":
            for queue in queues:
                for line in deadletters.describe(queue.dead(), as_json=args.json):
                    print(line)
            return 0
        if not args.keys and not args.all:
            raise UserError(f"dead {args.dead_action}: name one or more KEYs, or --all")
        count = 0
        for queue in queues:
            chosen = [job.id for job in deadletters.select(queue.dead(), args.keys, args.all)]
            count += queue.replay(chosen) if args.dead_action == "replay" else queue.purge(chosen)
        done = "queued again" if args.dead_action == "replay" else "removed"
        print(f"{count} dead letters {done}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="expiryd",
        description="Turns Redis key expiries into database updates.",
        epilog="Example: expiryd run --config expiryd.toml",
        parents=[_config_option(None)],
    )
    # Given after the command it wins; given before, the command must not reset it.
    common = _config_option(argparse.SUPPRESS)
    parser.add_argument("--version", action="version", version=f"expiryd {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)

    run = _command(commands, "run", _run, common, "Listen for expiries and handle them.")
    work = _command(
        commands,
        "work",
        _work,
        common,
        "Only handle queued expiries: more workers for the queue that `run` daemons fill.",
    )
    for daemon in (run, work):
        daemon.add_argument(
            "--log-format",
            choices=logs.FORMATS,
            default="auto",
            help="json lines, a console view, or auto (console on a terminal)",
        )
        daemon.add_argument("--log-level", choices=logs.LEVELS, default="info")
    run.add_argument(
        "--configure-redis",
        action="store_true",
        help="set notify-keyspace-events on the server if it lacks what is needed",
    )

    _command(
        commands,
        "check",
        _check,
        common,
        "Check the config, Redis, its notification flags, the database and its tables.",
    )

    status = _command(
        commands,
        "status",
        _status,
        common,
        "The daemons, the ledger and the queue on one screen; exit 0 if a daemon listens "
        "and no loop is stalled.",
    )
    status.add_argument("--json", action="store_true", help="one JSON object, for scripts")

    schedule = _command(
        commands,
        "schedule",
        _schedule,
        common,
        "Set a key that expires after a delay (SETEX), to try expiryd out.",
    )
    schedule.add_argument("key", help="the key, e.g. order:cancel:SN123")
    schedule.add_argument(
        "--in",
        dest="delay",
        required=True,
        metavar="DURATION",
        help="when it expires: 90s, 30m, 2h, 10d",
    )
    schedule.add_argument("--value", default="1", help="the key's value (default: 1)")

    _command(
        commands,
        "init-db",
        _init_db,
        common,
        "Create a sample orders table per [orders], and the inbox table; an existing table "
        "is left alone.",
    )
    _add_dead_commands(commands, common)
    return parser


def _add_dead_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    dead = _command(
        commands,
        "dead",
        _dead_letters,
        common,
        "List, replay or purge the expiries whose handler failed for good.",
    )
    actions = dead.add_subparsers(
        title="actions", metavar="ACTION", dest="dead_action", required=True
    )
    listing = _command(actions, "list", _dead_letters, common, "List the dead letters.")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    for action, summary in (
        ("replay", "Queue dead letters again, after fixing what made them fail."),
        ("purge", "Delete dead letters for good."),
    ):
        sub = _command(actions, action, _dead_letters, common, summary)
        sub.add_argument("keys", nargs="*", metavar="KEY", help="the expired keys to act on")
        sub.add_argument("--all", action="store_true", help="every dead letter")


def _command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    function: Callable[[argparse.Namespace], int],
    common: argparse.ArgumentParser,
    summary: str,
) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        name,
        parents=[common],
        help=summary,
        description=summary,
        epilog=textwrap.dedent(f"Example: {EXAMPLES[name]}"),
    )
    parser.set_defaults(command=function)
    return parser
