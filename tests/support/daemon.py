"""`expiryd` as a user runs it: a subprocess whose JSON log lines the test reads."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import redis

Line = dict[str, Any]


def setex(client: redis.Redis, key: str | bytes, seconds: int, value: str = "x") -> None:
    """What a producer in any language sends: the SETEX command itself."""
    client.execute_command("SETEX", key, seconds, value)


def psetex_many(client: redis.Redis, keys: list[str], ttl_ms: int | list[int]) -> None:
    """Many producers at once: PSETEX each key, pipelined."""
    ttls = ttl_ms if isinstance(ttl_ms, list) else [ttl_ms] * len(keys)
    with client.pipeline(transaction=False) as pipe:
        for key, ttl in zip(keys, ttls, strict=True):
            pipe.execute_command("PSETEX", key, ttl, "x")
        pipe.execute()


def expiryd_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "expiryd", *args]


def run_cli(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        expiryd_command(*args),
        cwd=cwd,
        env=_environ(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _environ(extra: dict[str, str] | None) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("EXPIRYD_")}
    environ.update(extra or {})
    return environ


class DaemonProcess:
    """`expiryd run --log-format json` (or `work`), with stdout parsed line by line."""

    def __init__(
        self,
        config: Path | None,
        extra_args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        command: str = "run",
        wrapper: Sequence[str] = (),
    ) -> None:
        """`wrapper`: a command that runs expiryd's, such as tests.support.confine."""
        self.config = config
        config_args = ["--config", str(config)] if config else []
        self.lines: list[Line] = []
        self.raw: list[str] = []
        self.errors: list[str] = []
        self.process = subprocess.Popen(
            [
                *wrapper,
                *expiryd_command(command, *config_args, "--log-format", "json", *extra_args),
            ],
            cwd=cwd or (config.parent if config else None),
            env=_environ(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._error_reader = threading.Thread(target=self._read_errors, daemon=True)
        self._error_reader.start()

    @property
    def stderr(self) -> str:
        return "".join(self.errors)

    def _read(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            self.raw.append(raw)
            try:
                self.lines.append(json.loads(raw))
            except ValueError:
                self.lines.append({"event": "(not json)", "raw": raw})

    def _read_errors(self) -> None:
        assert self.process.stderr is not None
        for raw in self.process.stderr:
            self.errors.append(raw)

    def events(self, name: str) -> list[Line]:
        return [line for line in list(self.lines) if line["event"] == name]

    def handled(self) -> list[Line]:
        return self.events("expiry.handled")

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 20, what: str = "") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            if self.process.poll() is not None:
                self._reader.join(2)
                raise AssertionError(f"expiryd exited {self.process.returncode}: {self.output()}")
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what or predicate}: {self.output()}")

    def wait_for_event(self, name: str, count: int = 1, timeout: float = 20) -> list[Line]:
        self.wait_for(lambda: len(self.events(name)) >= count, timeout, f"{count} x {name}")
        return self.events(name)

    def wait_subscribed(self, count: int = 1) -> None:
        self.wait_for_event("listener.subscribed", count)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        """Signal the daemon and wait for it; one that outlives `timeout` is killed and
        the test fails, with its output."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
            raise AssertionError(
                f"expiryd did not stop within {timeout}s: {self.output()}"
            ) from None
        self._reader.join(5)
        self._error_reader.join(5)
        for pipe in (self.process.stdout, self.process.stderr):
            if pipe is not None:
                pipe.close()
        return code

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def output(self) -> str:
        """The end of what the daemon wrote, stdout and stderr, for failure messages."""
        out = "".join(self.raw[-30:])[-4000:]
        return f"{out}\n--- stderr:\n{self.stderr[-3000:]}"
