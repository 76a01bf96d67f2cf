"""A shadow stand-in for the mirroring benchmark: answers every ``POST /mirror`` with 202 at once.

    python mirror_sink.py PORT

The benchmark measures what mirroring costs the *stable* (its live requests' latency and
throughput), so the shadow's own scoring, which runs in other pods in a cluster, is left out
of the two shared cores here.
"""

from __future__ import annotations

import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Sink(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", "0")))
        self.send_response(202)
        self.send_header("content-length", "0")
        self.end_headers()

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Sink).serve_forever()
