"""An answer cut off by AnswerDeadline must not leave its connection on the line."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from device_agent import line as agent_line
from device_agent.errors import AgentUnreachableError


def _serve(server: socket.socket, stop: threading.Event) -> None:
    """First connection: an answer trickled a byte every 0.2 s; every later one: a whole answer."""
    first = True
    while not stop.is_set():
        try:
            conn, _ = server.accept()
        except OSError:
            return
        trickle, first = first, False

        def handle(conn: socket.socket, trickle: bool) -> None:
            with conn:
                buf = b""
                while b"\r\n\r\n" not in buf:
                    got = conn.recv(65536)
                    if not got:
                        return
                    buf += got
                body = b'{"ok": true}' + b" " * 40
                head = (
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n"
                )
                if not trickle:
                    conn.sendall(head + body)
                    time.sleep(1)
                    return
                conn.sendall(head)
                for byte in body:
                    if stop.wait(0.2):
                        return
                    try:
                        conn.sendall(bytes([byte]))
                    except OSError:
                        return

        threading.Thread(target=handle, args=(conn, trickle), daemon=True).start()


def test_a_line_whose_answer_came_too_slowly_opens_a_new_connection() -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    port = server.getsockname()[1]
    stop = threading.Event()
    threading.Thread(target=_serve, args=(server, stop), daemon=True).start()
    line = agent_line.AgentLine(f"http://127.0.0.1:{port}", object(), {})  # type: ignore[arg-type]
    try:
        with pytest.raises(AgentUnreachableError, match="too slowly"):
            line._exchange("GET", "/v1/info", b"", {}, 0.5)
        # the agent is fine: the next request must get its answer (on a new connection)
        answer, _ = line._exchange("GET", "/v1/info", b"", {}, 0.5)
        assert answer.status == 200
    finally:
        stop.set()
        line.close()
        server.close()
