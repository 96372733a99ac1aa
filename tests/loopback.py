"""A loopback HTTP server for download tests: serves bytes on 127.0.0.1, nothing else."""

from __future__ import annotations

import hashlib
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Loopback:
    """Serves ``files`` (URL path -> bytes) on 127.0.0.1 with HEAD, GET and ``Range``; paths
    with ``/resolve/`` get the headers the Hugging Face client needs (``X-Repo-Commit``,
    ``ETag``).  ``requests`` records (method, path, Range header)."""

    COMMIT = "0123456789abcdef0123456789abcdef01234567"

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.range_ok = True
        self.cut_after: int | None = None  # send only this many body bytes, then hang up
        self.delay = 0.0  # seconds before each answer
        self.requests: list[tuple[str, str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _reply(self, with_body: bool) -> None:
                rng = self.headers.get("Range")
                server.requests.append((self.command, self.path, rng))
                time.sleep(server.delay)
                data = server.files.get(self.path)
                if data is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                start = int(rng.split("=")[1].split("-")[0]) if rng and server.range_ok else 0
                if start >= len(data) > 0:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if rng and server.range_ok:
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data) - start))
                if "/resolve/" in self.path:
                    self.send_header("X-Repo-Commit", Loopback.COMMIT)
                    self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
                self.end_headers()
                if with_body:
                    self.wfile.write(data[start:][: server.cut_after])

            def do_GET(self) -> None:
                self._reply(True)

            def do_HEAD(self) -> None:
                self._reply(False)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()

    def gets(self, path: str) -> list[str | None]:
        """The Range headers of the GET requests for ``path``."""
        return [r for m, p, r in self.requests if m == "GET" and p == path]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
