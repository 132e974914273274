"""Serving HTTP: moto's AWS endpoint and the API (infra/local/gateway.py), each on its own thread."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from contextlib import suppress
from typing import Any

from infra.local.gateway import ApiGateway, GatewayRequestHandler


class Servers:
    """start_aws() and start_api() return the port they bound (0 asks for a free one); stop()
    closes both, promptly."""

    def __init__(self, host: str):
        self.host = host
        self._moto_server: Any = None
        self._aws_port: int | None = None
        self._http_server: Any = None
        self._http_thread: threading.Thread | None = None

    def start_aws(self, port: int) -> int:
        from moto.server import ThreadedMotoServer

        server = ThreadedMotoServer(ip_address=self.host, port=port, verbose=False)
        server.start()
        self._moto_server = server
        self._aws_port = server.get_host_and_port()[1]
        return self._aws_port

    def start_api(self, gateway: ApiGateway, port: int) -> int:
        from werkzeug.serving import make_server

        self._http_server = make_server(self.host, port, gateway, threaded=True, request_handler=GatewayRequestHandler)
        self._http_thread = threading.Thread(
            target=self._http_server.serve_forever,
            kwargs={"poll_interval": 0.1},  # how soon shutdown() is noticed
            name="oms-local-api",
            daemon=True,
        )
        self._http_thread.start()
        return self._http_server.server_port

    def stop(self) -> None:
        if self._http_server is not None:
            self._http_server.shutdown()
            self._http_server.server_close()
            self._http_server = None
        if self._http_thread is not None:
            self._http_thread.join(timeout=5)
            self._http_thread = None
        if self._moto_server is not None:
            _stop_promptly(self._moto_server.stop, (self.host, self._aws_port))
            server = getattr(self._moto_server, "_server", None)
            if server is not None:
                server.server_close()  # ThreadedMotoServer.stop() leaves the socket open
            self._moto_server = None


def _stop_promptly(stop: Callable[[], None], address: tuple[str, int | None]) -> None:
    """Runs a server's blocking stop() while poking its socket: serve_forever() notices a shutdown
    only between polls (half a second for moto's server), a connection wakes it at once."""
    stopper = threading.Thread(target=stop, name="oms-local-stop", daemon=True)
    stopper.start()
    while stopper.is_alive() and address[1]:
        with suppress(OSError):
            socket.create_connection(address, timeout=0.2).close()
        stopper.join(0.05)
    stopper.join()
