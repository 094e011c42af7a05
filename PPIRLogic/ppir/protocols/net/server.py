"""A serving party's accept loop: every connection in its own thread, bad ones cost one log line.

TLS handshake and authentication run in the connection's worker thread (a slow client blocks only
itself); at most ``max_sessions`` authenticated sessions run at once and the next one is told so;
handshakes in progress are bounded too. Ctrl-C breaks every connection in flight.
"""
from __future__ import annotations

import socket
import threading
from collections.abc import Callable

from ppir.common.errors import PPIRError
from ppir.protocols.net.channel import Channel, Listener, PeerError, Refused

HANDSHAKE_SECONDS = 10.0
JOIN_SECONDS = 5.0

Handler = Callable[[Channel], "str | None"]


class Server:
    """Serve ``sessions`` sessions (0: until interrupted), ``max_sessions`` at a time.

    ``handler(channel)`` runs one authenticated session and returns its log line, or None when the
    connection is part of another connection's session (the dealer's second party). ``refuse(channel,
    reason)`` tells a peer why it is turned away.
    """

    def __init__(self, listener: Listener, handler: Handler, refuse: Callable[[Channel, str], None],
                 log: Callable[[str], None], name: str, max_sessions: int = 8, sessions: int = 0,
                 connections_per_session: int = 1):
        if max_sessions < 1:
            raise PPIRError(f"--max-sessions must be at least 1, got {max_sessions}")
        if sessions < 0:
            raise PPIRError(f"--sessions must be 0 (until stopped) or more, got {sessions}")
        self._listener, self._handler, self._refuse, self._log = listener, handler, refuse, log
        self._name, self._max, self._sessions = name, max_sessions, sessions
        self._per = connections_per_session
        self._slots = threading.BoundedSemaphore(max_sessions * connections_per_session)
        self._max_pending = 4 * max_sessions * connections_per_session + 8
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._threads: set[threading.Thread] = set()
        self._started = self._served = self.failed = 0
        self._done = threading.Event()

    def serve(self) -> int:
        """Run until the sessions are served (returns how many failed) or Ctrl-C (breaks them all)."""
        try:
            while not self._done.is_set():
                sock = self._listener.accept_socket(wait=0.2)
                if sock is None:
                    continue
                with self._lock:
                    crowded = len(self._open) >= self._max_pending
                    if not crowded:
                        self._open.add(sock)
                if crowded:
                    self._log(f"dropped a connection: {self._max_pending} connections already in progress")
                    sock.close()
                    continue
                thread = threading.Thread(target=self._connection, args=(sock,), daemon=True)
                with self._lock:
                    self._threads.add(thread)
                thread.start()
            for thread in list(self._threads):
                thread.join()
        except KeyboardInterrupt:
            self._stop()
            raise
        finally:
            self._listener.close()
        return self.failed

    def _stop(self) -> None:
        """Break every connection and give the workers a moment to end."""
        self._done.set()
        with self._lock:
            sockets = list(self._open)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in list(self._threads):
            thread.join(JOIN_SECONDS)

    def _claim(self) -> bool:
        """Whether one more session may start (``sessions`` counts every session begun)."""
        with self._lock:
            if self._done.is_set() or (self._sessions and self._started >= self._sessions * self._per):
                return False
            self._started += 1
            return True

    def _finish(self, ok: bool) -> None:
        with self._lock:
            self._served += 1
            self.failed += not ok
            if self._sessions and self._served >= self._sessions:
                self._done.set()

    def _connection(self, sock: socket.socket) -> None:
        try:
            address = "{}:{}".format(*sock.getpeername()[:2])
        except OSError:
            address = "?"
        channel = None
        try:
            channel = self._listener.handshake(sock, HANDSHAKE_SECONDS)
            try:
                channel.authenticate(self._listener.roles)
            except Refused as err:
                self._refuse(channel, f"this {self._name} party refused you: {err}")
                raise
            self._session(channel, address)
        except PPIRError as err:
            self._log(f"connection from {address} ended: {err}")
        except Exception as err:  # noqa: BLE001 - one connection's bug must not stop the server
            self._log(f"connection from {address} ended: internal error ({type(err).__name__}: {err})")
        finally:
            if channel is not None:
                channel.close()
            else:
                sock.close()
            with self._lock:
                self._open.discard(sock)
                self._threads.discard(threading.current_thread())

    def _session(self, channel: Channel, address: str) -> None:
        if not self._slots.acquire(blocking=False):
            self._refuse(channel, f"this {self._name} party is serving its maximum of {self._max} sessions at "
                                  "once; try again later")
            raise PeerError(f"refused: already serving {self._max} sessions")
        try:
            if not self._claim():
                self._refuse(channel, f"this {self._name} party is not taking more sessions")
                raise PeerError("refused: no more sessions to serve")
            ok = False
            try:
                line = self._handler(channel)
                ok = True
            except PPIRError as err:
                self._refuse(channel, str(err))
                raise
            finally:
                if ok and line is None:
                    with self._lock:
                        self._started -= 1
                else:
                    self._finish(ok)
            if line:
                self._log(f"{address} ({channel.peer.subject}): {line}")
        finally:
            self._slots.release()
