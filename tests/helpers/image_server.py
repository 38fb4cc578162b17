"""A fault-injecting image server on 127.0.0.1 for download tests.

:class:`ImageServer` serves generated JPEGs and, on purpose, every failure a LAION download meets:

=====================  ==========================================================  ======================
path                   behaviour                                                   img2dataset outcome
=====================  ==========================================================  ======================
/good/<n>.jpg          a small JPEG (size depends on n)                            success
/big/<n>.jpg           a JPEG larger than the test image_size                      success, downscaled
/redirect/<n>          302 to /good/<n>.jpg                                        success
/missing/<n>           404                                                         HTTP Error 404
/error/<n>             500                                                         HTTP Error 500
/stall/<n>             sends nothing for ``stall_seconds``                         timed out
/truncated/<n>         Content-Length larger than the body, then closes            IncompleteRead
/notimage/<n>          HTML bytes served as image/jpeg                             decoding error
/oversized/<n>.jpg     a JPEG whose area exceeds the test max_image_area           image area too large
/noai/<n>.jpg          a good JPEG with ``X-Robots-Tag: noai``                     disallowed
/flaky503/<n>.jpg      503 on the first request, then /good/<n>.jpg's JPEG          HTTP Error 503, healed
/flaky429/<n>.jpg      429 on the first request, then the JPEG                     HTTP Error 429, healed
/flakystall/<n>.jpg    stalls on the first request, then the JPEG                  timed out, healed
/flakyslow/<n>.jpg     503 first, then the JPEG after ``slow_seconds``             HTTP Error 503, healed
=====================  ==========================================================  ======================

The ``flaky*`` routes heal on the request after their first, per path: a URL that failed once succeeds when
it is downloaded again (run img2dataset with ``retries=0``, or its own retry heals it at once).
:meth:`ImageServer.hit_count` tells how often a URL was requested.

With ``https=True`` the same routes are served over TLS with a self-signed certificate made at start
(openssl CLI, else the ``cryptography`` package). Use as a context manager; everything stops on exit.
Starting, TLS and stopping are :mod:`mindone.utils.loopback`'s; this module only decides the routes.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import ssl
import subprocess
import tempfile
import threading
from http.server import BaseHTTPRequestHandler
from pathlib import Path

from mindone.utils.loopback import LoopbackServer, serve

GOOD_SIZE_BASE = (40, 30)
BIG_SIZE = (160, 120)
OVERSIZED_SIZE = (400, 400)


def make_jpeg(width: int, height: int, seed: int = 0) -> bytes:
    """A deterministic JPEG with some structure (a gradient plus a seeded pattern)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([(x * 255 // max(width - 1, 1)), (y * 255 // max(height - 1, 1)), np.full_like(x, seed * 37 % 256)], -1)
    noise = rng.integers(0, 32, size=base.shape)
    buf = io.BytesIO()
    Image.fromarray((base + noise).clip(0, 255).astype("uint8")).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def good_size(n: int) -> tuple[int, int]:
    return GOOD_SIZE_BASE[0] + 8 * (n % 4), GOOD_SIZE_BASE[1] + 8 * (n % 3)


def make_self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """(certfile, keyfile) for CN/SAN 127.0.0.1, valid one day."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    if shutil.which("openssl"):
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
             "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
            check=True, capture_output=True,
        )  # fmt: skip
        return cert, key
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    pkey = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(pkey.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(pkey, hashes.SHA256())
    )  # fmt: skip
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(pkey.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()))
    return cert, key


class _FaultHandler(BaseHTTPRequestHandler):
    owner: "ImageServer"

    def log_message(self, format, *args) -> None:  # noqa: A002 - keep test output quiet
        pass

    def _send(self, status: int, body: bytes, content_type: str = "image/jpeg", headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802
        owner = self.owner
        with owner._lock:
            owner.hits.append(self.path)
            first_hit = owner.hits.count(self.path) == 1
        parts = self.path.strip("/").split("/")
        route = parts[0]
        n = int(parts[1].split(".")[0]) if len(parts) > 1 and parts[1].split(".")[0].isdigit() else 0
        if route.startswith("flaky"):
            if not first_hit:
                owner.stop_event.wait(owner.slow_seconds if route == "flakyslow" else 0)
                self._send(200, owner.image(good_size(n), n))
            elif route == "flaky429":
                self._send(429, b"slow down", "text/plain", headers={"Retry-After": "1"})
            elif route == "flakystall":
                owner.stop_event.wait(owner.stall_seconds)
            else:
                self._send(503, b"try later", "text/plain")
        elif route == "good":
            self._send(200, owner.image(good_size(n), n))
        elif route == "big":
            self._send(200, owner.image(BIG_SIZE, n))
        elif route == "redirect":
            self.send_response(302)
            self.send_header("Location", f"/good/{n}.jpg")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif route == "missing":
            self._send(404, b"not found", "text/plain")
        elif route == "error":
            self._send(500, b"boom", "text/plain")
        elif route == "stall":
            owner.stop_event.wait(owner.stall_seconds)
        elif route == "truncated":
            body = owner.image(good_size(n), n)
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 3])
            self.wfile.flush()
            self.close_connection = True
        elif route == "notimage":
            self._send(200, b"<html><body>this is not an image</body></html>", "image/jpeg")
        elif route == "oversized":
            self._send(200, owner.image(OVERSIZED_SIZE, n))
        elif route == "noai":
            self._send(200, owner.image(good_size(n), n), headers={"X-Robots-Tag": "noai"})
        else:
            self._send(404, b"unknown route", "text/plain")


# Per route: whether img2dataset must succeed, and a fragment of the error it records otherwise.
EXPECTED_OUTCOME = {
    "good": (True, None),
    "big": (True, None),
    "redirect": (True, None),
    "missing": (False, "404"),
    "error": (False, "500"),
    "stall": (False, "timed out"),
    "truncated": (False, "IncompleteRead"),
    "notimage": (False, "decoding error"),
    "oversized": (False, "image area too large"),
    "noai": (False, "X-Robots-Tag"),
}
# The flaky routes: what img2dataset records the first time (each succeeds the next time).
FLAKY_FIRST_ERROR = {"flaky503": "HTTP Error 503", "flaky429": "HTTP Error 429", "flakystall": "timed out",
                     "flakyslow": "HTTP Error 503"}


class ImageServer:
    """Start with ``with ImageServer(https=...) as srv:``; ``srv.url("good", 3)`` builds a URL."""

    def __init__(self, https: bool = False, stall_seconds: float = 30.0, slow_seconds: float = 0.5) -> None:
        self.https = https
        self.stall_seconds = stall_seconds
        self.slow_seconds = slow_seconds
        self.stop_event = threading.Event()
        self.hits: list[str] = []
        self._images: dict[tuple, bytes] = {}
        self._lock = threading.Lock()
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._running = contextlib.ExitStack()
        self._server: LoopbackServer | None = None
        self.cert_file: Path | None = None  # the self-signed certificate (https), e.g. for SSL_CERT_FILE

    def image(self, size: tuple[int, int], n: int) -> bytes:
        with self._lock:
            key = (size, n)
            if key not in self._images:
                self._images[key] = make_jpeg(size[0], size[1], seed=n)
            return self._images[key]

    @property
    def base_url(self) -> str:
        assert self._server is not None, "server not started"
        return self._server.base_url

    def url(self, route: str, n: int = 0) -> str:
        suffix = ".jpg" if route in ("good", "big", "oversized", "noai", *FLAKY_FIRST_ERROR) else ""
        return f"{self.base_url}/{route}/{n}{suffix}"

    def hit_count(self, url: str) -> int:
        """How many requests the server got for ``url`` (one of :meth:`url`'s) so far."""
        path = url[len(self.base_url):]
        with self._lock:
            return self.hits.count(path)

    def start(self) -> "ImageServer":
        handler = type("Handler", (_FaultHandler,), {"owner": self})
        tls = None
        if self.https:
            self._tmp = tempfile.TemporaryDirectory(prefix="image_server_")
            cert, key = make_self_signed_cert(Path(self._tmp.name))
            self.cert_file = cert
            tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            tls.load_cert_chain(cert, key)
        # clients aborting (a refused certificate, a timeout) are part of the tests: no tracebacks for them
        self._server = self._running.enter_context(serve(handler, tls=tls, quiet_errors=True))
        return self

    def stop(self) -> None:
        self.stop_event.set()  # releases the /stall handlers first
        self._running.close()
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> "ImageServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
