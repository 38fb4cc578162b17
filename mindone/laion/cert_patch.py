"""Opt-in: let img2dataset download from hosts whose TLS certificate does not verify.

img2dataset 1.47 calls ``urllib.request.urlopen`` without an SSL context, so there is no option to skip
certificate checks. (Its git master after 1.47.0 adds ``download(ignore_ssl_certificate=True)``, PR #397, and
changes ``download_image``'s signature; ``run_img2dataset`` passes that option when the installed
img2dataset has it and uses this module only when it does not.) Instead of overwriting the installed ``downloader.py`` (what the original mindone
recipe did), :func:`insecure_downloads` swaps the ``Downloader`` class that ``img2dataset.main.download``
instantiates for :class:`InsecureDownloader`, a subclass defined here.

Why a subclass and not a monkeypatch of ``urllib``: img2dataset ships the downloader *object* to worker
processes (multiprocessing with the ``spawn`` start method, or pyspark executors), and a monkeypatch made
in the parent does not exist in a spawned child. The pickled object carries its class by reference, so
each worker imports this module and runs :meth:`InsecureDownloader.download_shard`, which installs the
unverified context in that worker for the duration of the shard. The swap is scoped to
``img2dataset.downloader``'s own ``urllib`` name; the rest of the process keeps verifying certificates.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import ssl
import types
import urllib.request
from typing import Iterator

import img2dataset.downloader as i2d_downloader

# ``import img2dataset.main`` would give the *function* main (img2dataset/__init__ re-exports it under the
# submodule's name); the module that calls ``Downloader(...)`` is the one in sys.modules.
i2d_main = importlib.import_module("img2dataset.main")

logger = logging.getLogger(__name__)

WARNING = (
    "certificate verification is DISABLED for image downloads (--insecure_ssl): "
    "any host can impersonate any other; use only for public data you re-check anyway"
)


def unverified_ssl_context() -> ssl.SSLContext:
    """A client context that accepts any certificate and host name."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _unverified_urllib() -> types.SimpleNamespace:
    """A stand-in for the ``urllib`` module as seen by img2dataset.downloader.

    One opener per process (built once, reused by every download thread) so the cost per request is the
    same as the stock ``urlopen`` path, which also reuses a global opener.
    """
    opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=unverified_ssl_context()))

    def urlopen(request, data=None, timeout=None, **_ignored):  # img2dataset's call shape (a context is ignored)
        return opener.open(request, data=data, timeout=timeout)

    request_ns = types.SimpleNamespace(Request=urllib.request.Request, urlopen=urlopen)
    return types.SimpleNamespace(request=request_ns)


@contextlib.contextmanager
def _patched_downloader_module() -> Iterator[None]:
    original = i2d_downloader.urllib
    i2d_downloader.urllib = _unverified_urllib()
    try:
        yield
    finally:
        i2d_downloader.urllib = original


class InsecureDownloader(i2d_downloader.Downloader):
    """img2dataset's Downloader, but its shard downloads skip TLS certificate checks (in any process)."""

    def download_shard(self, row):  # noqa: D102 - same contract as the parent
        with _patched_downloader_module():
            return super().download_shard(row)


@contextlib.contextmanager
def insecure_downloads(pyspark: bool = False) -> Iterator[None]:
    """While active, ``img2dataset.download`` builds an :class:`InsecureDownloader`.

    With ``pyspark=True`` this module is also registered with cloudpickle *by value*, so executors on other
    machines run the patch without having this repository installed (img2dataset itself must be there).
    """
    logger.warning(WARNING)
    if pyspark:
        import sys

        from pyspark import cloudpickle  # bundled with pyspark

        cloudpickle.register_pickle_by_value(sys.modules[__name__])
    original = i2d_main.Downloader
    i2d_main.Downloader = InsecureDownloader
    try:
        yield
    finally:
        i2d_main.Downloader = original
