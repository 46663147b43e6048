"""The bare baseline for accepting jobs: a minimal HTTPS + mutual-TLS endpoint.

    python -m benchmarks.system.echo_server --pki DIR --port-file PATH

Python's standard library server (one thread per connection, HTTP/1.1
keep-alive) with the control plane's own server certificate, requiring a
client certificate from its CA; it parses the JSON body and answers 201 with
a small JSON object.  No store, no validation: what the TLS and HTTP layers
cost on this machine.

Each answer is written in one piece with ``TCP_NODELAY`` set: the stdlib's
handler writes the headers and the body separately, and the second small write
then waits for the peer's delayed ACK (Nagle), 40 ms on Linux, which is not a
cost of TLS or HTTP.
"""

from __future__ import annotations

import argparse
import json
import ssl
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # TCP_NODELAY on each connection

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        # headers and body in one write (end_headers would flush the headers alone)
        self._headers_buffer.append(b"\r\n")
        self.wfile.write(b"".join(self._headers_buffer) + body)
        self._headers_buffer = []

    def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
        data = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
        self._answer(201, json.dumps({"id": "x", "name": data.get("spec", {}).get("name")})
                     .encode())

    def do_GET(self) -> None:  # noqa: N802
        self._answer(200, b'{"ok": true}')

    def log_message(self, *args: object) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pki", required=True)
    parser.add_argument("--port-file", required=True)
    args = parser.parse_args()
    pki = Path(args.pki)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki / "ca.crt"))
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_cert_chain(str(pki / "server.crt"), str(pki / "server.key"))
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    Path(args.port_file).write_text(str(server.server_address[1]))
    server.serve_forever()


if __name__ == "__main__":
    main()
