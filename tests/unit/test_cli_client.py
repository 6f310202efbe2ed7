"""mfcctl's Client: only a well-formed answer to the request sent, from a trusted server, counts.

A server on a real Unix socket answers each request line with the bytes a test gives it.
"""

from __future__ import annotations

import grp
import io
import os
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from mfcd import cli, protocol


def _serve(listener: socket.socket, answers: list[bytes]) -> None:
    try:
        conn, _ = listener.accept()
    except OSError:
        return  # closed: the test did not connect
    answer = answers[0] if answers else b""
    with conn:
        data = b""
        while b"\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return
            data += chunk
        conn.sendall(answer)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, list[bytes]]]:
    """A socket path, and a list to put the answer in before the client connects."""
    path = str(tmp_path / "mfcd.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    answers: list[bytes] = []

    thread = threading.Thread(target=_serve, args=(listener, answers), daemon=True)
    thread.start()
    yield path, answers
    listener.close()
    thread.join(timeout=5)


def _mfcctl(path: str, *words: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = cli.main(["--socket", path, *words], stdout=out, stderr=err)
    return status, out.getvalue(), err.getvalue()


ADD = ("mfc", "add", "--source", "198.18.0.2", "--group", "239.1.1.1", "--iif", "a", "--oifs", "b")


@pytest.mark.parametrize(
    "answer",
    [
        b'{"v":1,"id":2,"ok":true,"result":{"changed":true}}\n',  # answers another request
        b'{"v":1,"ok":true,"result":{}}\n',  # no id
        b'{"v":1,"id":1,"ok":true}\n',  # no result
        b'{"v":1,"id":1,"ok":"yes","result":{}}\n',  # ok is not true
        b'{"v":1,"id":1}\n',
        b'{"v":1,"id":7,"ok":false,"error":{"code":"not_found","message":"x"}}\n',
        b'{"v":1,"id":1,"ok":false,"error":"broken"}\n',
        b"[1, 2]\n",
        b"this is not json\n",
    ],
)
def test_a_reply_that_does_not_answer_the_request_is_exit_7(
    server: tuple[str, list[bytes]], answer: bytes
) -> None:
    path, answers = server
    answers.append(answer)
    status, out, err = _mfcctl(path, *ADD)
    assert status == protocol.EXIT_PROTOCOL == 7
    assert out == ""
    assert err.startswith("mfcctl: mfcd sent a ") and err.count("\n") == 1


def test_an_error_without_an_id_keeps_its_exit_status(server: tuple[str, list[bytes]]) -> None:
    # mfcd answers id null when it could not read the request (too many clients, too large).
    path, answers = server
    answers.append(protocol.encode_error(None, "too_many_clients", "try again"))
    assert _mfcctl(path, *ADD) == (3, "", "mfcctl: try again\n")


def test_a_reply_to_the_request_counts(server: tuple[str, list[bytes]]) -> None:
    path, answers = server
    answers.append(protocol.encode_error(1, "not_found", "no such route"))
    assert _mfcctl(path, *ADD) == (5, "", "mfcctl: no such route\n")


def test_no_reply_at_all_is_an_error(server: tuple[str, list[bytes]]) -> None:
    path, _ = server  # the server closes without answering (as a stopping mfcd does)
    status, out, err = _mfcctl(path, *ADD)
    assert (status, out) == (protocol.EXIT_UNREACHABLE, "")
    assert "closed the connection without answering" in err


_OTHER_SERVER = """
import socket, sys
listener = socket.socket(fileno=int(sys.argv[1]))
listener.listen(1)
print("listening", flush=True)
conn, _ = listener.accept()
conn.recv(65536)
conn.sendall(b'{"v":1,"id":1,"ok":true,"result":{"changed":true}}\\n')
conn.close()
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to serve a socket as another user")
def test_a_socket_served_by_another_user_is_refused(tmp_path: Path) -> None:
    # Bound here, listened on by a process running as nobody: the kernel records the
    # listener's credentials, which are what mfcctl checks (SO_PEERCRED).
    path = str(tmp_path / "mfcd.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    other = subprocess.Popen(
        # Debian's python3: the venv's interpreter may sit where nobody cannot enter.
        ["/usr/bin/python3", "-c", _OTHER_SERVER, str(sock.fileno())],
        pass_fds=(sock.fileno(),),
        user=65534,
        group=65534,
        extra_groups=[],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert other.stdout is not None and other.stdout.readline() == "listening\n"
        status, out, err = _mfcctl(path, *ADD)
    finally:
        sock.close()
        other.kill()
        other.wait()
    assert (status, out) == (protocol.EXIT_PROTOCOL, "")
    assert err.startswith(f"mfcctl: refusing {path}: it is served by uid 65534, not by root")


def test_the_permission_hint_follows_the_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Trial 15 F6: the hint names the group that really has access, not `mfc` by default
    (which may not exist), and says when only root and the owner have access."""
    sock = tmp_path / "mfcd.sock"
    sock.write_text("")  # (what the hint reads is the mode and the group: any file does)
    group = grp.getgrgid(os.stat(sock).st_gid).gr_name
    sock.chmod(0o660)
    assert cli._who_may(str(sock)) == f"be root or a member of group {group}"
    sock.chmod(0o600)
    assert cli._who_may(str(sock)) == (
        f"{sock} is for root and its owner only (mode 0600; see socket_mode)"
    )
    missing = tmp_path / "run" / "mfcd.sock"  # as a user a directory on the way is closed to
    missing.parent.mkdir(mode=0o750)
    missing.parent.chmod(0o750)
    assert (
        cli._who_may(str(missing)) == f"be root or a member of group {group} (of {missing.parent})"
    )
    missing.parent.chmod(0o700)
    assert cli._who_may(str(missing)).startswith(f"{missing.parent} is for root and its owner only")

    def unnamed(gid: int) -> grp.struct_group:
        raise KeyError(gid)

    monkeypatch.setattr(grp, "getgrgid", unnamed)
    sock.chmod(0o660)
    gid = os.stat(sock).st_gid
    assert cli._who_may(str(sock)) == f"be root or a member of group with gid {gid}"
