"""HTTP servers on the loopback interface: the one owner of "serve on 127.0.0.1, hand out the URL, stop".

:func:`serve` starts a threaded ``http.server`` on ``127.0.0.1`` (a free port unless ``port`` names one)
in a background thread and yields the running :class:`LoopbackServer`; its ``base_url`` is
``http://127.0.0.1:<port>`` (``https://`` when a TLS context is given). On exit the server stops
accepting, its socket is closed and the thread is joined. What is served is the handler's business:
:func:`serve_directory` serves a folder with the standard library's file handler and yields the base URL.

Users: the demo (it downloads its sample metadata and images from itself) and the tests' fault-injecting
image server (``tests/helpers/image_server.py``).

- Only loopback: the machine's network addresses never reach these servers.
- Each connection is handled in its own daemon thread; a stalled client never blocks the accept loop or
  the exit.
- With ``tls`` (an ``ssl.SSLContext`` holding the server's certificate) each connection is wrapped in its
  handler thread, so a slow or failing handshake never blocks the accept loop either.
- A connection that fails (a client aborting, a refused handshake) is printed with its traceback as
  ``socketserver`` does, unless ``quiet_errors``.
"""

from __future__ import annotations

import contextlib
import functools
import os
import ssl
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Iterator

LOOPBACK = "127.0.0.1"
POLL_SECONDS = 0.1  # how often the accept loop looks for a stop request: the longest wait at exit


class LoopbackServer(ThreadingHTTPServer):
    """A ``ThreadingHTTPServer`` bound to ``127.0.0.1``, optionally serving TLS; see the module docstring."""

    daemon_threads = True

    def __init__(self, handler: Callable, *, port: int = 0, tls: ssl.SSLContext | None = None,
                 quiet_errors: bool = False) -> None:
        self.tls = tls
        self.quiet_errors = quiet_errors
        super().__init__((LOOPBACK, port), handler)

    @property
    def base_url(self) -> str:
        scheme = "http" if self.tls is None else "https"
        return f"{scheme}://{LOOPBACK}:{self.server_address[1]}"

    def finish_request(self, request, client_address) -> None:
        if self.tls is None:
            super().finish_request(request, client_address)
            return
        wrapped = self.tls.wrap_socket(request, server_side=True)  # runs in the connection's own thread
        try:
            self.RequestHandlerClass(wrapped, client_address, self)
        finally:
            self.shutdown_request(wrapped)

    def handle_error(self, request, client_address) -> None:
        if not self.quiet_errors:
            super().handle_error(request, client_address)


@contextlib.contextmanager
def serve(handler: Callable, *, port: int = 0, tls: ssl.SSLContext | None = None,
          quiet_errors: bool = False) -> Iterator[LoopbackServer]:
    """Serve ``handler`` (a request handler class, or a partial of one) on 127.0.0.1 until the block ends."""
    server = LoopbackServer(handler, port=port, tls=tls, quiet_errors=quiet_errors)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": POLL_SECONDS},
                              name=f"loopback:{server.server_address[1]}", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


class _QuietFileHandler(SimpleHTTPRequestHandler):
    def log_message(self, format, *args) -> None:  # noqa: A002 - signature of the base class
        pass


@contextlib.contextmanager
def serve_directory(root: str | os.PathLike, *, port: int = 0) -> Iterator[str]:
    """Serve the files under ``root`` over plain HTTP, without request logs; yields the base URL."""
    with serve(functools.partial(_QuietFileHandler, directory=os.fspath(root)), port=port) as server:
        yield server.base_url
