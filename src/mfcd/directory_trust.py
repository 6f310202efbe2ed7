"""Refuse a state or socket directory that another user could write (like sshd's StrictModes).

mfcd creates, renames and chmods files in its state and socket directories as root.  If
another user could write to one of them, or to a directory above it, that user could
swap a file for a symlink (root then writes through it) or replace the control socket
with one of their own.  So at start every directory on the way is checked:

- each directory from / down to the final one, and every symlink met on the way, must
  be owned by root or by the user mfcd runs as;
- no directory may be writable by its group or by others, with one exception: a
  directory *above* the final one may be world-writable if it has the sticky bit (like
  /tmp), because then only an entry's owner can rename or remove it, and the next
  directory down is itself checked to be ours;
- the final directories (where mfcd creates files) may not be writable by group or
  others at all, sticky or not.

Symlinks are followed as the kernel would, and the directories they lead to are
checked too.  `reason()` is the pure rule over one directory's mode and owner; `check()`
walks a real path with lstat.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Collection

from mfcd.errors import ConfigError

MAX_SYMLINKS = 40  # as the kernel's path resolution (ELOOP)


def reason(path: str, mode: int, uid: int, trusted: Collection[int], final: bool) -> str | None:
    """Why the directory (or symlink) `path` with this mode and owner is unsafe, or None."""
    if uid not in trusted:
        return f"{path} is owned by uid {uid}, not by root or the user mfcd runs as"
    if stat.S_ISLNK(mode):
        return None  # a symlink's own mode means nothing; its owner is what can re-point it
    if not stat.S_ISDIR(mode):
        return f"{path} is not a directory"
    writable = mode & (stat.S_IWGRP | stat.S_IWOTH)
    if not writable or (not final and mode & stat.S_ISVTX):
        return None
    who = "others" if mode & stat.S_IWOTH else "its group"
    return f"{path} is writable by {who} (mode {stat.S_IMODE(mode):04o})"


def walk(
    directory: str,
    trusted: Collection[int],
    lstat: Callable[[str], os.stat_result] = os.lstat,
    readlink: Callable[[str], str] = os.readlink,
    final: bool = True,
) -> str | None:
    """Check every directory and symlink from / to `directory` (absolute); the first problem.
    Not `final`: `directory` is one above those mfcd creates files in (a sticky /tmp passes)."""
    current = "/"
    pending = _parts(directory)
    links = 0
    found = _judge(current, trusted, False, lstat)
    while pending and found is None:
        name = pending.pop(0)
        if name == "..":
            current = os.path.dirname(current)  # `current` is a real directory: no symlink
            continue
        path = os.path.join(current, name)
        try:
            st = lstat(path)
        except OSError as e:
            return f"cannot check {path}: {e.strerror}"
        found = reason(path, st.st_mode, st.st_uid, trusted, final=False)
        if not stat.S_ISLNK(st.st_mode):
            current = path
            continue
        links += 1
        if links > MAX_SYMLINKS:
            return f"{directory}: too many levels of symbolic links"
        target = readlink(path)
        pending = _parts(target) + pending
        if os.path.isabs(target):
            current = "/"
    return found or _judge(current, trusted, final, lstat)


def _parts(path: str) -> list[str]:
    return [part for part in path.split("/") if part not in ("", ".")]


def _judge(
    path: str, trusted: Collection[int], final: bool, lstat: Callable[[str], os.stat_result]
) -> str | None:
    try:
        st = lstat(path)
    except OSError as e:
        return f"cannot check {path}: {e.strerror}"
    return reason(path, st.st_mode, st.st_uid, trusted, final)


def prepare(directory: str, what: str) -> None:
    """Create `directory` if missing, then refuse it if anyone but root or us could write it."""
    try:
        os.makedirs(directory, mode=0o755, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ConfigError(
            f"the {what} {directory}, or one above it, is a file: choose another directory"
        ) from None
    except OSError as e:
        raise ConfigError(
            f"cannot create the {what} {directory}: {e.strerror}; create it or choose another"
        ) from None
    found = walk(directory, frozenset({0, os.geteuid()}))
    if found is not None:
        raise ConfigError(_refusal(directory, what, found))


def check(directory: str, what: str, trusted: Collection[int]) -> str | None:
    """What `prepare` would refuse about `directory` (absolute), without creating anything:
    its message, or None. A directory still missing is judged by the nearest one above it
    that exists, as one the start would create it in (mode 0755, its own)."""
    existing = directory
    while not os.path.lexists(existing) and existing != "/":
        existing = os.path.dirname(existing)
    found = walk(existing, trusted, final=existing == directory)
    return None if found is None else _refusal(directory, what, found)


def _refusal(directory: str, what: str, found: str) -> str:
    return (
        f"refusing the {what} {directory}: {found}; only root and the user mfcd runs as"
        " may write to it and to the directories above it (chmod go-w, chown)"
    )
