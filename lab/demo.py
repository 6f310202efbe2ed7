"""`make demo`: a guided tour of mfcd in private network namespaces (the host is never touched)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lab.netns import Lab

BIN = Path(sys.executable).parent


def say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m" if sys.stdout.isatty() else f"\n== {text}", flush=True)


def main() -> int:
    if os.geteuid() != 0:
        print("demo: needs root (it creates network namespaces)", file=sys.stderr)
        return 1
    lab = Lab(receivers=3)
    with tempfile.TemporaryDirectory(prefix="mfcd-demo-") as tmp:
        sock = f"{tmp}/mfcd.sock"
        conf = Path(tmp) / "mfc_daemon.conf"
        conf.write_text(
            f'socket_path = "{sock}"\nstate_file = "{tmp}/state.journal"\nsocket_group = ""\n'
        )

        def ctl(*args: str) -> None:
            print("$ mfcctl " + " ".join(args), flush=True)
            subprocess.run([str(BIN / "mfcctl"), "--socket", sock, *args], check=False)

        say(f"building namespaces {', '.join(lab.namespaces)}")
        print("sender (s0) --- r0 [router] r1 --- rx1, r2 --- rx2, r3 --- rx3")
        lab.create()
        try:
            say("starting mfcd in the router namespace")
            daemon = lab.spawn(lab.router, str(BIN / "mfcd"), "--config", str(conf))
            for _ in range(100):
                if os.path.exists(sock):
                    break
                time.sleep(0.05)
            ctl("ping")
            say("routing 198.18.0.2 -> 239.1.1.1 from r0 to r1 and r2 (dry run first)")
            route = ["--source", "198.18.0.2", "--group", "239.1.1.1", "--iif", "r0"]
            ctl("--dry-run", "mfc", "add", *route, "--oifs", "r1,r2")
            ctl("mfc", "add", *route, "--oifs", "r1,r2")
            say("sending 5 packets (TTL 8) from the sender")
            for k, (ns, count) in enumerate(lab.probe("239.1.1.1").items(), 1):
                note = "" if k < 3 else "  (r3 is not in the route)"
                print(f"  {ns}: received {count}{note}")
            ctl("show", "--stats")
            say("deleting the route: nothing is forwarded any more")
            ctl("mfc", "del", "--source", "198.18.0.2", "--group", "239.1.1.1")
            for ns, count in lab.probe("239.1.1.1").items():
                print(f"  {ns}: received {count}")
            lab.stop(daemon)
        finally:
            say("cleaning up")
            lab.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
