"""Run a command under a seccomp filter as systemd builds one from a unit (tests only, no systemd).

Usage: confine.py SPEC.json COMMAND [ARG...]. SPEC holds what tests/netns/test_confined.py read
from packaging/mfc_daemon.service: "allow" (the system calls SystemCallFilter= leaves allowed),
"errno" (SystemCallErrorNumber=), "families" (RestrictAddressFamilies=, address family numbers)
and "deny_write_execute" (MemoryDenyWriteExecute=). The filter is loaded, the umask set, and
COMMAND executed in this process, as systemd does between its fork and the ExecStart= line.

Run by Debian's /usr/bin/python3 under `setpriv` (user, capabilities, no_new_privs): stdlib only,
libseccomp through ctypes (libseccomp2 is on every Debian system that has systemd).
"""

from __future__ import annotations

import ctypes
import json
import os
import sys

SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_CMP_EQ = 4
SCMP_CMP_MASKED_EQ = 7  # (argument & datum_a) == datum_b
PROT_WRITE, PROT_EXEC = 0x2, 0x4
SHM_EXEC = 0o100000


class ArgCmp(ctypes.Structure):
    """struct scmp_arg_cmp of <seccomp.h>: argument index, operator, two 64-bit data."""

    _fields_ = (
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    )


def scmp_act_errno(number: int) -> int:
    return 0x00050000 | (number & 0xFFFF)


def conditions(name: str, spec: dict[str, object]) -> list[list[ArgCmp]]:
    """The argument conditions under which `name` is allowed: [[]] is always.

    Where systemd adds a refusal with conditions to an allowed call, the filter here allows
    the call only under the complementary conditions, so the rest meets the default action
    (systemd's own errno for families would be EAFNOSUPPORT; the refusal is what counts)."""
    if name == "socket" and spec["families"]:
        families = spec["families"]
        assert isinstance(families, list)
        return [[ArgCmp(0, SCMP_CMP_EQ, family, 0)] for family in families]
    if not spec["deny_write_execute"]:
        return [[]]
    both = PROT_WRITE | PROT_EXEC
    if name == "mmap":  # refused: writable and executable at once
        return [[ArgCmp(2, SCMP_CMP_MASKED_EQ, both, prot)] for prot in (0, PROT_WRITE, PROT_EXEC)]
    if name in ("mprotect", "pkey_mprotect"):  # refused: made executable later
        return [[ArgCmp(2, SCMP_CMP_MASKED_EQ, PROT_EXEC, 0)]]
    if name == "shmat":
        return [[ArgCmp(2, SCMP_CMP_MASKED_EQ, SHM_EXEC, 0)]]
    return [[]]


def load(spec: dict[str, object]) -> None:
    lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = (ctypes.c_uint32,)
    lib.seccomp_syscall_resolve_name.restype = ctypes.c_int
    lib.seccomp_syscall_resolve_name.argtypes = (ctypes.c_char_p,)
    lib.seccomp_rule_add_array.restype = ctypes.c_int
    lib.seccomp_rule_add_array.argtypes = (
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.POINTER(ArgCmp),
    )
    lib.seccomp_load.argtypes = (ctypes.c_void_p,)
    errno_number = spec["errno"]
    assert isinstance(errno_number, int)
    ctx = lib.seccomp_init(scmp_act_errno(errno_number))
    if not ctx:
        raise SystemExit("confine: seccomp_init failed")
    allow = spec["allow"]
    assert isinstance(allow, list)
    for name in allow:
        number = lib.seccomp_syscall_resolve_name(name.encode())
        if number < 0:  # not a system call of this architecture (e.g. the *32 ones)
            continue
        for conds in conditions(name, spec):
            array = (ArgCmp * max(len(conds), 1))(*conds)
            result = lib.seccomp_rule_add_array(ctx, SCMP_ACT_ALLOW, number, len(conds), array)
            if result < 0:
                raise SystemExit(f"confine: rule for {name}: {os.strerror(-result)}")
    result = lib.seccomp_load(ctx)
    if result < 0:
        raise SystemExit(f"confine: seccomp_load: {os.strerror(-result)}")


def main() -> None:
    with open(sys.argv[1], encoding="utf-8") as f:
        spec = json.load(f)
    command = sys.argv[2:]
    umask = spec.get("umask")
    if isinstance(umask, int):
        os.umask(umask)
    load(spec)
    os.execv(command[0], command)


if __name__ == "__main__":
    main()
