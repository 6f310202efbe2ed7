"""The daemon's configuration: TOML file /etc/mfc_daemon.conf, documented defaults; strict."""

from __future__ import annotations

import ipaddress
import os
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import Any, NamedTuple

from mfcd import validate
from mfcd.declarations import Declarations, Part, Problems, check, merge, parse_file, place_of
from mfcd.errors import ConfigError
from mfcd.protocol import MAX_REQUEST_BYTES, family_text

DEFAULT_PATH = "/etc/mfc_daemon.conf"
LOG_LEVELS = ("debug", "info", "warning", "error")
DROP_IN_SUFFIX = ".d"  # /etc/mfc_daemon.conf -> /etc/mfc_daemon.d/*.conf
DECLARATION_KINDS = ("route", "join", "interface")  # see mfcd.declarations
DEFAULT_SOCKET_GROUP = "mfc"  # the package's group; optional unless named in the configuration
# What a start does with a config file that has an error (see load_at_start); a reload
# always refuses the whole set of files, keeping what runs.
ON_CONFIG_ERROR = ("skip_file", "refuse")


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
    # Seconds between Multicast Router Advertisements (RFC 4286) on `vif set IF --mrdisc`.
    mrdisc_interval: int = 20
    # "ADDRESS:PORT" of the Prometheus /metrics endpoint ("[IPv6]:PORT"); "" leaves it off.
    metrics_listen: str = ""
    # Installed routes up to which /metrics has per-route series (3 each); 0: never.
    metrics_route_series_max: int = 10_000
    # Seconds a learned entry's packet counter may stand still before it is removed (0: never).
    learned_idle_timeout: float = 60.0
    max_learned: int = 100_000  # learned entries at most; new flows past it are not learned
    # Seconds between two drift checks of every installed route (0: none but those that
    # interface events and sync start).
    drift_check_interval: float = 300.0
    on_config_error: str = "skip_file"  # one of ON_CONFIG_ERROR

    @property
    def families(self) -> tuple[int, ...]:
        return tuple(f for f, on in ((4, self.ipv4), (6, self.ipv6)) if on)


_TYPES: dict[str, type] = {f.name: type(f.default) for f in fields(Config)}
_TYPES["socket_group"] = str  # None only as the default: a group set must be a name (or "")
_RANGES = {
    "client_timeout": (0.001, 3600.0),
    "max_request_bytes": (1024.0, float(1 << 30)),
    "mrdisc_interval": (4.0, 180.0),  # RFC 4286's range of the advertisement interval
    "metrics_route_series_max": (0.0, 10_000_000.0),
    "learned_idle_timeout": (0.0, 86400.0),
    "max_learned": (0.0, 10_000_000.0),
    "drift_check_interval": (0.0, 86400.0),
}
# Settings whose 0 turns something off and whose other values start higher: drift checks of
# every route more often than every 10 s would run back to back on a large table (a probe
# of 1,000,000 entries takes 8 s or more), and forwarding lost for 10 s is rare enough.
_OFF_OR_FROM = {"drift_check_interval": 10.0}


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
    if key == "on_config_error" and value not in ON_CONFIG_ERROR:
        choices = " or ".join(f'"{c}"' for c in ON_CONFIG_ERROR)
        raise ConfigError(f"{where}: on_config_error must be {choices}")
    if key in _RANGES:
        low, high = _RANGES[key]
        least = _OFF_OR_FROM.get(key, low)
        if not isinstance(value, (int, float)) or not (low <= value <= high) or 0 < value < least:
            within = f"0 (off) or between {least:g}" if least != low else f"between {low:g}"
            raise ConfigError(f"{where}: {key} must be {within} and {high:g}")
    if key in ("socket_path", "state_file") and not value:
        raise ConfigError(f"{where}: {key} must not be empty")
    if key == "metrics_listen" and value:
        listen_address(value, where)
    return value


def listen_address(text: str, where: str = "metrics_listen") -> tuple[str, int]:
    """(address, port) of "198.18.0.1:PORT" or "[2001:db8::1]:PORT": IP literals only (a
    name would resolve at each start, maybe to another address), ports 1 to 65535."""
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host, version = host[1:-1], 6
    else:
        version = 4
    try:
        address = ipaddress.ip_address(host)
        number = int(port, 10) if port.isdigit() else 0
    except ValueError:
        address, number = None, 0
    if not sep or address is None or address.version != version or not 1 <= number <= 65535:
        raise ConfigError(
            f'{where}: {text!r} is not an address and port such as "127.0.0.1:10040" or'
            ' "[::1]:10040"'
        )
    return str(address), number


def parse(text: str, path: str = DEFAULT_PATH) -> Config:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    return from_table(data, path)


def from_table(data: dict[str, Any], path: str) -> Config:
    """The settings of a parsed file (its declarations, declarations.KINDS, are left to
    mfcd.declarations)."""
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key in DECLARATION_KINDS:
            continue
        if key not in _TYPES:
            raise ConfigError(f"{path}: unknown setting {key!r}")
        values[key] = _check(key, value, f"{path}: {key}")
    config = replace(Config(), **values)
    if not (config.ipv4 or config.ipv6):
        raise ConfigError(f"{path}: ipv4 and ipv6 are both false; enable at least one family")
    return config


def drop_in_dir(path: str) -> str:
    """The drop-in directory of a config file: its name without .conf, plus .d."""
    base = path[: -len(".conf")] if path.endswith(".conf") else path
    return base + DROP_IN_SUFFIX


def drop_ins(path: str) -> list[str]:
    """The drop-in files of a config file, sorted by name (none if the directory is missing)."""
    directory = drop_in_dir(path)
    try:
        # Not hidden names, as the shell's *.conf: an editor's lock link (Emacs's .#x.conf,
        # dangling while x.conf is edited) or a hidden copy is no drop-in.
        names = sorted(
            n for n in os.listdir(directory) if n.endswith(".conf") and not n.startswith(".")
        )
    except FileNotFoundError:
        return []
    except OSError as e:
        raise ConfigError(f"{directory}: cannot read the drop-in directory: {e.strerror}") from None
    return [os.path.join(directory, n) for n in names]


def read_text(name: str) -> str:
    try:
        with open(name, encoding="utf-8") as f:
            return f.read()
    except OSError as e:
        raise ConfigError(f"{name}: cannot read: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{name}: cannot read: {e}") from None


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


class ReadCache:
    """What the last read found, so that a reload parses only the files that changed (the
    daemon keeps one): each file's Part by path, the declarations last merged, and the
    rt_tables names they were read with (a table name resolved once is kept in them)."""

    def __init__(self) -> None:
        self.parts: dict[str, Part] = {}
        self.merged: tuple[tuple[int, ...], Declarations] | None = None
        self.names: dict[str, int] = {}

    def check_names(self) -> None:
        """Forget every file read if the rt_tables names changed since: a file whose text
        is the same may name a table whose number is not (`table = "studio"`)."""
        names = validate.table_names()
        if names != self.names:
            self.parts, self.merged, self.names = {}, None, dict(names)


class Read(NamedTuple):
    """What load_all read: the settings, the declarations, and every file read, in order
    (the main file, if there is one, then the drop-ins), those that declare nothing too;
    Declarations.files names only the files of declarations."""

    settings: Config
    declared: Declarations
    files: list[str]


def load_all(path: str | None, cache: ReadCache | None = None) -> Read:
    """The settings and the declarations of the config file and its drop-ins: what start-up,
    a reload and `mfcd --check-config` read. Raises declarations.Problems listing every
    problem of every file; nothing is half-read. With a `cache`, a file whose text has not
    changed since is not parsed again."""
    read = _read_all(path, cache or ReadCache(), ())
    if read.problems:
        raise Problems(read.problems)
    return Read(read.settings, read.declared, read.files)


class Loaded(NamedTuple):
    """What a start read (load_at_start): the settings, the declarations of the files left
    in, every problem found and the files (or drop-in directory) left out for them."""

    settings: Config
    declared: Declarations
    problems: list[str]
    left_out: list[str]


def left_out_named(left_out: Sequence[str], path: str | None) -> list[str]:
    """What a start left out (Loaded.left_out) as the log and diagnose name it: the drop-in
    directory, when it could not be read, as the directory it is, not as a file."""
    directory = drop_in_dir(path or DEFAULT_PATH)
    return [f"the drop-in directory {f}" if f == directory else f for f in left_out]


def left_out_counted(left_out: Sequence[str], path: str | None) -> str:
    """`2 config files`, `the drop-in directory`, `1 config file and the drop-in directory`:
    what a start left out, for the status line (the files of a directory it could not read
    are not known, so it is not counted as files)."""
    directory = drop_in_dir(path or DEFAULT_PATH)
    files = sum(f != directory for f in left_out)
    said = [f"{files} config file{'s' * (files != 1)}"] if files else []
    if directory in left_out:
        said.append("the drop-in directory")
    return " and ".join(said)


def load_at_start(path: str | None, cache: ReadCache) -> Loaded:
    """The files as a start reads them. With on_config_error = "skip_file" (the default) a
    file with a problem is left out whole, its declarations with it, and the others are
    read as if it were not there; a file whose problem only the whole set shows (a route
    declared twice, too many VIFs) is the later one, where the problem is told, so the
    files are read again until none is left with a problem. Raises Problems (every
    problem) when the main file's settings cannot be read: no socket_path or state_file
    can be guessed; with "refuse", or when a problem names no file it could leave out."""
    read = _read_all(path, cache, ())
    problems = list(read.problems)
    left_out: list[str] = []
    while read.problems:
        if not read.settings_ok or read.settings.on_config_error == "refuse":
            raise Problems(problems)
        files = [_file_of(problem) for problem in read.problems]
        more = [f for f in dict.fromkeys(files) if f is not None and f not in left_out]
        if None in files or not more:  # (nothing to leave out: no way forward)
            raise Problems(problems)
        left_out = sorted([*left_out, *more], key=lambda f: (f != (path or DEFAULT_PATH), f))
        read = _read_all(path, cache, left_out)
        problems += [p for p in read.problems if p not in problems]
    return Loaded(read.settings, read.declared, problems, left_out)


def _file_of(problem: str) -> str | None:
    """The file a problem ("FILE:LINE: reason" or "FILE: reason") is told in."""
    file, _ = place_of(problem)
    if file is None and ": " in problem:
        file = problem.split(": ", 1)[0]
    return file


class _Read(NamedTuple):
    settings: Config
    settings_ok: bool  # the main file's settings were read without a problem
    declared: Declarations
    problems: list[str]
    # Those read and taken, in order (those that declare nothing too): every file read
    # when none is left out (a main file left out is read for its settings, not listed).
    files: list[str]


def _read_all(path: str | None, cache: ReadCache, left_out: Sequence[str]) -> _Read:
    """Every file read and checked, but the declarations of those `left_out` (of the main
    file, only its settings are read then; a drop-in directory left out is not read)."""
    name = path or DEFAULT_PATH
    cache.check_names()
    problems: list[str] = []
    cfg = Config()
    settings_ok = True
    files: list[str] = []
    if path is not None or os.path.exists(name):
        files.append(name)
    if drop_in_dir(name) not in left_out:
        try:
            files += drop_ins(name)
        except ConfigError as e:
            problems.append(str(e))
    parts: dict[str, Part] = {}
    for index, file in enumerate(files):
        main = index == 0 and file == name
        if file in left_out and not main:
            continue
        try:
            text = read_text(file)
        except ConfigError as e:
            problems.append(str(e) if os.path.exists(file) else f"{file}: no such file")
            settings_ok = settings_ok and not main
            continue
        part = cache.parts.get(file)
        if part is None or part.text != text:
            part = parse_file(text, file, part)
        if file not in left_out:
            parts[file] = part
            problems += part.problems
        if part.settings is None:
            settings_ok = settings_ok and not main  # not TOML: no setting can be trusted
        elif main:
            try:
                cfg = from_table(part.settings, name)
            except ConfigError as e:
                problems.append(_with_line(str(e), name, text))
                settings_ok = False
        else:
            for key in part.settings:
                problems.append(
                    f"{file}:{_line_of_key(text, key)}: {key!r}: a drop-in file declares only"
                    f" [[route]], [[join]] and [[interface]]; settings belong in {name}"
                )
    cache.parts = parts
    ids = tuple(id(part.found) for part in parts.values())
    if cache.merged is not None and cache.merged[0] == ids and not problems:
        found = cache.merged[1]  # the same files as the last good read: checked already
    else:
        found = merge([part.found for part in parts.values()], problems)
        check(found, problems)
        if not problems:
            cache.merged = (ids, found)
    # (after the cache: the settings may turn a family off while the drop-ins stay the same)
    problems += off_families(found, cfg.families, name)
    return _Read(cfg, settings_ok, found, problems, list(parts))


def off_families(found: Declarations, families: tuple[int, ...], name: str) -> list[str]:
    """A problem for the first route and the first template of each family the settings turn
    off, with how many more there are: mfcd would refuse them all at start (joins need no
    multicast routing and are made whatever the settings say)."""
    problems = []
    for family in {4, 6} - set(families):
        off = f"{family_text(family)} is off (ipv{family} = false in {name})"
        routes = [key for key in found.routes if key[0] == family]
        templates = [t for t in found.templates if t.family == family]
        for what, places in (
            ("route", [found.where(key) for key in routes[:1]]),
            ("template", [t.where for t in templates[:1]]),
        ):
            if places:
                count = len(routes) if what == "route" else len(templates)
                more = f" (and {count - 1} more)" if count > 1 else ""
                problems.append(
                    f"{places[0]}: {what}: {off}: this {family_text(family)} {what} cannot be"
                    f" installed{more}; turn the family on or remove them"
                )
    return problems


def _line_of_key(text: str, key: str) -> int:
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.lstrip()
        if stripped.startswith(key) and stripped[len(key) :].lstrip().startswith("="):
            return number
        name = stripped.lstrip("[").lstrip()  # a table: [key] or [[key]]
        if stripped[:1] == "[" and name.startswith(key) and name[len(key) :].lstrip()[:1] == "]":
            return number
    return 1


def _with_line(message: str, path: str, text: str) -> str:
    """A setting's error as FILE:LINE: the line that sets the key it names."""
    prefix = f"{path}: "
    if not message.startswith(prefix):
        return message
    rest = message[len(prefix) :]
    for key in _TYPES:
        if rest.startswith(f"{key}: "):  # "log_level: log_level must be ..."
            rest = rest[len(key) + 2 :]
        if rest.startswith(key) or rest.startswith(f"unknown setting {key!r}"):
            return f"{path}:{_line_of_key(text, key)}: {rest}"
    m = rest.split("'")
    if rest.startswith("unknown setting") and len(m) > 1:
        return f"{path}:{_line_of_key(text, m[1])}: {rest}"
    return message
