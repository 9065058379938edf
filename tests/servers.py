"""Servers on the loopback for products read where they live: an S3-compatible one (moto's server
mode) and a static HTTP one that honours Range requests. Each counts the body bytes it sends."""

from __future__ import annotations

import logging
import re
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterable


class _Counter:
    """Body bytes and requests served, shared by a server's threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.bytes = 0
        self.requests = 0

    def add(self, size: int) -> None:
        with self._lock:
            self.bytes += size

    def request(self) -> None:
        with self._lock:
            self.requests += 1

    def reset(self) -> None:
        with self._lock:
            self.bytes = self.requests = 0


class _Served:
    """A server running in a daemon thread: ``start`` returns it, ``stop`` shuts it and its socket."""

    _server: Any

    def start(self):
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


class S3Server(_Served):
    """moto's S3 on 127.0.0.1 (a free port), its responses' body bytes counted by a WSGI wrapper."""

    def __init__(self) -> None:
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
        from werkzeug.serving import make_server

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
        self.counter = _Counter()
        app = DomainDispatcherApplication(create_backend_app)
        self._server = make_server("127.0.0.1", 0, self._counting(app), threaded=True, request_handler=MotoRequestHandler)
        self.endpoint = f"http://127.0.0.1:{self._server.server_port}"

    def _counting(self, app):
        counter = self.counter

        def wrapped(environ: dict[str, Any], start_response) -> Iterable[bytes]:
            counter.request()
            for chunk in app(environ, start_response):
                counter.add(len(chunk))
                yield chunk

        return wrapped

    def environment(self) -> dict[str, str]:
        """The standard variables that point S3 clients (botocore, s3fs, DuckDB) at this server."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": "us-east-1"}

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class RangeHTTPServer(_Served):
    """Files of ``root`` over HTTP on 127.0.0.1: GET and HEAD, single byte ranges (206 with
    Content-Range, 416 when unsatisfiable), no directory listings."""

    def __init__(self, root: Path) -> None:
        counter = self.counter = _Counter()

        class Handler(SimpleHTTPRequestHandler):
            def __init__(self, *args, **kw):
                super().__init__(*args, directory=str(root), **kw)

            def log_message(self, *args) -> None:  # quiet: one line per request otherwise
                pass

            def do_HEAD(self) -> None:
                self._serve(body=False)

            def do_GET(self) -> None:
                self._serve(body=True)

            def _serve(self, *, body: bool) -> None:
                counter.request()
                path = Path(self.translate_path(self.path))
                if not path.is_file():
                    self.send_error(404, "not found")
                    return
                size = path.stat().st_size
                start, end, status = 0, size - 1, 200
                header = self.headers.get("Range")
                if header:
                    match = _RANGE.match(header.strip())
                    if not match or match.groups() == ("", ""):
                        self.send_error(400, "one byte range only")
                        return
                    first, last = match.groups()
                    if first == "":  # a suffix: the last N bytes
                        start, end = max(size - int(last), 0), size - 1
                    else:
                        start, end = int(first), min(int(last), size - 1) if last else size - 1
                    if start >= size or start > end:
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{size}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    status = 206
                self.send_response(status)
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(end - start + 1))
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
                self.end_headers()
                if body:
                    with path.open("rb") as handle:
                        handle.seek(start)
                        data = handle.read(end - start + 1)
                    self.wfile.write(data)
                    counter.add(len(data))

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_port}"


def upload(folder: Path, url: str, *, public: bool = False) -> None:
    """Put every file of ``folder`` under the s3:// ``url`` (the bucket is created when absent);
    ``public`` makes the bucket and its objects readable without credentials."""
    import boto3

    client = boto3.client("s3")
    bucket, _, prefix = url.split("://", 1)[1].partition("/")
    if bucket not in {b["Name"] for b in client.list_buckets().get("Buckets", [])}:
        client.create_bucket(Bucket=bucket, **({"ACL": "public-read"} if public else {}))
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        client.put_object(Bucket=bucket, Key=f"{prefix}/{path.relative_to(folder).as_posix()}", Body=path.read_bytes(),
                          **({"ACL": "public-read"} if public else {}))


def total_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


__all__ = ["RangeHTTPServer", "S3Server", "total_bytes", "upload"]
