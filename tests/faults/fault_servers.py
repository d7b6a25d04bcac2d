"""A dependency in its failing shape: a server that accepts connections and never answers.
(The counting FHIR upstream and the rotating keys live in ``tests.support``.)"""

from __future__ import annotations

import socket
import threading


class SilentServer:
    """Accepts TCP connections and never answers a byte: a hung IdP, introspection endpoint or
    FHIR server. ``accepted`` counts the connections it swallowed."""

    def __init__(self) -> None:
        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        self._socket.listen(128)
        self._socket.settimeout(0.05)
        self.port = int(self._socket.getsockname()[1])
        self.accepted = 0
        self._held: list[socket.socket] = []
        self._closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                connection, _ = self._socket.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            self._held.append(connection)

    def close(self) -> None:
        self._closed.set()
        self._socket.close()
        for connection in self._held:
            connection.close()
