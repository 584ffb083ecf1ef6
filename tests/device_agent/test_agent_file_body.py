"""Request bodies sent from a file (``device_agent.file_body``): the bytes, then the tail."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import httpx
import pytest

from device_agent.file_body import FILE_BODY, FileBody, FileBodyTransport, send_file_body
from runtimes.errors import PackageError


def _file(tmp_path: Path, size: int) -> tuple[Path, bytes]:
    data = os.urandom(size)
    path = tmp_path / "package.bin"
    path.write_bytes(data)
    return path, data


def test_the_range_then_the_tail_as_blocks(tmp_path: Path) -> None:
    path, data = _file(tmp_path, (3 << 20) + 5)
    progress: list[int] = []
    with open(path, "rb") as fh:
        body = FileBody(fh, 1000, len(data), lambda: b"TAIL", lambda d, t: progress.append(d))
        assert b"".join(body) == data[1000:] + b"TAIL"
    assert progress[-1] == len(data) and progress == sorted(progress)


class _Server:
    """A one-request HTTP server on 127.0.0.1: keeps the body it got, answers ``reply``."""

    def __init__(self, reply: bytes) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.got = b""
        self.reply = reply
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            head, _, rest = data.partition(b"\r\n\r\n")
            length = next(
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            while len(rest) < length:
                rest += conn.recv(1 << 20)
            self.got = head + b"\r\n\r\n" + rest
            conn.sendall(self.reply)
        self.sock.close()


def _request(port: int, length: int) -> httpx.Request:
    return httpx.Request(
        "PUT",
        f"http://127.0.0.1:{port}/v1/uploads/x?y=1",
        headers={"Content-Length": str(length), "X-Test": "1"},
        extensions={"timeout": {"connect": 5.0, "write": 5.0, "read": 5.0, "pool": 5.0}},
    )


def test_sendfile_sends_head_range_and_tail_and_reads_the_answer(tmp_path: Path) -> None:
    path, data = _file(tmp_path, (9 << 20) + 3)
    server = _Server(b'HTTP/1.1 200 OK\r\nContent-Length: 11\r\nX-Agent: a\r\n\r\n{"done": 1}')
    with open(path, "rb") as fh:
        body = FileBody(fh, 4 << 20, len(data), lambda: b"PROOF")
        response = send_file_body(_request(server.port, len(data) - (4 << 20) + 5), body)
    server.thread.join(10)
    head, _, got = server.got.partition(b"\r\n\r\n")
    assert got == data[4 << 20 :] + b"PROOF"
    assert head.startswith(b"PUT /v1/uploads/x?y=1 HTTP/1.1\r\n")
    assert b"\r\nx-test: 1" in head.lower() and b"\r\nConnection: close" in head
    assert response.status_code == 200 and response.json() == {"done": 1}
    assert response.headers["X-Agent"] == "a"


def test_a_file_that_got_shorter_is_a_package_error(tmp_path: Path) -> None:
    path, data = _file(tmp_path, 5000)
    left, right = socket.socketpair()
    with left, right, open(path, "rb") as fh:
        with pytest.raises(PackageError, match="got shorter while it was sent"):
            FileBody(fh, 0, len(data) + 100, lambda: b"").send_to(left)


def test_an_agent_that_is_not_there_is_a_connect_error(tmp_path: Path) -> None:
    path, data = _file(tmp_path, 10)
    free = socket.create_server(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()
    with open(path, "rb") as fh, pytest.raises(httpx.ConnectError):
        send_file_body(_request(port, len(data)), FileBody(fh, 0, len(data), lambda: b""))


def test_other_requests_go_through_httpx(tmp_path: Path) -> None:
    server = _Server(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
    transport = FileBodyTransport()
    request = _request(server.port, 3)
    request.stream = httpx.ByteStream(b"abc")
    assert FILE_BODY not in request.extensions
    with httpx.Client(transport=transport) as client:
        response = client.send(request)
    server.thread.join(10)
    assert response.status_code == 204 and server.got.endswith(b"\r\n\r\nabc")


def test_an_answer_sent_before_the_body_is_read_is_the_answer(tmp_path: Path) -> None:
    """An agent that refuses a stream at once (a bad signature, a wrong offset) answers and
    closes without reading the body: the sender's write fails, and the answer is read."""
    path, data = _file(tmp_path, 32 << 20)
    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]

    def refuse() -> None:
        conn, _ = sock.accept()
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                head += conn.recv(65536)
            body = b'{"error": "no"}'
            conn.sendall(
                b"HTTP/1.1 401 Unauthorized\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            conn.shutdown(socket.SHUT_WR)
        sock.close()

    thread = threading.Thread(target=refuse, daemon=True)
    thread.start()
    with open(path, "rb") as fh:
        try:
            response = send_file_body(
                _request(port, len(data)), FileBody(fh, 0, len(data), lambda: b"")
            )
        except httpx.WriteError:
            pytest.fail("the answer sent before the body was read was lost")
    thread.join(10)
    assert response.status_code == 401 and response.json() == {"error": "no"}
