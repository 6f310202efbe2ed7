"""Group joins, the pure parts: arguments and ranges, the join model, struct packing, the
state file's join records, batch lines and the join commands (with a fake data plane)."""

from __future__ import annotations

import functools
import json
import socket
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from mfcd import batchfile, membership, state
from mfcd.errors import InvalidArgument, KernelError, NotFound, StateError
from mfcd.groups import (
    ANY_SOURCE,
    MAX_EXPANSION,
    Join,
    Joins,
    Leave,
    MembershipOp,
    Retries,
    SetMrdisc,
    describe_key,
    join_keys,
    leaving,
)
from mfcd.state import StateFile, change_op, parse
from tests.unit.conftest import FakeState
from tests.unit.test_commands import ask, make_commands, snapshot
from tests.unit.test_declarations import apply

# --- arguments ---------------------------------------------------------------------------------


def test_one_group_any_source() -> None:
    assert join_keys("r1", "239.1.1.1") == [("r1", "239.1.1.1", ANY_SOURCE)]
    assert join_keys("r1", "FF3E:0::1", "*") == [("r1", "ff3e::1", ANY_SOURCE)]


def test_prefixes_expand_to_every_group_for_every_source() -> None:
    keys = join_keys("r1", "239.1.1.0/31", "198.18.0.0/31")
    assert keys == [
        ("r1", "239.1.1.0", "198.18.0.0"),
        ("r1", "239.1.1.0", "198.18.0.1"),
        ("r1", "239.1.1.1", "198.18.0.0"),
        ("r1", "239.1.1.1", "198.18.0.1"),
    ]
    assert len(join_keys("r1", "239.1.0.0/22")) == MAX_EXPANSION == 1024


@pytest.mark.parametrize(
    ("group", "source", "words"),
    [
        ("239.1.0.0/21", None, "holds 2048 addresses"),
        ("ff3e::/64", None, "holds 18446744073709551616 addresses"),
        ("239.1.0.0/22", "198.18.0.0/31", "1024 groups times 2 sources is 2048 joins"),
        ("239.1.1.1/24", None, "has host bits set"),
        ("10.1.1.1", None, "not a multicast address"),
        ("224.0.0.5", None, "link-local"),
        ("ff01::1", None, "interface-local"),
        ("ff02::fb", None, "link-local scope"),
        ("239.1.1.1", "239.2.2.2", "not a unicast sender"),
        ("239.1.1.1", "0.0.0.0", "not a unicast sender"),
        ("239.1.1.1", "2001:db8::1", "different address families"),
        ("nonsense", None, "not an address or a prefix"),
        (7, None, "must be an address or a prefix"),
    ],
)
def test_bad_joins_are_refused_with_a_reason(group: object, source: object, words: str) -> None:
    with pytest.raises(InvalidArgument, match=words):
        join_keys("r1", group, source)


# --- the model ---------------------------------------------------------------------------------

A = ("r1", "239.1.1.1", ANY_SOURCE)
S = ("r1", "ff3e::1", "2001:db8::1")
LINKS = {"r1": 5}


def joined(joins: Joins, method: object, *args: object) -> list[MembershipOp]:
    joins.begin()
    try:
        ops: list[MembershipOp] = method(*args)  # type: ignore[operator]
    except BaseException:
        joins.rollback()
        raise
    joins.commit()
    return ops


def test_a_join_is_joined_at_once_if_its_interface_exists_and_idempotent() -> None:
    joins = Joins()
    assert joined(joins, joins.join, A, "api", LINKS) == [MembershipOp(True, A, 5)]
    assert joined(joins, joins.join, A, "api", LINKS) == []
    assert joins.status(A) == ("joined", "")
    assert joins.saved() == [list(A)]


def test_a_join_waits_for_its_interface_and_follows_it() -> None:
    joins = Joins()
    assert joined(joins, joins.join, S, "api", {}) == []
    assert joins.status(S) == ("pending", "waiting for r1")
    assert joined(joins, joins.link_up, "r1", 7) == [MembershipOp(True, S, 7)]
    assert joined(joins, joins.link_up, "r1", 7) == []
    # Re-created (a new ifindex): the old device's membership is let go of first.
    assert joined(joins, joins.link_up, "r1", 8) == [
        MembershipOp(False, S, 7),
        MembershipOp(True, S, 8),
    ]
    assert joined(joins, joins.link_down, "r1") == [MembershipOp(False, S, 8)]
    assert joins.status(S).state == "pending"
    assert joined(joins, joins.link_down, "r1") == []


def test_ssm_joins_whose_source_the_kernel_lost_are_left_and_joined_again() -> None:
    """The periodic check's parts: Joins.ssm_joined lists the SSM joins on the interfaces
    checked (not an ASM join, not one on an interface not checked: down);
    membership.missing_sources keeps those whose (ifindex, group, source) the kernel's
    filters lack, comparing addresses packed (an IPv4-mapped source has two spellings);
    Joins.rejoin leaves and joins those still held again, changing nothing in the model."""
    joins = Joins()
    other = ("r2", "239.2.2.2", "198.18.1.1")
    mapped = join_keys("r1", "ff3e::2", "::ffff:198.18.2.2")[0]
    links = {"r1": 5, "r2": 6}
    for key in (A, S, other, mapped):
        joined(joins, joins.join, key, "api", links)
    assert joins.ssm_interfaces() == {"r1", "r2"}
    assert joins.ssm_joined({"r1"}) == [(S, 5), (mapped, 5)]
    v4 = socket.inet_aton
    v6 = functools.partial(socket.inet_pton, socket.AF_INET6)
    held = {
        (5, v6("ff3e::1"), v6("2001:db8::1")),
        (5, v6("ff3e::2"), v6("::ffff:198.18.2.2")),
        (6, v4("239.2.2.2"), v4("198.18.1.9")),
    }
    assert membership.missing_sources(joins.ssm_joined({"r1", "r2"}), held) == [other]
    assert membership.missing_sources(joins.ssm_joined({"r1"}), set()) == [S, mapped]
    assert joined(joins, joins.rejoin, [other, A, ("r9", "239.9.9.9", "198.18.1.1")]) == [
        MembershipOp(False, other, 6),
        MembershipOp(True, other, 6),
    ]
    assert joins.status(S) == ("joined", "") and joins.status(other) == ("joined", "")


@pytest.mark.parametrize("args", [("ff3e::1%r2", "2001:db8::1"), ("ff3e::1", "fe80::1%r2")])
def test_a_zone_index_is_refused_with_a_reason(args: tuple[str, str]) -> None:
    with pytest.raises(InvalidArgument, match="a zone index has no place here"):
        join_keys("r2", *args)


def test_leaving_a_join_never_made_is_not_found_and_leaving_a_pending_one_is_quiet() -> None:
    joins = Joins()
    with pytest.raises(NotFound, match=r"group 239\.1\.1\.1 on r1 was not joined"):
        joined(joins, joins.leave, A)
    joined(joins, joins.join, A, "api", {})
    assert joined(joins, joins.leave, A) == []
    assert not joins.wanted


def test_leaving_a_prefix_leaves_what_is_still_joined_of_it() -> None:
    keys = join_keys("r1", "239.1.1.0/30")
    joined = dict.fromkeys(k for k in keys if k[1] != "239.1.1.1")
    assert leaving(keys, joined, "group 239.1.1.0/30 on r1") == (
        [("r1", "239.1.1.0", "*"), ("r1", "239.1.1.2", "*"), ("r1", "239.1.1.3", "*")],
        [("r1", "239.1.1.1", "*")],
    )
    assert leaving(keys, dict.fromkeys(keys), "") == (keys, [])
    with pytest.raises(NotFound, match=r"^group 239\.1\.1\.0/30 on r1 was not joined$"):
        leaving(keys, {("r2", "239.1.1.0", "*"): None}, "group 239.1.1.0/30 on r1")


SSM = ("r2", "232.1.1.1", "198.18.0.2")


@pytest.mark.parametrize(
    ("asked", "joined", "message"),
    [
        (
            ("r2", "232.1.1.1", "*"),
            [SSM],
            "was not joined for any source; it is joined for source 198.18.0.2 only (SSM):"
            " leave it with --source 198.18.0.2",
        ),
        (
            ("r2", "232.1.1.1", "*"),
            [SSM, ("r2", "232.1.1.1", "198.18.0.3")],
            "it is joined for sources 198.18.0.2, 198.18.0.3: leave each with --source SOURCE",
        ),
        (
            ("r2", "232.1.1.1", "198.18.0.9"),
            [("r2", "232.1.1.1", "*")],
            "198.18.0.9 group 232.1.1.1 on r2 was not joined; it is joined for any source:"
            " leave it without --source",
        ),
        (
            ("r2", "232.1.1.1", "198.18.0.9"),
            [("r2", "232.1.1.1", "*"), SSM],
            "it is joined for any source and source 198.18.0.2: leave each",
        ),
    ],
)
def test_leaving_a_join_for_another_source_says_which_are_joined_and_how_to_leave_them(
    asked: tuple[str, str, str], joined: list[tuple[str, str, str]], message: str
) -> None:
    others = [("r1", "232.1.1.1", "198.18.0.7"), ("r2", "232.1.1.2", "198.18.0.7")]
    with pytest.raises(NotFound) as e:
        leaving([asked], dict.fromkeys([*joined, *others]), describe_key(asked))
    assert message in str(e.value)
    assert "198.18.0.7" not in str(e.value)  # (another interface's, another group's)


def test_a_leave_in_a_batch_also_says_which_sources_are_joined() -> None:
    """Joins.leave (the path of batch lines) gives not_joined's hint, as `mfcctl leave` does."""
    joins = Joins()
    joined(joins, joins.join, S, "api", LINKS)
    asm = (S[0], S[1], ANY_SOURCE)
    with pytest.raises(NotFound) as e:
        joins.leave(asm)
    assert f"it is joined for source {S[2]} only (SSM): leave it with --source {S[2]}" in str(
        e.value
    )
    assert joins.wanted == {S: "api"}


def test_rollback_restores_everything() -> None:
    joins = Joins()
    joined(joins, joins.join, A, "api", LINKS)
    before = (dict(joins.wanted), dict(joins.joined), dict(joins.mrdisc))
    joins.begin()
    joins.leave(A)
    joins.join(S, "api", LINKS)
    joins.set_mrdisc("r1", True)
    assert joins.changed()
    joins.rollback()
    assert (dict(joins.wanted), dict(joins.joined), dict(joins.mrdisc)) == before


def test_refused_joins_wait_with_the_reason_and_are_retried() -> None:
    joins = Joins()
    joined(joins, joins.join, S, "api", LINKS)
    joined(joins, joins.park, S, "the kernel refused it (No buffer space)")
    assert joins.status(S) == ("pending", "the kernel refused it (No buffer space)")
    assert joined(joins, joins.retry, LINKS) == [MembershipOp(True, S, 5)]
    assert joins.status(S).state == "joined"


def test_refused_joins_are_retried_at_each_turn_then_less_often_while_all_are_refused() -> None:
    retries = Retries(most=4)
    assert not retries.due([])  # nothing refused: nothing to try
    turns = []
    for _ in range(12):
        due = retries.due([S])
        turns.append(due)
        if due:
            retries.tried(0)  # the kernel refuses it again
    # at once, then 2 turns later, then every 4th (the most), and no more rarely than that
    assert turns == [True, False, True, False, False, False, True, False, False, False, True, False]
    assert retries.due([S, A])  # a new refusal: at the next turn, whatever the pace was
    retries.tried(0)
    assert [retries.due([S, A]), retries.due([S, A])] == [False, True]  # every 2nd turn
    retries.tried(1)  # one joined: every turn again
    assert retries.due([S])


def test_refresh_joins_the_ssm_groups_again_only() -> None:
    joins = Joins()
    joined(joins, joins.join, A, "api", LINKS)
    joined(joins, joins.join, S, "api", LINKS)
    assert joined(joins, joins.refresh, "r1") == [
        MembershipOp(False, S, 5),
        MembershipOp(True, S, 5),
    ]


def test_only_the_apis_joins_are_saved() -> None:
    joins = Joins()
    joined(joins, joins.join, A, "config", LINKS)
    joined(joins, joins.join, S, "api", LINKS)
    assert joins.saved() == [list(S)]
    assert joins.origin(A) == "config"


# --- struct packing ------------------------------------------------------------------------------


def test_group_req_layouts() -> None:
    v4 = membership.group_req(3, 4, "239.1.2.3")
    assert len(v4) == 136
    assert struct.unpack_from("=I", v4)[0] == 3 and v4[4:8] == bytes(4)  # padding
    assert struct.unpack_from("=H", v4, 8)[0] == socket.AF_INET
    assert v4[12:16] == bytes([239, 1, 2, 3]) and v4[16:] == bytes(120)
    v6 = membership.group_source_req(9, 6, "ff3e::1", "2001:db8::1")
    assert len(v6) == 264
    assert struct.unpack_from("=H", v6, 8)[0] == socket.AF_INET6
    assert v6[16:32] == socket.inet_pton(socket.AF_INET6, "ff3e::1")
    assert struct.unpack_from("=H", v6, 136)[0] == socket.AF_INET6
    assert v6[144:160] == socket.inet_pton(socket.AF_INET6, "2001:db8::1")


@pytest.mark.parametrize(
    ("op", "level", "option", "size"),
    [
        (MembershipOp(True, A, 1), socket.IPPROTO_IP, 42, 136),
        (MembershipOp(False, A, 1), socket.IPPROTO_IP, 45, 136),
        (MembershipOp(True, S, 1), socket.IPPROTO_IPV6, 46, 264),
        (MembershipOp(False, S, 1), socket.IPPROTO_IPV6, 47, 264),
    ],
)
def test_each_op_uses_the_rfc_3678_call(
    op: MembershipOp, level: int, option: int, size: int
) -> None:
    got_level, got_option, value = membership.request(op)
    assert (got_level, got_option, len(value)) == (level, option, size)


def test_the_kernel_s_source_filters_are_read_from_proc() -> None:
    """/proc/net/mcfilter (addresses as host-order hex) and mcfilter6 (32 hex digits), as
    Linux 6.x prints them; a source no longer included (INC 0) is not held."""
    v4 = (
        "Idx Device        MCA        SRC    INC    EXC\n"
        "  3     r2 0xef0d0001 0xc6120202      1      0\n"
        "  3     r2 0xef0d0002 0xc6120203      0      1\n"
        " 12 longna 0xe8010203 0x0a000001      2      0\n"
    )
    assert membership.parse_source_filters(4, v4) == {
        (3, socket.inet_aton("239.13.0.1"), socket.inet_aton("198.18.2.2")),
        (12, socket.inet_aton("232.1.2.3"), socket.inet_aton("10.0.0.1")),
    }
    v6 = (
        "Idx Device                Multicast Address                   Source Address    INC"
        "    EXC\n"
        "  3     r2 ff3e0000000000000000000000130001 20010db8000200000000000000000002      1"
        "      0\n"
    )
    packed = functools.partial(socket.inet_pton, socket.AF_INET6)
    assert membership.parse_source_filters(6, v6) == {
        (3, packed("ff3e::13:1"), packed("2001:db8:2::2"))
    }
    assert membership.parse_source_filters(6, v6.splitlines()[0]) == set()


def test_the_drop_all_filter_is_one_ret_0() -> None:
    assert membership.drop_all_program().raw[:8] == struct.pack("=HBBI", 0x06, 0, 0, 0)


# --- the state file ------------------------------------------------------------------------------


def test_join_ops_are_journaled_and_replayed(tmp_path: Path) -> None:
    assert change_op(Join(A)) == ["join", "r1", "239.1.1.1", "*"]
    assert change_op(Leave(S)) == ["leave", "r1", "ff3e::1", "2001:db8::1"]
    assert change_op(SetMrdisc("r2", True)) == ["mrdisc", "r2", True]
    sf = StateFile(str(tmp_path / "state.journal"))
    sf.load()
    sf.append([Join(A), Join(S), SetMrdisc("r2", True)])
    sf.append([Leave(A), SetMrdisc("r3", True), SetMrdisc("r3", False)])
    loaded = parse((tmp_path / "state.journal").read_bytes())
    assert list(loaded.joins) == [S]
    assert list(loaded.mrdisc) == ["r2"]
    sf.close()


def test_a_snapshot_keeps_joins_and_a_file_without_them_loads(tmp_path: Path) -> None:
    sf = StateFile(str(tmp_path / "state.journal"))
    sf.load()
    sf.write_snapshot([], {}, {"joins": [list(A), list(S)], "mrdisc": ["r1"]})
    sf.close()
    data = (tmp_path / "state.journal").read_bytes()
    assert b'"joins":[["r1","239.1.1.1","*"],' in data
    loaded = parse(data)
    assert list(loaded.joins) == [A, S] and list(loaded.mrdisc) == ["r1"]
    plain = state.HEADER + state.encode_record(
        {"seq": 1, "snapshot": {"routes": [], "thresholds": {}, "count": 0}}
    )
    assert parse(plain).joins == {}


@pytest.mark.parametrize(
    "op",
    [["join", "r1", "239.1.1.0/30", "*"], ["join", "r1", "10.0.0.1", "*"], ["join", "r1"]],
)
def test_a_malformed_join_record_is_corruption(op: list[object]) -> None:
    snapshot = state.encode_record({"seq": 1, "snapshot": {"routes": [], "count": 0}})
    data = state.HEADER + snapshot + state.encode_record({"seq": 2, "ops": [op]})
    with pytest.raises(StateError, match="line 3 is corrupt"):
        parse(data)


# --- batch lines and commands --------------------------------------------------------------------


def test_join_and_leave_lines() -> None:
    text = (
        "join --interface r1 --group 239.1.1.0/30\n"
        "mfc leave --interface=r2 --group ff3e::1 --source 2001:db8::1  # comment\n"
    )
    assert list(batchfile.lines(text)) == [
        (1, "join", "", "239.1.1.0/30", "r1", None, None),
        (2, "leave", "2001:db8::1", "ff3e::1", "r2", None, None),
    ]
    for bad, words in [
        ("join --group 239.1.1.1", "needs --interface"),
        ("join --interface r1 --group", "--group takes one value"),
        ("join --interface r1 --group 239.1.1.1 --oifs r2", "unexpected option --oifs"),
        ("leave --interface r1 --interface r2 --group 239.1.1.1", "--interface given twice"),
    ]:
        with pytest.raises(batchfile.SyntaxProblem, match=words):
            list(batchfile.lines(bad))


def test_leave_of_a_prefix_part_of_which_was_left_leaves_the_rest_and_says_so() -> None:
    commands = make_commands()
    wanted = commands.controller.joins.wanted
    prefix = {"interface": "a", "group": "239.5.0.0/30"}
    assert ask(commands, "join", prefix)["ok"]
    assert ask(commands, "leave", {"interface": "a", "group": "239.5.0.1"})["ok"]
    planned = ask(commands, "leave", prefix, dry_run=True)["result"]
    assert len(wanted) == 3 and planned["left"] == 3
    done = ask(commands, "leave", prefix)["result"]
    assert [step["group"] for step in done["plan"]] == ["239.5.0.0", "239.5.0.2", "239.5.0.3"]
    assert done["already_left"] == [{"interface": "a", "group": "239.5.0.1", "source": "*"}]
    assert wanted == {}
    error = ask(commands, "leave", prefix)["error"]
    assert (error["code"], error["message"]) == (
        "not_found",
        "group 239.5.0.0/30 on a was not joined",
    )


def test_a_real_refusal_of_one_group_of_a_prefix_leaves_none() -> None:
    commands = make_commands()
    ask(commands, "join", {"interface": "a", "group": "239.5.0.0/30"})
    ask(commands, "leave", {"interface": "a", "group": "239.5.0.1"})
    apply(commands.controller, '[[join]]\ninterface = "a"\ngroup = "239.5.0.2"\n')
    error = ask(commands, "leave", {"interface": "a", "group": "239.5.0.0/30"})["error"]
    assert (
        error["code"] == "declared_in_config" and "239.5.0.2 on a is joined in" in error["message"]
    )
    assert len(commands.controller.joins.wanted) == 3  # nothing left


def test_join_command_results_and_group_show() -> None:
    commands = make_commands()  # interfaces a, b, c exist; no memberships (a fake data plane)
    planned = ask(commands, "join", {"interface": "a", "group": "239.5.0.0/31"}, dry_run=True)
    assert [step["action"] for step in planned["result"]["plan"]] == ["join", "join"]
    assert commands.controller.joins.wanted == {}
    done = ask(commands, "join", {"interface": "zz", "group": "239.5.0.1"})["result"]
    assert (done["state"], done["reason"], done["missing"]) == ("pending", "waiting for zz", ["zz"])
    shown = ask(commands, "group.show", {})["result"]
    assert shown["groups"] == [
        {
            "interface": "zz",
            "family": "ipv4",
            "group": "239.5.0.1",
            "source": "*",
            "state": "pending",
            "origin": "api",
            "reason": "waiting for zz",
        }
    ]
    gone = ask(commands, "leave", {"interface": "a", "group": "239.5.0.1"})
    assert gone["error"]["code"] == "not_found"


def test_vif_set_mrdisc_is_kept_and_journaled() -> None:
    commands = make_commands()
    ctl = commands.controller
    assert ask(commands, "vif.set", {"interface": "b", "mrdisc": True})["ok"]
    assert "b" in ctl.joins.mrdisc
    assert isinstance(ctl.state, FakeState)
    assert ctl.state.records[-1] == [["mrdisc", "b", True]]
    refused = ask(commands, "vif.set", {"interface": "b"})
    assert refused["error"]["code"] == "bad_request"
    assert json.dumps(ask(commands, "group.show", {})["result"]["mrdisc"]) == '["b"]'


def test_a_failing_line_after_a_range_is_named() -> None:
    commands = make_commands()
    text = "join --interface a --group 239.6.0.0/29\nleave --interface a --group 239.6.1.1\n"
    refused = ask(commands, "batch", {"text": text})
    assert (refused["error"]["code"], refused["error"]["line"]) == ("not_found", 2)


# --- all or nothing ------------------------------------------------------------------------------


class FakeMemberships:
    """The kernel's memberships in memory; joins of `refuse` fail as Linux's ENODEV would."""

    def __init__(self, refuse: frozenset[tuple[str, str, str]] = frozenset()) -> None:
        self.held: dict[tuple[str, str, str], int] = {}
        self.refuse = refuse

    def one(self, op: MembershipOp) -> None:
        if op.join and op.key in self.refuse:
            raise KernelError("the kernel refused to join: No such device", "join", 19)
        if op.join:
            self.held[op.key] = op.ifindex
        else:
            self.held.pop(op.key, None)

    def apply(self, ops: Sequence[MembershipOp]) -> None:
        for done, op in enumerate(ops):
            try:
                self.one(op)
            except KernelError:
                for earlier in reversed(ops[:done]):
                    self.one(earlier.inverse)
                raise


def with_members(refuse: frozenset[tuple[str, str, str]] = frozenset()) -> tuple[Any, ...]:
    commands = make_commands()
    members = FakeMemberships(refuse)
    commands.controller.members = members
    return commands, members


BATCH = (
    "mfc add --source 10.0.0.7 --group 239.1.1.7 --iif a --oifs b\n"
    "join --interface a --group 239.7.0.0/31\n"
)


def test_a_join_the_kernel_refuses_undoes_the_whole_batch() -> None:
    commands, members = with_members(frozenset({("a", "239.7.0.1", ANY_SOURCE)}))
    before = snapshot(commands)
    refused = ask(commands, "batch", {"text": BATCH})
    assert refused["error"]["code"] == "kernel_error"
    assert "No such device" in refused["error"]["message"]
    assert snapshot(commands) == before
    assert members.held == {}


def test_a_journal_that_fails_undoes_the_memberships() -> None:
    commands, members = with_members()
    before = snapshot(commands)
    state = commands.controller.state
    assert isinstance(state, FakeState)
    state.fail = True
    refused = ask(commands, "batch", {"text": BATCH})
    assert refused["error"]["code"] == "state_error"
    assert snapshot(commands) == before
    assert members.held == {}
    state.fail = False
    assert ask(commands, "batch", {"text": BATCH})["ok"]
    assert set(members.held) == {("a", "239.7.0.0", "*"), ("a", "239.7.0.1", "*")}


def test_mrdisc_needs_ipv4() -> None:
    commands = make_commands()
    commands.families = (6,)
    refused = ask(commands, "vif.set", {"interface": "a", "mrdisc": True})
    assert (refused["error"]["code"], refused["error"]["field"]) == ("invalid_argument", "mrdisc")


def test_joins_tell_monitor_subscribers() -> None:
    commands = make_commands()
    sub = commands.events.subscribe(lambda: None)
    assert ask(commands, "join", {"interface": "a", "group": "239.8.0.0/31"})["ok"]
    assert ask(commands, "leave", {"interface": "a", "group": "239.8.0.1"})["ok"]
    assert ask(commands, "vif.set", {"interface": "b", "mrdisc": True})["ok"]
    events = sub.take()
    assert [(e["event"], e.get("group")) for e in events] == [
        ("join", "239.8.0.0"),
        ("join", "239.8.0.1"),
        ("leave", "239.8.0.1"),
        ("mrdisc", None),
    ]
    assert (events[0]["interface"], events[0]["source"], events[3]["on"]) == ("a", "*", True)


def test_a_join_refused_on_link_up_is_joined_by_a_retry_once_the_kernel_takes_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    key = ("d", "239.9.9.9", ANY_SOURCE)
    commands, members = with_members(frozenset({key}))
    ctl = commands.controller
    assert ask(commands, "join", {"interface": "d", "group": "239.9.9.9"})["ok"]  # d: missing
    with caplog.at_level("DEBUG", logger="mfcd"):
        ctl.link_up("d", 9)  # the kernel refuses the join: pending, said as an error
        status = ctl.joins.status(key)
        assert status.state == "pending" and "mfcd tries it again by itself" in status.reason
        assert ctl.retry_refused_joins({"d"}) == 0  # refused again: said at debug level
    assert [r.levelname for r in caplog.records if "No such device" in r.message] == [
        "ERROR",
        "DEBUG",
    ]
    members.refuse = frozenset()
    assert ctl.retry_refused_joins({"a"}) == 0  # d is not running: left for its link event
    assert key not in members.held
    with caplog.at_level("INFO", logger="mfcd"):
        assert ctl.retry_refused_joins({"d"}) == 1
    assert members.held[key] == 9 and ctl.joins.status(key).state == "joined"
    assert "joined 1 groups the kernel had refused before: group 239.9.9.9 on d" in caplog.text
