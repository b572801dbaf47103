"""Run a command under the two restrictions of the unit that can break a program rather
than only hide things from it, as systemd would apply them:

- SystemCallFilter=@system-service and ~@privileged @resources, with
  SystemCallErrorNumber=EPERM: a seccomp allow-list built with libseccomp, from the groups
  as this machine's systemd-analyze lists them;
- MemoryDenyWriteExecute=yes: the kernel's prctl(PR_SET_MDWE), which refuses memory that
  is both writable and executable, for the process and what it executes.

Usage: python -m tests.support.confine COMMAND [ARG...]
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import functools
import os
import subprocess
import sys

ALLOWED = ("@system-service",)
DENIED = ("@privileged", "@resources")

PR_SET_MDWE = 65
PR_MDWE_REFUSE_EXEC_GAIN = 1
SCMP_ACT_ALLOW = 0x7FFF0000


def scmp_act_errno(number: int) -> int:
    return 0x00050000 | (number & 0xFFFF)


@functools.cache
def syscall_groups() -> dict[str, list[str]]:
    """Every group systemd knows, with its members (syscalls and other groups)."""
    listing = subprocess.run(
        ["systemd-analyze", "syscall-filter", "--no-pager"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    groups: dict[str, list[str]] = {}
    current: list[str] = []
    for line in listing.splitlines():
        if line.startswith("@"):
            current = groups.setdefault(line.strip(), [])
        elif line.startswith("    ") and not line.strip().startswith("#"):
            current.append(line.strip())
    return groups


def expand(names: tuple[str, ...]) -> set[str]:
    found: set[str] = set()
    for name in names:
        if name.startswith("@"):
            found |= expand(tuple(syscall_groups()[name]))
        else:
            found.add(name)
    return found


def allowed_syscalls() -> set[str]:
    return expand(ALLOWED) - expand(DENIED)


def load_filter(allowed: set[str]) -> None:
    lib = ctypes.CDLL(ctypes.util.find_library("seccomp") or "libseccomp.so.2", use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    context = lib.seccomp_init(scmp_act_errno(errno.EPERM))
    if not context:
        raise OSError("seccomp_init failed")
    for name in sorted(allowed):
        number = lib.seccomp_syscall_resolve_name(name.encode())
        if number >= 0:  # names of other architectures resolve to nothing here
            lib.seccomp_rule_add(context, SCMP_ACT_ALLOW, number, 0)
    if lib.seccomp_load(context) != 0:
        raise OSError("seccomp_load failed")


def deny_write_execute() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_MDWE) refused")


def main() -> None:
    command = sys.argv[1:]
    allowed = allowed_syscalls()  # before the filter: systemd-analyze needs more than that
    deny_write_execute()
    load_filter(allowed)
    os.execvp(command[0], command)


if __name__ == "__main__":
    main()
