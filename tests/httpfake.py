"""HTTP servers the tests start on loopback (package indexes, channels, a hub's route),
served from a thread for the length of a block."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler
from socketserver import BaseServer
from typing import TypeVar

Server = TypeVar("Server", bound=BaseServer)


@contextmanager
def serving(server: Server) -> Iterator[Server]:
    """``server`` answering from a thread of its own until the block ends."""
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


class QuietHandler(BaseHTTPRequestHandler):
    """A handler that keeps the test's output free of its request lines."""

    def log_message(self, format: str, *args: object) -> None:
        pass

    def reply(self, body: bytes, kind: str) -> None:
        """200 with ``body`` (its headers only, for HEAD)."""
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
