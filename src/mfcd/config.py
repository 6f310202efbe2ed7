"""The daemon's configuration: TOML file /etc/mfc_daemon.conf, documented defaults; strict."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, fields, replace
from typing import Any

from mfcd.errors import ConfigError
from mfcd.protocol import MAX_REQUEST_BYTES

DEFAULT_PATH = "/etc/mfc_daemon.conf"
LOG_LEVELS = ("debug", "info", "warning", "error")
DEFAULT_SOCKET_GROUP = "mfc"  # the package's group; optional unless named in the configuration


@dataclass(frozen=True, slots=True)
class Config:
    """Every setting and its default (documented in mfc_daemon.conf(5) and docs/configuration)."""

    socket_path: str = "/run/mfcd/mfcd.sock"
    # Group allowed to use the socket; "" keeps the daemon's own group. None (not set): group
    # mfc if it exists, else the daemon's own group with a socket only its user can use.
    socket_group: str | None = None
    socket_mode: int = 0o660
    state_file: str = "/var/lib/mfcd/state.journal"
    log_level: str = "info"
    ipv4: bool = True
    ipv6: bool = True
    client_timeout: float = 30.0  # seconds a client may take to send a complete request
    # Longest request line: a batch of 1,000,000 routes as text fits (see protocol.py).
    max_request_bytes: int = MAX_REQUEST_BYTES
    # Seconds a learned entry's packet counter may stand still before it is removed (0: never).
    learned_idle_timeout: float = 60.0
    max_learned: int = 100_000  # learned entries at most; new flows past it are not learned

    @property
    def families(self) -> tuple[int, ...]:
        return tuple(f for f, on in ((4, self.ipv4), (6, self.ipv6)) if on)


_TYPES: dict[str, type] = {f.name: type(f.default) for f in fields(Config)}
_TYPES["socket_group"] = str  # None only as the default: a group set must be a name (or "")
_RANGES = {
    "client_timeout": (0.001, 3600.0),
    "max_request_bytes": (1024.0, float(1 << 30)),
    "learned_idle_timeout": (0.0, 86400.0),
    "max_learned": (0.0, 10_000_000.0),
}


def _check(key: str, value: Any, where: str) -> Any:
    want = _TYPES[key]
    if key == "socket_mode":
        if not isinstance(value, str) or not value.isdigit() or set(value) - set("01234567"):
            raise ConfigError(f'{where}: socket_mode must be an octal string such as "0660"')
        mode = int(value, 8)
        if mode & ~0o777 or mode & 0o007:
            raise ConfigError(
                f"{where}: socket_mode {value} must not give others access (use 0660 or stricter)"
            )
        return mode
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, want) or (want is int and isinstance(value, bool)):
        raise ConfigError(f"{where}: {key} must be a {want.__name__}, not {value!r}")
    if key == "log_level" and value not in LOG_LEVELS:
        raise ConfigError(f"{where}: log_level must be one of {', '.join(LOG_LEVELS)}")
    if key in _RANGES:
        low, high = _RANGES[key]
        if not isinstance(value, (int, float)) or not low <= value <= high:
            raise ConfigError(f"{where}: {key} must be between {low:g} and {high:g}")
    if key in ("socket_path", "state_file") and not value:
        raise ConfigError(f"{where}: {key} must not be empty")
    return value


def parse(text: str, path: str = DEFAULT_PATH) -> Config:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key not in _TYPES:
            raise ConfigError(f"{path}: unknown setting {key!r}")
        values[key] = _check(key, value, f"{path}: {key}")
    config = replace(Config(), **values)
    if not (config.ipv4 or config.ipv6):
        raise ConfigError(f"{path}: ipv4 and ipv6 are both false; enable at least one family")
    return config


def load(path: str | None) -> Config:
    """Read the config file; the default file may be missing (defaults), a named one may not."""
    name = path or DEFAULT_PATH
    try:
        with open(name, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        if path is None:
            return Config()
        raise ConfigError(f"{name}: no such file") from None
    except OSError as e:
        raise ConfigError(f"{name}: cannot read: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{name}: cannot read: {e}") from None
    return parse(text, name)


def override(config: Config, **values: Any) -> Config:
    """Apply command-line flags (None means not given)."""
    given = {
        key: _check(key, value, f"--{key.replace('_', '-')}")
        for key, value in values.items()
        if value is not None
    }
    return replace(config, **given)
