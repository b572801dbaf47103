"""A throwaway certificate authority and a server certificate for 127.0.0.1, made with
the openssl command, for TLS tests on loopback."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.support.servers import require


@dataclass(frozen=True)
class Certs:
    ca: Path
    cert: Path
    key: Path


def make_certs(directory: Path, names: str = "IP:127.0.0.1,DNS:localhost") -> Certs:
    """A CA, and a certificate it signed for `names` (a subjectAltName value)."""
    directory.mkdir(parents=True, exist_ok=True)
    openssl = require("openssl")
    ca, ca_key = directory / "ca.pem", directory / "ca.key"
    cert, key = directory / "server.pem", directory / "server.key"
    request, extensions = directory / "server.csr", directory / "server.ext"
    extensions.write_text(f"subjectAltName={names}\n")
    new_key = ("-newkey", "rsa:2048", "-nodes", "-days", "2")
    signed_by = ("-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-days", "2")
    for command in (
        (
            "req",
            "-x509",
            *new_key,
            "-keyout",
            ca_key,
            "-out",
            ca,
            "-subj",
            f"/CN=test CA {directory.name}",
        ),
        ("req", *new_key, "-keyout", key, "-out", request, "-subj", "/CN=127.0.0.1"),
        ("x509", "-req", "-in", request, *signed_by, "-out", cert, "-extfile", extensions),
    ):
        subprocess.run([openssl, *map(str, command)], check=True, capture_output=True)
    key.chmod(0o644)  # mariadbd may run as another user
    return Certs(ca, cert, key)
