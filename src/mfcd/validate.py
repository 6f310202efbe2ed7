"""Validation of request arguments into model values; every check runs before any kernel call."""

from __future__ import annotations

import re
import socket
from sys import intern
from typing import Any

from mfcd import address_sharing, batchfile, rt_tables, wildcards
from mfcd import templates as tpl
from mfcd.errors import BadRequest, InvalidArgument
from mfcd.model import DEFAULT_TABLE, MAXVIFS, AddRoute, AddTemplate, Ports, Route, RouteKey
from mfcd.templates import TemplateKey
from mfcd.wildcards import WILDCARDS, is_wildcard, pattern

IFNAMSIZ = 16  # linux/if.h; names hold at most IFNAMSIZ - 1 characters
MAX_OIFS = MAXVIFS - 1  # every interface of a route, its iif too, needs a VIF of its own
# Linux accepts almost any byte in a name; we accept the characters people and tools use, so a
# name can never smuggle whitespace, quotes or control characters into logs and tables.
# Not starting with "-": such a name would read as an option to mfcctl, ip and others.
_IFNAME = re.compile(r"[A-Za-z0-9_.+@][A-Za-z0-9_.+@-]{0,14}\Z")

_AF = {4: socket.AF_INET, 6: socket.AF_INET6}
AF_INET = socket.AF_INET
inet_pton = socket.inet_pton
_new = tuple.__new__
_LOCAL4 = b"\xe0\x00\x00"  # 224.0.0.0/24
# Routes that share a source or a group share its string (memory only).
share_source, share_group = address_sharing.source, address_sharing.group


def require_fields(
    args: Any, required: tuple[str, ...], optional: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Check that `args` is an object with all `required` and no unknown fields."""
    if not isinstance(args, dict):
        raise BadRequest("arguments must be a JSON object")
    if args.keys() == _FIELD_SETS.get(required):
        return args  # the common case: exactly the required fields
    for name in required:
        if name not in args:
            raise BadRequest(f"missing field {name!r}", field=name)
    allowed = set(required) | set(optional)
    for name in args:
        if name not in allowed:
            raise BadRequest(f"unknown field {name!r}", field=name)
    return args


def _address(value: Any, field: str) -> tuple[int, bytes, str]:
    """Parse an address; return (family, packed, canonical text)."""
    if not isinstance(value, str):
        raise InvalidArgument(f"{field} must be a string", field=field)
    family = 6 if ":" in value else 4
    if "/" in value:  # a full-length prefix is an address ("198.18.0.2/32"), no other is
        value, _, length = value.partition("/")
        if length != ("32" if family == 4 else "128"):
            raise InvalidArgument(
                f"{field} {value}/{length} is a prefix, and this takes one address (a"
                " template's prefix is changed by `mfc add` of the template again)",
                field=field,
            )
    try:
        packed = socket.inet_pton(_AF[family], value)
    except (OSError, ValueError):
        raise InvalidArgument(
            f"{field} {value!r} is not an IPv4 or IPv6 address", field=field
        ) from None
    if family == 4:
        # glibc's inet_pton takes only four decimals without leading zeros, which is already
        # the canonical form; IPv6 text has many spellings and needs inet_ntop.
        return family, packed, value
    return family, packed, socket.inet_ntop(_AF[family], packed)


def _check_group(family: int, packed: bytes, text: str) -> None:
    if family == 4:
        if not 224 <= packed[0] <= 239:
            raise InvalidArgument(f"group {text} is not a multicast address (224.0.0.0/4)", "group")
        if packed[:3] == b"\xe0\x00\x00":
            raise InvalidArgument(
                f"group {text} is link-local (224.0.0.0/24) and is never routed", "group"
            )
        return
    if packed[0] != 0xFF:
        raise InvalidArgument(f"group {text} is not a multicast address (ff00::/8)", "group")
    scope = packed[1] & 0x0F
    if scope <= 2:
        what = {0: "reserved", 1: "interface-local", 2: "link-local"}[scope]
        raise InvalidArgument(f"group {text} has {what} scope and is never routed", "group")


# The unspecified address is how smcroute and `ip mroute` spell "any source": such a route is
# a template (tpl.is_template), so an exact route never gets here with it.
_ANY_SOURCE = "source {} means any source: that is a template (`--source` omitted), not a route"


def _check_source(family: int, packed: bytes, text: str) -> None:
    if family == 4:
        if packed == b"\x00\x00\x00\x00":
            raise InvalidArgument(_ANY_SOURCE.format("0.0.0.0"), "source")
        if packed[0] >= 224:
            raise InvalidArgument(f"source {text} is not a unicast address", "source")
        if packed[0] == 127:
            raise InvalidArgument(
                f"source {text} is a loopback address; packets from it are never routed", "source"
            )
        return
    if packed == bytes(16):
        raise InvalidArgument(_ANY_SOURCE.format("::"), "source")
    if packed[0] == 0xFF:
        raise InvalidArgument(f"source {text} is not a unicast address", "source")
    if packed[:12] == b"\0" * 10 + b"\xff\xff" or packed == bytes(15) + b"\x01":
        raise InvalidArgument(
            f"source {text} is an IPv4-mapped or loopback address, never an IPv6 packet's"
            " source on the wire; use the IPv4 address for an IPv4 route",
            "source",
        )
    if packed[0] == 0xFE and packed[1] & 0xC0 == 0x80:
        raise InvalidArgument(
            f"source {text} is link-local; packets from it are never forwarded", "source"
        )


def route_key(args: dict[str, Any]) -> RouteKey:
    """Validate source, group and table; return the route key with canonical addresses."""
    return route_key_of(args["source"], args["group"], args.get("table"))


# The largest table each family's kernel takes: MRT_TABLE refuses ids of 10 digits and
# MRT6_TABLE ids of 9 (EINVAL; net/ipv4/ipmr.c, net/ipv6/ip6mr.c), so that the table's
# register device "pimreg<id>" / "pim6reg<id>" fits IFNAMSIZ. Checked here, a table too large
# is refused before anything is written, not reported by the kernel as a missing feature.
MAX_TABLE = {4: 999_999_999, 6: 99_999_999}
_FAMILY_WORD = {4: "IPv4", 6: "IPv6"}
# The names of /etc/iproute2/rt_tables and rt_tables.d, read at the first name and again when
# the files change (rt_tables.Names): a name added is known to the next request or reload.
_table_names: rt_tables.Names | dict[str, int] = rt_tables.Names()  # (tests may set a dict)


def table_names() -> dict[str, int]:
    """The table names as the files say now (what a name given now resolves to): a reload
    compares them with those its cached files were read with (config.ReadCache)."""
    names = _table_names
    return names.now() if isinstance(names, rt_tables.Names) else dict(names)


def table_numbers() -> dict[int, str]:
    """The name of each numbered table, as the files say now (for messages: `254 (main)`)."""
    return {number: name for name, number in table_names().items()}


def table_of(value: Any, family: int, names: dict[str, int] | None = None) -> int:
    """A route's table: None or "default" for the family's default table (IPv4 253, IPv6
    254), a number from 1 to the family's MAX_TABLE, or a name from /etc/iproute2/rt_tables
    (`names`, the files' as they are now when not given)."""
    if value is None or value == "default":
        return DEFAULT_TABLE[family]
    if value.__class__ is int:
        if 1 <= value <= MAX_TABLE[family]:
            return int(value)
        raise InvalidArgument(
            f"table {value} is out of range for {_FAMILY_WORD[family]}: give a number from 1"
            f" to {MAX_TABLE[family]} (0 is RT_TABLE_UNSPEC; the kernel refuses larger ids)"
            " or a name",
            field="table",
        )
    if isinstance(value, str):
        if value.isascii() and value.isdigit():  # ("²".isdigit() too)
            return table_of(int(value), family, names)
        number = (_table_names if names is None else names).get(value)
        if number is None or number == 0:
            raise InvalidArgument(_not_a_name(value, names is None), field="table")
        if number > MAX_TABLE[family]:
            raise InvalidArgument(
                f"table {value!r} is table {number} in rt_tables, above the kernel's limit for"
                f" {_FAMILY_WORD[family]} ({MAX_TABLE[family]}): give it a smaller number there"
                " or use another table",
                field="table",
            )
        return number
    raise InvalidArgument("table must be a number or a table name", field="table")


def _not_a_name(value: str, from_files: bool) -> str:
    """Why `value` is no table, with the lines where reading a file stopped (if any)."""
    files = _table_names if from_files and isinstance(_table_names, rt_tables.Names) else None
    stopped = ""
    if files is not None and files.problems:
        stopped = "; as by ip, no line after one that is not NUMBER NAME is read: " + ", ".join(
            files.problems
        )
    return (
        f"table {value!r} is not a table name: give a number, default, or a name from"
        f" /etc/iproute2/rt_tables or rt_tables.d/*.conf{stopped}"
    )


_numbered_tables: dict[str, int] = {}  # "100" -> 100: a batch names its table on every line


def ipv4_table(value: Any) -> int:
    """table_of(value, 4), a number given as text remembered (a batch into another table
    costs no more than one into the default table)."""
    number = _numbered_tables.get(value) if value.__class__ is str else None
    if number is None:
        number = table_of(value, 4)
        if value.__class__ is str and value.isdigit() and len(_numbered_tables) < 64:
            _numbered_tables[value] = number
    return number


def route_key_of(source: Any, group: Any, table: Any = None) -> RouteKey:
    """Validate a source, a group and a table (None: the default); return the route key
    with canonical addresses."""
    if (
        source.__class__ is str
        and group.__class__ is str
        and ":" not in source
        and ":" not in group
    ):
        # IPv4, the common case of large batches: the checks of _address and the _check_*
        # functions inline.
        try:
            src = inet_pton(AF_INET, source)
            grp = inet_pton(AF_INET, group)
        except (OSError, ValueError):
            pass  # _address below says which one is wrong
        else:
            first = src[0]
            if 0 < first < 224 and first != 127 and 224 <= grp[0] <= 239 and grp[:3] != _LOCAL4:
                table = DEFAULT_TABLE[4] if table is None else ipv4_table(table)
                return (4, share_source(source), share_group(group), table)
    family, src_packed, source = _address(source, "source")
    gfamily, grp_packed, group = _address(group, "group")
    if family != gfamily:
        raise InvalidArgument(
            f"source {source} and group {group} are of different address families", "group"
        )
    _check_source(family, src_packed, source)
    _check_group(family, grp_packed, group)
    return family, share_source(source), share_group(group), table_of(table, family)


_seen_names: set[str] = set()  # names already validated: batches repeat a few names many times


def interface(value: Any, field: str) -> str:
    if value.__class__ is str and value in _seen_names:
        return intern(value)  # one shared string per name, however many routes use it
    if not isinstance(value, str):
        raise InvalidArgument(f"{field} must be an interface name (a string)", field=field)
    if not _IFNAME.match(value) or value in (".", ".."):
        shown = value if len(value) <= 40 else value[:40] + "..."
        raise InvalidArgument(
            f"{field} {shown!r} is not a valid interface name: 1 to {IFNAMSIZ - 1} characters"
            " of letters, digits and _ . + @ - (not starting with -)",
            field=field,
        )
    if len(_seen_names) < 4096:
        _seen_names.add(intern(value))
    return value


def interface_or_wildcard(value: Any, field: str) -> str:
    """An interface name, or a wildcard: the start of one followed by * or + (see
    mfcd.wildcards)."""
    if value.__class__ is str and value.endswith(WILDCARDS):
        wildcards.seen()  # (a join's key holds the name itself: no Pattern tells of it)
        if len(value) < 2:
            raise InvalidArgument(
                f"{field}: a wildcard needs the start of a name, as in eth+ or vlan*", field=field
            )
        return interface(value[:-1], field) + value[-1]
    return interface(value, field)


def one_interface(value: Any, field: str) -> str:
    """The interface an interface setting names (`vif set`, a config `[[interface]]`): never
    a wildcard, which a route's oifs take and a setting does not (a name ending in + would
    be a literal name no route could ever use)."""
    if value.__class__ is str and value.endswith(WILDCARDS):
        raise InvalidArgument(
            f"{field} {value} is a wildcard (a name ending in * or +): an interface setting"
            " names one interface; set each interface on its own",
            field=field,
        )
    return interface(value, field)


def interfaces(value: Any, field: str, wild: bool = False) -> tuple[str, ...]:
    """A list of interface names (with `wild`, wildcards too)."""
    if not isinstance(value, list) or not value:
        raise InvalidArgument(f"{field} must be a non-empty list of interface names", field=field)
    _check_oif_count(value, field)
    if "" in value:
        raise InvalidArgument(batchfile.empty_oif(field), field=field)
    check = interface_or_wildcard if wild else interface
    names = tuple([check(v, field) for v in value])
    if len(names) > 1 and len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)  # at most MAX_OIFS names
        raise InvalidArgument(f"{field} names {dup} more than once", field=field)
    return names


def _check_oif_count(oifs: list[Any], field: str = "oifs") -> None:
    """Refuse more oifs than a route can have before looking at any of them, so a list of
    any length costs nothing but its own parsing."""
    if len(oifs) > MAX_OIFS:
        raise InvalidArgument(
            f"{field} names {len(oifs)} interfaces; a route can use at most {MAXVIFS}"
            f" interfaces (the kernel's VIF limit): its iif and up to {MAX_OIFS} oifs",
            field=field,
        )


ROUTE_FIELDS = ("source", "group", "iif", "oifs")
KEY_FIELDS = ("source", "group")
OPTIONAL = ("table",)
BATCH_ADD_FIELDS = ("op", *ROUTE_FIELDS)
BATCH_DEL_FIELDS = ("op", *KEY_FIELDS)
_FIELD_SETS: dict[tuple[str, ...], frozenset[str]] = {
    fields: frozenset(fields)
    for fields in (ROUTE_FIELDS, KEY_FIELDS, BATCH_ADD_FIELDS, BATCH_DEL_FIELDS)
}


def route(args: Any, fields: tuple[str, ...] = ROUTE_FIELDS) -> Route:
    """Validate the arguments of `mfc add` (or a batch's add op) into a Route."""
    (family, source, group, table), ports = route_change(args, fields)
    return Route(family, source, group, ports.iif, ports.oifs, table)


def route_change(args: Any, fields: tuple[str, ...] = ROUTE_FIELDS) -> AddRoute:
    """Validate the arguments of `mfc add` (or a batch's add op) into the change that adds
    the route (its interfaces a wildcards.Pattern if an oif is a wildcard)."""
    args = require_fields(args, fields, OPTIONAL)
    return add_change(args["source"], args["group"], args["iif"], args["oifs"], args.get("table"))


# Interfaces of the routes validated so far: (iif, *oifs) as given -> (iif, oifs) checked and
# interned. Batches repeat a few combinations many times, so each is checked once.
_seen_ports: dict[tuple[Any, ...], Ports] = {}


def add_change(source: Any, group: Any, iif: Any, oifs: Any, table: Any = None) -> AddRoute:
    """Validate a route's values into the change that adds it: its key, and its interfaces
    (one shared value per combination)."""
    key = route_key_of(source, group, table)
    if oifs.__class__ is not list:
        return AddRoute(key, _ports(iif, oifs))
    return _new(AddRoute, (key, route_ports(iif, oifs)))  # tuple.__new__: half the cost


def route_ports(iif: Any, oifs: list[Any]) -> Ports:
    """A route's interfaces, an iif and a list of oifs, validated (a wildcards.Pattern if an
    oif is a wildcard): each combination is checked once, then shared."""
    _check_oif_count(oifs)
    given = (iif, *oifs)
    try:
        checked = _seen_ports.get(given)  # only ever holds combinations of valid names
    except TypeError:  # something unhashable: _ports says what is wrong
        checked = None
    if checked is None:
        checked = _ports(iif, oifs)
        if len(_seen_ports) < 4096:
            _seen_ports[given] = checked
    return checked


def _ports(iif_value: Any, oifs_value: Any, wild_iif: bool = False) -> Ports:
    """A route's or template's interfaces; oifs may be wildcards (a Pattern, see
    mfcd.wildcards), the iif only a template's (`wild_iif`): an (S,G) route's packets
    arrive on one interface."""
    if wild_iif:
        iif = interface_or_wildcard(iif_value, "iif")
    elif iif_value.__class__ is str and is_wildcard(iif_value):
        raise InvalidArgument(
            f"iif {interface_or_wildcard(iif_value, 'iif')} is a wildcard: an (S,G) route"
            " arrives on one interface (a template, with any source or a prefix, may take a"
            " wildcard iif)",
            field="iif",
        )
    else:
        iif = interface(iif_value, "iif")
    oifs = interfaces(oifs_value, "oifs", wild=True)
    if iif in oifs:
        raise InvalidArgument(
            f"iif {iif} is also listed in oifs; mfcd does not send a flow back out of the"
            " interface it arrives on (the kernel would, for an (S,G) route)",
            field="oifs",
        )
    return pattern(intern(iif), tuple([intern(n) for n in oifs]))


# --- templates ------------------------------------------------------------------------------------


def names_template(source: Any, group: Any) -> bool:
    """Whether a source (None: not given) and group name a template rather than a route."""
    if source is None:
        return True
    return source.__class__ is str and group.__class__ is str and tpl.is_template(source, group)


def template_key_of(source: Any, group: Any, iif: Any, table: Any = None) -> TemplateKey:
    """Validate a template's source prefix (None: any), group prefix, iif and table into its
    key, with canonical prefixes (see mfcd.templates)."""
    if not isinstance(group, str):
        raise InvalidArgument("group must be a string", field="group")
    if source is None or source in ("0.0.0.0", "::"):
        source = tpl.ANY
    elif not isinstance(source, str):
        raise InvalidArgument("source must be a string", field="source")
    g = tpl.parse(group, "group")
    s = tpl.parse(source, "source", g.family)
    if s.family != g.family:
        raise InvalidArgument(
            f"source {source} and group {group} are of different address families", "group"
        )
    _check_group_prefix(g)
    _check_source_prefix(s)
    return g.family, s.text, g.text, table_of(table, g.family), interface_or_wildcard(iif, "iif")


def _packed(prefix: tpl.Prefix) -> bytes:
    return prefix.network.to_bytes(4 if prefix.family == 4 else 16, "big")


def _check_group_prefix(g: tpl.Prefix) -> None:
    packed = _packed(g)
    if g.length == (32 if g.family == 4 else 128):
        _check_group(g.family, packed, g.text)
        return
    multicast = (g.length >= 4 and packed[0] >> 4 == 0xE) if g.family == 4 else g.length >= 8
    if not multicast or (g.family == 6 and packed[0] != 0xFF):
        whole = "224.0.0.0/4" if g.family == 4 else "ff00::/8"
        raise InvalidArgument(f"group {g.text} is not within the multicast range {whole}", "group")
    local = (
        g.length >= 24 and packed[:3] == _LOCAL4
        if g.family == 4
        else g.length >= 16 and packed[1] & 0x0F <= 2
    )
    if local:
        raise InvalidArgument(f"group {g.text} holds only link-local groups, never routed", "group")


def _check_source_prefix(s: tpl.Prefix) -> None:
    packed = _packed(s)
    if s.length == (32 if s.family == 4 else 128):
        _check_source(s.family, packed, s.text)
    elif s.length >= (4 if s.family == 4 else 8) and packed[0] >= (224 if s.family == 4 else 255):
        raise InvalidArgument(f"source {s.text} is not a unicast prefix", "source")


def template_change(source: Any, group: Any, iif: Any, oifs: Any, table: Any = None) -> AddTemplate:
    """Validate a template's values into the change that adds it."""
    ports = _ports(iif, oifs, wild_iif=True)
    return AddTemplate(template_key_of(source, group, ports.iif, table), ports)


TEMPLATE_FIELDS = ("group", "iif", "oifs")
TEMPLATE_OPTIONAL = ("source", "table")


def key(args: Any, fields: tuple[str, ...] = KEY_FIELDS) -> RouteKey:
    """Validate the arguments of `mfc del` (or a batch's del op) into a route key."""
    return route_key(require_fields(args, fields, OPTIONAL))


def threshold(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 255:
        raise InvalidArgument("threshold must be an integer TTL from 1 to 255", field="threshold")
    return value


def group_of(value: Any) -> tuple[int, str]:
    """Validate a routable multicast group; return (family, canonical text)."""
    family, packed, group = _address(value, "group")
    _check_group(family, packed, group)
    return family, group


def seconds(value: Any, field: str, low: float, high: float) -> float:
    """Validate a number of seconds in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise InvalidArgument(f"{field} must be seconds from {low:g} to {high:g}", field)
    return float(value)
