"""Serving HTTP: moto's AWS endpoint and the API (infra/local/gateway.py), each on its own thread."""

from __future__ import annotations

import threading
from typing import Any

from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from infra.local.gateway import RAW_HEADERS_KEY, ApiGateway


class GatewayRequestHandler(WSGIRequestHandler):
    """Keeps the headers as sent (case and repeats), which WSGI's environ folds; access logging is
    the gateway's own. Answers in HTTP/1.1 like API Gateway, though werkzeug's server (3.1) sends
    `Connection: close` with every response, so clients do not keep connections alive."""

    protocol_version = "HTTP/1.1"

    def make_environ(self) -> dict[str, Any]:
        environ = super().make_environ()
        environ[RAW_HEADERS_KEY] = list(self.headers.items())
        return environ

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


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
        server = make_server(self.host, port, app, threaded=True, request_handler=handler)
        # poll_interval: how soon shutdown() is noticed.
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, name=name, daemon=True)
        thread.start()
        self._running.append((server, thread))
        return server.server_port

    def stop(self) -> None:
        while self._running:  # the API first, then the AWS endpoint its handlers may call
            server, thread = self._running.pop()
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)
