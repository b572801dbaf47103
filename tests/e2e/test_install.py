"""scripts/install-systemd into a staging root, as a package build would use it."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

from tests.e2e.conftest import REPO

SCRIPT = REPO / "scripts" / "install-systemd"


def _install(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(SCRIPT), "--root", str(root), *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_install_is_idempotent_keeps_what_the_operator_wrote_and_uninstalls(
    tmp_path: Path,
) -> None:
    root = tmp_path / "root"
    _install(root)
    etc = root / "etc" / "expiryd"
    unit = root / "etc" / "systemd" / "system" / "expiryd.service"
    assert unit.read_text() == (REPO / "systemd" / "expiryd.service").read_text()
    assert "secret" not in (etc / "expiryd.toml").read_text()  # readable by the service user
    assert (_mode(etc / "expiryd.toml"), _mode(etc / "credentials")) == (0o644, 0o700)
    for name in ("redis_url", "database_url"):
        assert _mode(etc / "credentials" / name) == 0o600
    expiryd = root / "opt" / "expiryd" / "venv" / "bin" / "expiryd"
    version = subprocess.run([str(expiryd), "--version"], capture_output=True, text=True)
    assert version.stdout.startswith("expiryd ")

    (etc / "expiryd.toml").write_text("# mine\n")
    (etc / "credentials" / "redis_url").write_text("redis://:pw@127.0.0.1:6379/15")
    _install(root)
    assert (etc / "expiryd.toml").read_text() == "# mine\n"
    assert (etc / "credentials" / "redis_url").read_text().startswith("redis://:pw@")

    _install(root, "--uninstall")
    assert not unit.exists() and not (root / "opt" / "expiryd").exists()
    assert (etc / "expiryd.toml").exists()
    _install(root, "--uninstall", "--purge")
    assert not etc.exists()


def test_install_refuses_an_unknown_argument_in_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(SCRIPT), "--root", str(tmp_path), "--bogus"], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "install-systemd: unknown argument: --bogus (see --help)"
    ]
    assert not any(tmp_path.iterdir())
