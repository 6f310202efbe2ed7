"""A private test network: namespaces joined by veth pairs, multicast senders and receivers.

Used by the end-to-end tests, the benchmarks and `make demo`.  Everything lives in
network namespaces this module creates (named with a random prefix) and removes
again, so the host's own interfaces, routes and sysctls are never touched.

Topology ("star"): a sender namespace `snd` with interface s0 linked to the router's
r0; receivers rx1..rxN with interface x0 linked to the router's r1..rN.  Addresses:
sender link 198.18.0.0/24 and 2001:db8:0::/64, receiver k link 198.18.k.0/24 and
2001:db8:k::/64; the router is .1/::1 on each link, the other end .2/::2.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

TRAFFIC = str(Path(__file__).with_name("traffic.py"))


def run(*cmd: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=timeout)


class Lab:
    """A router namespace, one sender and `receivers` receivers."""

    def __init__(
        self, receivers: int = 3, prefix: str | None = None, linked: int | None = None
    ) -> None:
        self.prefix = prefix or f"mfcdt{secrets.token_hex(3)}"
        self.receivers = receivers
        self.linked = receivers if linked is None else linked  # receivers linked at create()
        self.router = f"{self.prefix}-rtr"
        self.sender = f"{self.prefix}-snd"
        self.rx = [f"{self.prefix}-rx{k}" for k in range(1, receivers + 1)]
        self.processes: list[subprocess.Popen[str]] = []

    @property
    def namespaces(self) -> list[str]:
        return [self.router, self.sender, *self.rx]

    # --- building and tearing down ---------------------------------------------------------------

    def create(self) -> None:
        try:
            for ns in self.namespaces:
                run("ip", "netns", "add", ns)
                self.ip(ns, "link", "set", "lo", "up")
                # No duplicate address detection on the lab's own links (these sysctls belong
                # to the namespace): addresses are usable at once instead of after a second.
                run(
                    "ip",
                    "netns",
                    "exec",
                    ns,
                    "sysctl",
                    "-qw",
                    "net.ipv6.conf.all.accept_dad=0",
                    "net.ipv6.conf.default.accept_dad=0",
                )
            self.link(self.sender, "s0", "r0", 0)
            for k, ns in enumerate(self.rx[: self.linked], 1):
                self.link(ns, "x0", f"r{k}", k)
            # Packets sent to any group leave the sender through s0.
            self.ip(self.sender, "route", "add", "224.0.0.0/4", "dev", "s0")
            self.wait_settled()
        except BaseException:
            self.destroy()
            raise

    def link(self, ns: str, ifname: str, router_ifname: str, subnet: int) -> None:
        """A veth pair from `ns` (ifname) to the router (router_ifname) on subnet `subnet`."""
        # Created inside the namespaces themselves: the host never sees either end.
        self.ip(
            ns,
            "link",
            "add",
            ifname,
            "type",
            "veth",
            "peer",
            "name",
            router_ifname,
            "netns",
            self.router,
        )
        for where, name, host in ((ns, ifname, 2), (self.router, router_ifname, 1)):
            self.ip(where, "addr", "add", f"198.18.{subnet}.{host}/24", "dev", name)
            self.ip(
                where, "-6", "addr", "add", f"2001:db8:{subnet}::{host}/64", "dev", name, "nodad"
            )
            self.ip(where, "link", "set", name, "up")

    def wait_settled(self, timeout: float = 10) -> None:
        """Wait until every link has carrier and no IPv6 address is still tentative (DAD):
        a veth's carrier comes up asynchronously, and a packet sent before is lost."""
        deadline = time.monotonic() + timeout
        for ns in self.namespaces:
            while time.monotonic() < deadline:
                links = self.ip(ns, "-o", "link", "show", "up")
                tentative = self.ip(ns, "-6", "-o", "addr", "show", "tentative")
                if "NO-CARRIER" not in links and not tentative.strip():
                    break
                time.sleep(0.02)

    def add_receiver_link(self, k: int) -> None:
        """(Re-)create receiver k's link to the router (interface r<k>)."""
        self.link(self.rx[k - 1], "x0", f"r{k}", k)
        self.wait_settled()

    def del_router_link(self, router_ifname: str) -> None:
        """Delete a router interface (and with it the veth peer in the other namespace)."""
        self.ip(self.router, "link", "del", router_ifname)

    def add_sender_link(self) -> None:
        """(Re-)create the sender's link to the router (interface r0)."""
        self.link(self.sender, "s0", "r0", 0)
        self.ip(self.sender, "route", "replace", "224.0.0.0/4", "dev", "s0")
        self.wait_settled()

    def destroy(self) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        self.processes.clear()
        for ns in self.namespaces:
            run("ip", "netns", "del", ns, check=False)

    # --- commands in namespaces ------------------------------------------------------------------

    def ip(self, ns: str, *args: str) -> str:
        return run("ip", "-n", ns, *args).stdout

    def exec(self, ns: str, *cmd: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", ns, *cmd],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def spawn(self, ns: str, *cmd: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, *cmd],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.processes.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[str], sig: int = signal.SIGTERM) -> tuple[int, str, str]:
        if proc.poll() is None:
            proc.send_signal(sig)
        try:
            out, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        if proc in self.processes:
            self.processes.remove(proc)
        return proc.returncode, out, err

    # --- traffic ---------------------------------------------------------------------------------

    def probe(
        self,
        group: str,
        count: int = 5,
        port: int = 5000,
        source_family: int | None = None,
        source: str | None = None,
    ) -> dict[str, int]:
        """Send `count` packets to `group` from the sender (from its address on s0, or from
        `source`, which must be one of its addresses); return how many each receiver got."""
        family = source_family or (6 if ":" in group else 4)
        receivers = {
            ns: self.spawn(ns, sys.executable, TRAFFIC, "recv", group, str(port), "x0")
            for ns in self.rx
        }
        try:
            for proc in receivers.values():
                assert proc.stdout is not None
                line = proc.stdout.readline()
                if line.strip() != "ready":
                    raise RuntimeError(
                        f"receiver failed: {line} {proc.stderr.read() if proc.stderr else ''}"
                    )
            if source is None:
                source = "198.18.0.2" if family == 4 else "2001:db8:0::2"
            sent = self.exec(
                self.sender,
                sys.executable,
                TRAFFIC,
                "send",
                group,
                str(port),
                "s0",
                source,
                str(count),
            )
            if sent.returncode != 0:
                raise RuntimeError(f"sender failed: {sent.stderr}")
            time.sleep(0.3)
        finally:
            counts = {}
            for ns, proc in receivers.items():
                _, out, _ = self.stop(proc)
                lines = out.strip().splitlines()
                counts[ns] = json.loads(lines[-1])["received"] if lines else -1
        return counts


@contextmanager
def lab(receivers: int = 3) -> Iterator[Lab]:
    the_lab = Lab(receivers)
    the_lab.create()
    try:
        yield the_lab
    finally:
        the_lab.destroy()


def leftover_namespaces(prefix: str = "mfcdt") -> Sequence[str]:
    out = run("ip", "netns", "list").stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(prefix)]


if __name__ == "__main__":
    if os.geteuid() != 0:
        sys.exit("lab: needs root (it creates network namespaces)")
