"""A stand-in for an S3 store that lacks conditional writes, in front of the local MinIO (a fault for tests).

Some S3-compatible stores ignore ``If-None-Match``/``If-Match`` on PutObject (the write goes through as if
unconditional); others answer ``501 Not Implemented``. This proxy plays either, over a real MinIO:

- ``ignore``: the conditional headers are dropped, so MinIO stores the object unconditionally;
- ``refuse``: a request that carries one of them is answered ``501 NotImplemented`` in S3's XML error format.

Every request that reaches MinIO is signed again with the MinIO credentials (the client's SigV4 signature
covers this proxy's host, and the headers it drops); everything else passes unchanged.

    with ConditionalWriteStandIn(minio_url, access_key, secret_key, mode="ignore") as proxy:
        ObjectStore(endpoint_url=proxy.url)
"""

from __future__ import annotations

import http.client
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Literal

CONDITIONAL_HEADERS = ("if-none-match", "if-match")
# Headers that belong to one hop, or to the signature the proxy computes again.
_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "host", "content-length"})
_SIGNATURE = frozenset({"authorization", "x-amz-date", "x-amz-content-sha256", "x-amz-security-token"})
_NOT_IMPLEMENTED = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>NotImplemented</Code>'
    b"<Message>A header you provided implies functionality that is not implemented</Message></Error>"
)


class ConditionalWriteStandIn:
    def __init__(
        self, upstream: str, access_key: str, secret_key: str, *, mode: Literal["ignore", "refuse"] = "ignore"
    ) -> None:
        self.upstream = urllib.parse.urlsplit(upstream)
        self.access_key = access_key
        self.secret_key = secret_key
        self.mode = mode
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, name="s3-standin", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> ConditionalWriteStandIn:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _resign(self, method: str, path: str, headers: dict[str, str], body: bytes) -> dict[str, str]:
        from botocore.auth import S3SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials

        kept = {k: v for k, v in headers.items() if k.lower() not in _SIGNATURE | _HOP}
        request = AWSRequest(method=method, url=f"{self.upstream.scheme}://{self.upstream.netloc}{path}",
                             data=body, headers=kept)  # fmt: skip
        S3SigV4Auth(Credentials(self.access_key, self.secret_key), "s3", "us-east-1").add_auth(request)
        return dict(request.headers.items())

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                del format, args

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = dict(self.headers.items())
                conditional = [k for k in headers if k.lower() in CONDITIONAL_HEADERS]
                if conditional and proxy.mode == "refuse":
                    self._answer(501, _NOT_IMPLEMENTED, {"Content-Type": "application/xml"})
                    return
                for key in conditional:
                    del headers[key]
                # Signed again: the client signed this proxy's host (and the headers just dropped).
                headers = proxy._resign(self.command, self.path, headers, body)
                connection = http.client.HTTPConnection(proxy.upstream.netloc, timeout=60)
                try:
                    connection.request(self.command, self.path, body=body or None, headers=headers)
                    response = connection.getresponse()
                    data = response.read()
                    head = self.command == "HEAD"  # its Content-Length is the object's: kept as it is
                    dropped = _HOP - {"content-length"} if head else _HOP
                    passed = {k: v for k, v in response.getheaders() if k.lower() not in dropped}
                    self._answer(response.status, data, passed, head=head)
                finally:
                    connection.close()

            def _answer(self, status: int, data: bytes, headers: dict[str, str], *, head: bool = False) -> None:
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                if not head:
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if not head:
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward  # noqa: N815 (http.server's names)

        return Handler
