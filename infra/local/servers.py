"""Serving HTTP: moto's AWS endpoint and the API (infra/local/gateway.py), each on its own thread."""

from __future__ import annotations

import socket
import threading
from typing import Any

from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from infra.local.gateway import RAW_HEADERS_KEY, ApiGateway


class GatewayRequestHandler(WSGIRequestHandler):
    """Keeps the headers as sent (case and repeats), which WSGI's environ folds; access logging is
    the gateway's own (the stack keeps werkzeug's per-request lines below WARNING). Answers in
    HTTP/1.1 and keeps the connection, as API Gateway does. Werkzeug's own run_wsgi (3.1) closes
    every connection, since it cannot tell where a body the application left unread ends: it still
    answers a chunked body, and one over the gateway's limit (the gateway refuses it unread, and
    werkzeug drains it so the client sees the 413)."""

    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        # A kept connection's next request must not wait for the ACK of this response's headers
        # (Nagle's algorithm against the client's delayed ACK: 40 ms a request).
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def make_environ(self) -> dict[str, Any]:
        environ = super().make_environ()
        environ[RAW_HEADERS_KEY] = list(self.headers.items())
        return environ

    def run_wsgi(self) -> None:
        length = self.headers.get("Content-Length", "0").strip()
        if "Transfer-Encoding" in self.headers or not length.isdigit() or int(length) > self.server.app.max_body_bytes:
            return super().run_wsgi()
        answer: list[Any] = []
        body = b"".join(self.server.app(self.make_environ(), lambda *started: answer.extend(started[:2])))
        status, headers = answer
        code, _, reason = status.partition(" ")
        self.send_response(int(code), reason)
        for name, value in headers:
            if name.lower() not in ("content-length", "connection"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        # end_headers() without its flush: the status line, headers and body leave in one write
        # (one send, one segment) rather than the headers' and then the body's.
        self._headers_buffer.append(b"\r\n")
        if self.command != "HEAD":
            self._headers_buffer.append(body)
        self.flush_headers()


class Servers:
    """start_aws() and start_api() return the port they bound (0 asks for a free one); stop()
    closes both, promptly."""

    def __init__(self, host: str):
        self.host = host
        self._running: list[tuple[BaseWSGIServer, threading.Thread]] = []

    def start_aws(self, port: int) -> int:
        # What moto's ThreadedMotoServer serves, on a server this class can stop without its
        # half-second shutdown poll.
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app

        return self._serve(DomainDispatcherApplication(create_backend_app), port, MotoRequestHandler, "oms-local-aws")

    def start_api(self, gateway: ApiGateway, port: int) -> int:
        return self._serve(gateway, port, GatewayRequestHandler, "oms-local-api")

    def _serve(self, app: Any, port: int, handler: type[WSGIRequestHandler], name: str) -> int:
        # Bound here: a port in use is then an OSError naming it (make run says which variable sets
        # it), where werkzeug's own bind prints its advice and calls sys.exit(1).
        try:
            bound = socket.create_server((self.host, port), backlog=BaseWSGIServer.request_queue_size)
        except OSError as error:  # which of the two ports
            raise OSError(error.errno, f"cannot listen on {self.host}:{port}: {error.strerror}") from None
        with bound:  # werkzeug serves a duplicate of it
            server = make_server(self.host, port, app, threaded=True, request_handler=handler, fd=bound.fileno())
        # poll_interval: how soon shutdown() is noticed.
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, name=name, daemon=True)
        thread.start()
        self._running.append((server, thread))
        return server.port  # the bound one (port 0: a free one)

    def stop(self) -> None:
        while self._running:  # the API first, then the AWS endpoint its handlers may call
            server, thread = self._running.pop()
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)
