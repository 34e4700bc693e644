"""The tests' poll predicates: a server that is still starting is "not yet", never an error.

CI failed once because Serve's proxy accepted the health check's connection and answered
after the 5 s read timeout: the predicate raised ReadTimeout instead of polling again.
"""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from conftest import free_port
from polling import http_status


def test_a_server_that_accepts_but_does_not_answer_is_not_yet_up() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        accepted: list[socket.socket] = []
        thread = threading.Thread(target=lambda: accepted.append(listener.accept()[0]))
        thread.start()
        assert http_status(f"http://127.0.0.1:{port}/healthz", timeout_s=0.3) is None
        thread.join()
        accepted[0].close()


class Teapot(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.send_response(418)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def test_nothing_listening_is_not_yet_up_and_an_answer_gives_its_status() -> None:
    assert http_status(f"http://127.0.0.1:{free_port()}/", timeout_s=0.3) is None
    server = ThreadingHTTPServer(("127.0.0.1", 0), Teapot)
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    try:
        assert http_status(f"http://127.0.0.1:{server.server_port}/") == 418
    finally:
        server.shutdown()
        thread.join()
        server.server_close()
