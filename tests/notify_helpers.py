"""Local stand-ins for notification services: an HTTP receiver, a closed port, a silent one."""

from __future__ import annotations

import contextlib
import json
import queue
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Post:
    """One request the receiver took: its path (with query) and JSON body."""

    path: str
    body: dict[str, Any]


class Receiver:
    """A webhook on 127.0.0.1 (http.server in a thread); ``json://`` URLs post to it."""

    def __init__(self) -> None:
        self.posts: queue.Queue[Post] = queue.Queue()
        posts = self.posts

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                posts.put(Post(self.path, json.loads(raw or b"{}")))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str = "hook") -> str:
        return f"json://127.0.0.1:{self.port}/{path}"

    def next(self, timeout: float = 30) -> Post:
        try:
            return self.posts.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no notification reached the receiver in {timeout}s") from None

    def taken(self) -> list[Post]:
        """Everything received so far, without waiting."""
        out = []
        while True:
            try:
                out.append(self.posts.get_nowait())
            except queue.Empty:
                return out

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextlib.contextmanager
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    try:
        yield r
    finally:
        r.close()


def closed_port() -> int:
    """A local port nothing listens on (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def silent_port() -> Iterator[int]:
    """A local port that accepts connections and never answers (a hung service)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        yield s.getsockname()[1]


class HungService:
    """Accepts connections and never answers; ``called`` is set at the first one."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.called = threading.Event()
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed
            self.held.append(conn)
            self.called.set()

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()
