"""The threaded DICOM SCP: one thread accepts, one thread per association."""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time

from triage.upperlayer.handler import Handler, ServerConfig
from triage.upperlayer.pdu import encode_abort
from triage.upperlayer.runner import AssociationRunner

logger = logging.getLogger(__name__)



class Server:
    """A threaded DICOM SCP: one thread accepts, one thread per association.

    Parameters
    ----------
    config
        Network parameters and supported presentation contexts.
    handler
        Decides on associations and stores instances.
    """

    def __init__(self, config: ServerConfig, handler: Handler) -> None:
        self.config = config
        self.handler = handler
        self._listen: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._active = 0
        self._sockets: set[socket.socket] = set()
        self._stopping = threading.Event()

    def start(self, host: str, port: int) -> tuple[str, int]:
        """Bind and serve in background threads; returns the bound address."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(64)
        self._listen = sock
        self._thread = threading.Thread(target=self._accept_loop, name="dicom-accept",
                                        daemon=True)
        self._thread.start()
        bound = sock.getsockname()
        return str(bound[0]), int(bound[1])

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting and abort open associations."""
        self._stopping.set()
        if self._listen is not None:
            with contextlib.suppress(OSError):
                self._listen.shutdown(socket.SHUT_RDWR)
            self._listen.close()
        with self._lock:
            open_sockets = list(self._sockets)
        for sock in open_sockets:
            try:
                sock.sendall(encode_abort(0))
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not self._sockets:
                    break
            time.sleep(0.01)

    @property
    def active_associations(self) -> int:
        with self._lock:
            return self._active

    def connections(self) -> list[socket.socket]:
        """The sockets of the connections being served now."""
        with self._lock:
            return list(self._sockets)

    def admit(self) -> bool:
        """Take an association slot; False when ``max_associations`` are open."""
        with self._lock:
            if self.config.max_associations and self._active >= self.config.max_associations:
                return False
            self._active += 1
            return True

    def leave(self) -> None:
        with self._lock:
            self._active -= 1

    def _accept_loop(self) -> None:
        assert self._listen is not None
        while not self._stopping.is_set():
            try:
                sock, address = self._listen.accept()
            except OSError:
                if self._stopping.is_set():
                    return
                time.sleep(0.05)
                continue
            peer = f"{address[0]}:{address[1]}"
            with self._lock:
                self._sockets.add(sock)
            threading.Thread(target=self._run, args=(sock, peer),
                             name=f"dicom-{peer}", daemon=True).start()

    def _run(self, sock: socket.socket, peer: str) -> None:
        try:
            AssociationRunner(self, sock, peer).run()
        except Exception:
            logger.exception("Association from %s ended by an unexpected error", peer)
        finally:
            with self._lock:
                self._sockets.discard(sock)
