"""Small HTTP answers for the fakes and tests that serve a body."""

from __future__ import annotations

import http.server


def send(handler: http.server.BaseHTTPRequestHandler, body: bytes, status: int = 200) -> None:
    """Answer the request with ``body`` and its length."""
    handler.send_response(status)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)
