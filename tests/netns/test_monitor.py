"""End to end: `mfcctl monitor` subscribers of the real daemon see its events in order, and a
subscriber that stops reading holds nobody up and is told what it missed."""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import textwrap
import time
from typing import Any

from lab.netns import Lab
from mfcd import cli, events, protocol
from tests.netns import kernel_tables
from tests.netns.conftest import BIN, Mfcd, route_args
from tests.netns.test_config_routes import route, write_config
from tests.netns.test_interfaces import DEL_VIF

SOURCE = "198.18.0.2"


class Subscriber:
    """A raw monitor subscription on the control socket (reads only when asked)."""

    def __init__(self, path: str, rcvbuf: int | None = None) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.connect(path)
        self.sock.settimeout(10)
        self.buffer = b""
        self.sock.sendall(protocol.encode_request("monitor", {}, 5))
        ack = json.loads(self._line())
        assert ack["ok"] is True and ack["id"] == 5, ack
        assert ack["result"]["subscribed"] is True

    def _line(self) -> bytes:
        while b"\n" not in self.buffer:
            data = self.sock.recv(1 << 16)
            assert data, "mfcd closed the subscription"
            self.buffer += data
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line

    def next(self) -> dict[str, Any]:
        message = json.loads(self._line())
        assert message["id"] == 5
        event: dict[str, Any] = message["event"]
        return event

    def until(self, kind: str, **fields: Any) -> list[dict[str, Any]]:
        """Events up to and with the first of `kind` with `fields`."""
        seen = []
        while True:
            event = self.next()
            seen.append(event)
            if event["event"] == kind and all(event.get(k) == v for k, v in fields.items()):
                return seen

    def close(self) -> None:
        self.sock.close()


def test_a_deleted_iif_makes_its_routes_pending_and_its_oifs_degraded(lab: Lab, mfcd: Mfcd) -> None:
    """route.state follows the state show gives: a route whose iif went is pending (as a
    restart without it leaves it), one whose oif went degraded; back, both installed."""
    mfcd.ok(*route_args(SOURCE, "239.1.1.1", "r1", "r0"))  # r1: its iif
    mfcd.ok(*route_args(SOURCE, "239.1.1.2", "r0", "r1,r2"))  # r1: an oif
    sub = Subscriber(mfcd.socket)

    def states() -> dict[str, tuple[str, str]]:
        """The next route.state event of each of the two routes."""
        found: dict[str, tuple[str, str]] = {}
        while len(found) < 2:
            event = sub.next()
            if event["event"] == "route.state":
                found.setdefault(event["group"], (event["state"], event["reason"]))
        return found

    try:
        lab.del_router_link("r1")
        gone = states()
        lab.add_receiver_link(1)
        back = states()
    finally:
        sub.close()
    assert gone == {
        "239.1.1.1": ("pending", "waiting for r1"),
        "239.1.1.2": ("degraded", "waiting for r1"),
    }
    assert back == {"239.1.1.1": ("installed", ""), "239.1.1.2": ("installed", "")}
    assert {r["group"]: r["state"] for r in mfcd.show()["routes"]} == {
        "239.1.1.1": "installed",
        "239.1.1.2": "installed",
    }


def test_route_and_interface_events_arrive_in_order(lab: Lab, mfcd: Mfcd) -> None:
    sub = Subscriber(mfcd.socket)
    try:
        mfcd.ok(*route_args(SOURCE, "239.1.1.1", "r0", "r1,r9"))
        mfcd.ok(*route_args(SOURCE, "239.1.1.2", "r0", "r2"))
        lab.ip(lab.router, "link", "add", "r9", "type", "veth", "peer", "name", "r9p")
        seen = sub.until("route.state", group="239.1.1.1")
        lab.ip(lab.router, "link", "set", "r9", "up")  # a change of the interface known
        seen += sub.until("link", interface="r9", action="change", up=True)
        lab.ip(lab.router, "link", "del", "r9")
        seen += sub.until("route.state", group="239.1.1.1", state="degraded")
        mfcd.ok("mfc", "del", "--source", SOURCE, "--group", "239.1.1.1")
        seen += sub.until("route.del")
    finally:
        sub.close()
    routes = [
        (e["event"], e["group"], e.get("state")) for e in seen if e["event"].startswith("route.")
    ]
    assert routes == [
        ("route.add", "239.1.1.1", "degraded"),
        ("route.add", "239.1.1.2", "installed"),
        ("route.state", "239.1.1.1", "installed"),
        ("route.state", "239.1.1.1", "degraded"),
        ("route.del", "239.1.1.1", None),
    ]
    degraded = [e for e in seen if e["event"] == "route.state"][-1]
    assert degraded["reason"] == "waiting for r9"
    first = next(e for e in seen if e["event"] == "route.add")
    assert (first["iif"], first["oifs"], first["state"]) == ("r0", ["r1", "r9"], "degraded")
    assert first["family"] == "ipv4" and first["origin"] == "api"
    links = [e["action"] for e in seen if e["event"] == "link" and e["interface"] == "r9"]
    assert links[0] == "new"
    assert links[-1] == "del"
    assert "change" in links and set(links[1:-1]) == {"change"}  # r9's other RTM_NEWLINKs
    assert [e["time"] for e in seen] == sorted(e["time"] for e in seen)


class Monitor:
    """`mfcctl monitor -o json` running: its events read as they come."""

    def __init__(self, mfcd: Mfcd) -> None:
        self.proc = subprocess.Popen(
            [str(BIN / "mfcctl"), "--socket", mfcd.socket, "monitor", "-o", "json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.buffer = b""
        # Its subscription starts at some moment: change a setting until it shows.
        deadline = time.monotonic() + 20
        for threshold in range(2, 200):
            assert time.monotonic() < deadline and self.proc.poll() is None
            mfcd.ok("vif", "set", "r1", "--threshold", str(threshold))
            if self.line(0.2) is not None:
                break
        while self.line(0.5) is not None:  # the last settings' events
            pass

    def line(self, timeout: float) -> dict[str, Any] | None:
        """The next event, or None if none comes within `timeout` (read from the pipe
        unbuffered: a buffered reader may hold lines select cannot see)."""
        assert self.proc.stdout is not None
        while b"\n" not in self.buffer:
            if not select.select([self.proc.stdout], [], [], timeout)[0]:
                return None
            data = os.read(self.proc.stdout.fileno(), 1 << 16)
            assert data, "mfcctl monitor ended"
            self.buffer += data
        line, _, self.buffer = self.buffer.partition(b"\n")
        event: dict[str, Any] = json.loads(line)
        return event

    def until(self, kind: str, **fields: Any) -> list[dict[str, Any]]:
        """Events up to and with the first of `kind` with `fields` (within 10 s)."""
        seen = []
        while (event := self.line(10)) is not None:
            seen.append(event)
            if event["event"] == kind and all(event.get(k) == v for k, v in fields.items()):
                return seen
        raise AssertionError(f"no {kind} {fields} event; saw {seen}")

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def test_mfcctl_monitor_prints_lines(lab: Lab, mfcd: Mfcd) -> None:
    monitor = Monitor(mfcd)
    try:
        mfcd.ok(*route_args(SOURCE, "239.1.1.3", "r0", "r1"))
        event = monitor.line(10)
        assert event is not None
        assert (event["event"], event["group"], event["state"]) == (
            "route.add",
            "239.1.1.3",
            "installed",
        )
    finally:
        monitor.close()
    text = mfcd.ctl("monitor", "--help").stdout
    assert "gap" in text


def test_a_renamed_interface_is_told_as_deleted_and_its_routes_degraded(
    lab: Lab, mfcd: Mfcd
) -> None:
    mfcd.ok(*route_args(SOURCE, "239.1.1.4", "r0", "r1,r2"))
    mfcd.ok(*route_args(SOURCE, "239.1.1.5", "r0", "r3"))
    ifindex = int(lab.ip(lab.router, "-o", "link", "show", "r2").split(":")[0])
    monitor = Monitor(mfcd)
    try:
        for args in (("r2", "down"), ("r2", "name", "r7"), ("r7", "up")):
            lab.ip(lab.router, "link", "set", *args)
        renamed = monitor.until("route.state", group="239.1.1.4")
        for args in (("r7", "down"), ("r7", "name", "r2"), ("r2", "up")):
            lab.ip(lab.router, "link", "set", *args)
        back = monitor.until("route.state", group="239.1.1.4", state="installed")
    finally:
        monitor.close()
    links = [(e["action"], e["interface"]) for e in renamed if e["event"] == "link"]
    assert links[-3:] == [("change", "r2"), ("del", "r2"), ("new", "r7")]  # (then r7 up)
    gone, new = (e for e in renamed if e["event"] == "link" and e["action"] in ("del", "new"))
    assert (gone["ifindex"], gone["renamed_to"], "renamed_from" in gone) == (ifindex, "r7", False)
    assert (new["ifindex"], new["renamed_from"]) == (ifindex, "r2")
    state = renamed[-1]
    assert (state["state"], state["reason"]) == ("degraded", "waiting for r2")
    # Only the route on r2: the other one is not told of.
    assert [e["group"] for e in renamed if e["event"] == "route.state"] == ["239.1.1.4"]
    assert (
        cli.format_event(gone).split(" ", 1)[1] == f"link del r2 (ifindex {ifindex}, renamed to r7)"
    )
    # Renamed back: r7 goes the same way, and the route is whole again.
    links = [(e["action"], e["interface"]) for e in back if e["event"] == "link"]
    assert ("del", "r7") in links and ("new", "r2") in links
    assert back[-1]["reason"] == ""
    assert lab.probe("239.1.1.4")[lab.rx[1]] == 5


def test_a_template_whose_oif_is_renamed_away_is_told_degraded_and_back(
    lab: Lab, mfcd: Mfcd
) -> None:
    """Trial 14 F10: routes had `route.state`, templates nothing: a template degraded by a
    rename (and whole again) was seen only in `show`."""
    group = "239.7.0.0/16"
    mfcd.ok("mfc", "add", "--group", group, "--iif", "r0", "--oifs", "r1,r2")
    mfcd.ok("mfc", "add", "--group", "239.8.0.0/16", "--iif", "r0", "--oifs", "r3")
    monitor = Monitor(mfcd)
    try:
        for args in (("r2", "down"), ("r2", "name", "r7")):
            lab.ip(lab.router, "link", "set", *args)
        renamed = monitor.until("template.state", group=group)
        for args in (("r7", "name", "r2"), ("r2", "up")):
            lab.ip(lab.router, "link", "set", *args)
        back = monitor.until("template.state", group=group, state="installed")
    finally:
        monitor.close()
    state = renamed[-1]
    assert (state["state"], state["reason"], state["iif"]) == ("degraded", "waiting for r2", "r0")
    assert cli.format_event(state).split(" ", 1)[1] == (
        f"template.state ipv4 * -> {group} iif r0 (degraded: waiting for r2)"
    )
    told = [e["group"] for e in renamed + back if e["event"] == "template.state"]
    assert told == [group, group]  # (the template on r3 was not touched: not told)
    assert lab.probe("239.7.1.1")[lab.rx[1]] == 5  # learned, and forwarded out of r2 again


def test_a_subscriber_that_stops_reading_holds_nobody_up_and_sees_the_gap(mfcd: Mfcd) -> None:
    slow = Subscriber(mfcd.socket, rcvbuf=4096)
    try:
        routes = 3 * events.BUFFER
        for round_ in range(2):
            lines = "".join(
                f"mfc add --source 198.18.{round_}.{n // 250 + 1} --group 239.2.{n % 250}.1"
                " --iif r0 --oifs r1\n"
                for n in range(routes)
            )
            started = time.monotonic()
            mfcd.ok("batch", "-", stdin=lines)
            mfcd.ok("ping")
            mfcd.ok("show")
            # The batch and the requests after it took no longer for the stuck subscriber.
            assert time.monotonic() - started < 10
        # Now it reads: the events it had room for, a gap for the others, nothing lost unsaid.
        mfcd.ok(*route_args(SOURCE, "239.3.0.1", "r0", "r1"))
        seen = slow.until("route.add", group="239.3.0.1")
    finally:
        slow.close()
    added = [e for e in seen if e["event"] == "route.add"]
    gaps = [e for e in seen if e["event"] == "gap"]
    assert gaps, "no gap reported"
    assert sum(g["dropped"] for g in gaps) + len(added) == 2 * routes + 1
    assert seen[-1]["group"] == "239.3.0.1"  # events after the gap come after it
    # Other subscribers are unaffected by this one's state.
    mfcd.ok("ping")


def test_reloads_and_repairs_are_told(lab: Lab, mfcd: Mfcd) -> None:
    mfcd.ok(*route_args(SOURCE, "239.1.1.1", "r0", "r1"))
    vif = {name: index for index, name in kernel_tables.vifs(lab, 4).items()}["r1"]
    sub = Subscriber(mfcd.socket)
    try:
        assert mfcd.proc is not None
        mfcd.proc.send_signal(signal.SIGHUP)
        reload = sub.until("reload")[-1]
        assert reload["config"] == str(mfcd.config_file)
        # Another privileged program deletes r1's VIF; sync puts it back, and says so.
        code = textwrap.dedent(DEL_VIF.format(family=4, vifi=vif))
        assert lab.exec(lab.router, sys.executable, "-c", code).returncode == 0
        mfcd.ok("sync")
        repair = sub.until("repair")[-1]
    finally:
        sub.close()
    assert (repair["action"], repair["interface"], repair["vif"]) == ("readd_vif", "r1", vif)


def test_stopping_mfcd_ends_the_subscription(mfcd: Mfcd) -> None:
    sub = Subscriber(mfcd.socket)
    try:
        code, _ = mfcd.stop()
        assert code == 0
        assert sub.sock.recv(1 << 16) == b""  # closed, nothing half sent
    finally:
        sub.close()


def test_entries_learned_through_a_template_and_their_removal_are_told(
    lab: Lab, mfcd: Mfcd
) -> None:
    group = "239.1.1.1"
    mfcd.ok("mfc", "add", "--group", "239.1.0.0/16", "--iif", "r0", "--oifs", "r1")
    sub = Subscriber(mfcd.socket)
    try:
        assert lab.probe(group)[lab.rx[0]] == 5  # a source no route names
        learned = sub.until("learned", source=SOURCE, group=group)[-1]
        mfcd.ok("flush")
        flushed = sub.until("expired", source=SOURCE, group=group)[-1]
        assert lab.probe(group)[lab.rx[0]] == 5  # learned again, then its template goes
        sub.until("learned", source=SOURCE, group=group)
        mfcd.ok("mfc", "del", "--group", "239.1.0.0/16")
        gone = sub.until("expired", source=SOURCE, group=group)[-1]
    finally:
        sub.close()
    template = {"source": "*", "group": "239.1.0.0/16", "iif": "r0"}
    fields = {"family": "ipv4", "table": 253, "iif": "r0", "template": template}
    assert {k: learned[k] for k in fields} == fields
    assert {k: flushed[k] for k in fields} == fields and flushed["reason"] == "flush"
    assert {k: gone[k] for k in fields} == fields and gone["reason"] == "template_deleted"
    line = cli.format_event(flushed).split(" ", 1)[1]
    assert line == f"expired ipv4 {SOURCE} -> {group} iif r0 from * -> 239.1.0.0/16 (flush)"


def test_entries_gone_with_a_wildcard_iif_template_are_told_with_their_own_iif(
    lab: Lab, mfcd: Mfcd
) -> None:
    # r-a sorts before r0: the first interface `r+` stands for is not the one traffic uses.
    lab.ip(lab.router, "link", "add", "r-a", "type", "veth", "peer", "name", "x-a")
    group = "239.1.1.1"
    mfcd.ok("mfc", "add", "--group", "239.1.0.0/16", "--iif", "r+", "--oifs", "r1")
    sub = Subscriber(mfcd.socket)
    try:
        assert lab.probe(group)[lab.rx[0]] == 5
        learned = sub.until("learned", source=SOURCE, group=group)[-1]
        mfcd.ok("mfc", "del", "--group", "239.1.0.0/16", "--iif", "r+")
        gone = sub.until("expired", source=SOURCE, group=group)[-1]
    finally:
        sub.close()
    assert (learned["iif"], learned["template"]["iif"]) == ("r0", "r0")
    assert (gone["iif"], gone["template"], gone["reason"]) == (
        "r0",
        learned["template"],
        "template_deleted",
    )


def test_a_reloads_changes_and_a_failed_reload_are_told(mfcd: Mfcd) -> None:
    mfcd.ok(*route_args(SOURCE, "239.3.3.3", "r0", "r1,r2"))  # taken over by the files
    template = '\n[[route]]\ngroup = "239.7.0.0/24"\niif = "r0"\noifs = ["r1"]\n'
    settings = '\n[[interface]]\nname = "r2"\nthreshold = 5\n'
    join = '\n[[join]]\ninterface = "r1"\ngroup = "239.5.5.5"\n'
    declared = route("239.3.3.3", "r0", "r1") + template + settings + join
    write_config(mfcd, route("239.6.0.1", "r0", "r1") + declared)
    sub = Subscriber(mfcd.socket)
    try:
        mfcd.ok("reload")
        seen = sub.until("reload")
        write_config(mfcd, declared)
        mfcd.ok("reload")
        removed = sub.until("reload")
        write_config(mfcd, declared + "\n[[route]\n")
        assert mfcd.ctl("reload").returncode == 1
        failed = sub.until("reload.failed")[-1]
    finally:
        sub.close()
    told = {(e["event"], e.get("group") or e.get("interface")): e for e in seen}
    assert told["route.add", "239.6.0.1"]["origin"] == "config"
    taken = told["route.add", "239.3.3.3"]
    assert (taken["origin"], taken["oifs"]) == ("config", ["r1"])
    assert taken["was"] == {"iif": "r0", "oifs": ["r1", "r2"]}  # (the api route it replaced)
    assert "was" not in told["route.add", "239.6.0.1"]
    assert told["template.add", "239.7.0.0/24"]["origin"] == "config"
    assert (told["threshold", "r2"]["threshold"], told["threshold", "r2"]["origin"]) == (
        5,
        "config",
    )
    assert told["join", "239.5.5.5"]["origin"] == "config"
    assert seen[-1]["event"] == "reload"  # (after the events of its changes)
    assert [(e["event"], e.get("group"), e.get("origin")) for e in removed] == [
        ("route.del", "239.6.0.1", "config"),
        ("reload", None, None),
    ]
    assert (failed["config"], failed["code"]) == (str(mfcd.config_file), "config_error")
    assert failed["error"].startswith(f"{mfcd.config_file}:")
