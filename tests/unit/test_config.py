import tomllib
from pathlib import Path

import pytest

from expiryd import config
from expiryd.errors import ConfigError
from expiryd.redact import redact_url
from expiryd.redis.connections import RedisTarget


def parse(text: str, environ: dict[str, str] | None = None) -> config.Config:
    return config.parse(tomllib.loads(text), "shop.toml", environ or {})


def test_example_config_from_the_readme_parses() -> None:
    example = Path(__file__).parents[2] / "expiryd.toml.example"
    loaded = config.load(str(example), environ={})
    assert [r.handler for r in loaded.routes][:2] == ["orders.cancel", "orders.complete"]


def test_no_file_at_the_default_path_means_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    loaded = config.load(None, environ={})
    assert loaded.source == "(defaults)"
    assert loaded.database.url == "sqlite:///expiryd.sqlite3"
    assert loaded.database.pool == "none"
    assert [r.pattern.text for r in loaded.routes] == [
        "order:cancel:{order_sn}",
        "order:complete:{order_sn}",
    ]


def test_an_explicit_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        config.load(str(tmp_path / "nope.toml"), environ={})


def test_a_file_that_is_not_toml_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "shop.toml"
    path.write_text("[redis\n")
    with pytest.raises(ConfigError, match=r"shop\.toml: not valid TOML"):
        config.load(str(path), environ={})


def test_environment_overrides_urls() -> None:
    loaded = parse(
        '[redis]\nurl = "redis://a:1/2"\n[database]\nurl = "sqlite:///x"\n',
        {"EXPIRYD_REDIS_URL": "redis://b:2/3", "EXPIRYD_DATABASE_URL": "sqlite:///y"},
    )
    assert loaded.redis.url == "redis://b:2/3"
    assert loaded.database.url == "sqlite:///y"


def test_orders_statuses_may_be_strings() -> None:
    loaded = parse('[orders]\ntable = "order"\ncancel = { from = ["0"], to = "3" }\n')
    assert loaded.orders.table == "order"
    assert loaded.orders.cancel == config.StatusChange(("0",), "3")
    assert loaded.orders.complete == config.StatusChange((2,), 4)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[redsi]\n", "shop.toml: redsi: unknown setting"),
        ('[redis]\nurl = "http://x"\n', r"shop.toml: \[redis\] url: must start with redis://"),
        ("[redis]\nurl = 5\n", r"\[redis\] url: must be a string"),
        ('[database]\npool = "big"\n', r"\[database\] pool: must be one of 'none', 'queue'"),
        ('[database]\ntls = "maybe"\n', r"\[database\] tls: must be one of"),
        ("[orders]\ncancel = { from = [], to = 3 }\n", r"\[orders\] cancel: `from` must be"),
        ("[orders]\ncancel = { from = [true], to = 3 }\n", r"\[orders\] cancel: `from` must be"),
        ("[orders]\ncancel = { from = [0], to = false }\n", r"\[orders\] cancel to: must be"),
        ("[redis]\nmax_value_bytes = 0\n", r"\[redis\] max_value_bytes: must be a number"),
        (
            '[redis]\nprefix = "order:"\n',
            r"\[redis\] prefix: 'order:' is where expiryd keeps its own keys, and route "
            r"'order:cancel:\{order_sn\}' matches",
        ),
        (
            '[[routes]]\npattern = "expiryd:{x}"\nhandler = "sql"\nsql = "SELECT 1"\n',
            r"\[redis\] prefix: 'expiryd:' is where",
        ),
        *[
            (
                f'[[routes]]\npattern = "a:{{{name}}}"\nhandler = "sql"\n',
                rf"\{{{name}\}} is reserved for the log line",
            )
            for name in ("self", "method_name", "retry_in_s", "event", "key", "exception")
        ],
        ("[orders]\ncancel = { form = [0], to = 3 }\n", r"\[orders\] cancel form: unknown"),
        ('[orders]\ntable = ""\n', r"\[orders\] table: must be a table or column name"),
        ("routes = []\n", r"\[\[routes\]\]: must be one or more"),
        ('[[routes]]\nhandler = "sql"\n', r"\[\[routes\]\] #1 pattern: is required"),
        ('[[routes]]\npattern = "a:{b"\nhandler = "sql"\n', r"#1 pattern: 'a:\{b': unbalanced"),
        (
            '[[routes]]\npattern = "a:{x}"\nhandler = "sql"\n'
            '[[routes]]\npattern = "a:{x}"\nhandler = "sql"\n',
            r"#2: route 'a:\{x\}' is already defined by #1",
        ),
    ],
)
def test_config_errors_name_file_setting_and_problem(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse(text)


@pytest.mark.parametrize(
    "url", ["redis://u:hunter2@h:notaport/0", "redis://:hunter2/x@h/0", "redis://:hun#ter2@h/0"]
)
def test_url_errors_never_show_the_password(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(f'[redis]\nurl = "{url}"\n')
    assert "hunter" not in str(caught.value) and "ter2" not in str(caught.value)


@pytest.mark.parametrize(
    ("section", "url"),
    [
        ("database", "mysql+pymysql://app:Tr0ub4dor@horse@127.0.0.1/shop"),
        ("database", "mysql+pymysql://app:Tr0ub@dor:horse#9@127.0.0.1:3306/shop"),
        ("redis", "redis://:ab@cd#efgh@127.0.0.1:6379/15"),
    ],
)
def test_a_password_that_ends_early_is_refused_without_showing_it(section: str, url: str) -> None:
    with pytest.raises(ConfigError, match="ends it early") as caught:
        parse(f'[{section}]\nurl = "{url}"\n')
    assert "horse" not in str(caught.value) and "cd#efgh" not in str(caught.value)
    assert "Tr0ub" not in str(caught.value)


def test_settings_reprs_never_show_the_password() -> None:
    loaded = parse(
        '[redis]\nurl = "redis://:pw-redis-1@h/0"\n'
        '[database]\nurl = "mysql+pymysql://u:pw-db-1@h/shop"\n'
    )
    assert "pw-redis-1" not in repr(loaded) and "pw-db-1" not in repr(loaded)


def test_systemd_credentials_give_the_urls_and_the_environment_wins(tmp_path: Path) -> None:
    (tmp_path / "redis_url").write_text("redis://:from-credential@h:1/3\n")
    (tmp_path / "database_url").write_text("sqlite:///from-credential.sqlite3")
    loaded = parse(
        '[redis]\nurl = "redis://file:1/2"\n',
        {"CREDENTIALS_DIRECTORY": str(tmp_path), "EXPIRYD_DATABASE_URL": "sqlite:///env"},
    )
    assert loaded.redis.url == "redis://:from-credential@h:1/3"
    assert loaded.database.url == "sqlite:///env"
    assert parse("", {"CREDENTIALS_DIRECTORY": str(tmp_path / "none")}).redis.url.endswith("/15")


def test_an_empty_credential_file_leaves_the_url_to_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "redis_url").write_text("\n")
    loaded = parse('[redis]\nurl = "redis://file:1/2"\n', {"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert loaded.redis.url == "redis://file:1/2"


def test_a_sentinel_url_names_sentinels_service_db_and_both_sets_of_credentials() -> None:
    url = (
        "rediss+sentinel://app:n0de-pw@10.0.0.1:26379,[::1]:26380,sentinel-3/mymaster/3"
        "?sentinel_username=watch&sentinel_password=s3nt-pw&ssl_ca_certs=/etc/ca.pem"
    )
    group = RedisTarget.from_url(parse(f'[redis]\nurl = "{url}"\n').redis.url).group
    assert group is not None
    assert group.sentinels == (("10.0.0.1", 26379), ("::1", 26380), ("sentinel-3", 26379))
    assert (group.service, group.db) == ("mymaster", 3)
    assert group.node_options["username"] == "app"
    assert group.node_options["password"] == "n0de-pw"
    assert group.node_options["ssl"] is True
    assert group.sentinel_options["username"] == "watch"
    assert group.sentinel_options["password"] == "s3nt-pw"
    assert group.sentinel_options["ssl_ca_certs"] == "/etc/ca.pem"
    assert "n0de-pw" not in redact_url(url) and "s3nt-pw" not in redact_url(url)
    assert "n0de-pw" not in repr(group) and "s3nt-pw" not in repr(group)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis+sentinel://:pw-secret@127.0.0.1:26379", r"the path must be /SERVICE or /"),
        ("redis+sentinel://:pw-secret@127.0.0.1:26379/m/x", r"the DB must be a number, not 'x'"),
        ("redis+sentinel://:pw-secret@/m/1", r"name at least one sentinel"),
        ("redis+sentinel://u:pw-secret@h:port/m/1", r"'h:port' is not a host:port"),
        ("redis+cluster://:pw-secret@h:1/3", r"a cluster has only DB 0"),
        ("redis+cluster://:pw-secret@h:1?bogus=pw-secret", r"not one redis-py takes .*'bogus'"),
    ],
)
def test_a_bad_sentinel_url_is_refused_in_one_line_without_its_password(
    url: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        parse(f'[redis]\nurl = "{url}"\n')
    assert "pw-secret" not in str(caught.value)
