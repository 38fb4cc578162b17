"""Resumable HTTP(S) download of one file: size check, temp name then rename, retries with backoff.

- A complete file (same size as the server's Content-Length) is skipped.
- Bytes go to ``.<name>.partial`` beside the target; the target appears (atomic rename) only once the
  whole file is there, so a half-downloaded file is never mistaken for a complete one.
- A partial file is resumed with an HTTP Range request when the server supports it; otherwise the
  download restarts from zero.
- Transient failures (connection errors, timeouts, HTTP 5xx/429, short reads) are retried with
  exponential backoff; a permanent one (404, 403...) fails at once with the URL and status.
"""

from __future__ import annotations

import http.client
import logging
import os
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

log = logging.getLogger(__name__)

RETRYABLE_STATUS = {408, 425, 429, 500, 502, 503, 504}
CHUNK = 1 << 20


class DownloadError(Exception):
    """A download that failed for good; the message names the URL and the reason."""


@dataclass
class RetryPolicy:
    retries: int = 5
    backoff: float = 2.0  # seconds before the first retry, doubled each time
    max_backoff: float = 60.0
    timeout: float = 60.0

    def delay(self, attempt: int) -> float:
        return min(self.max_backoff, self.backoff * 2**attempt)


def partial_path(dest: Path) -> Path:
    return dest.parent / f".{dest.name}.partial"


class _RedirectHandler(urllib.request.HTTPRedirectHandler):
    """Follow redirects keeping HEAD a HEAD, and never forward the token to another host (e.g. a CDN)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None:
            if req.get_method() == "HEAD":
                new.method = "HEAD"
            if urllib.parse.urlsplit(newurl).netloc != urllib.parse.urlsplit(req.full_url).netloc:
                new.remove_header("Authorization")
        return new


_OPENER = urllib.request.build_opener(_RedirectHandler)


def _request(url: str, timeout: float, method: str = "GET", start: int = 0, token: str | None = None):
    headers = {"User-Agent": "mindone-laion-tools/1.0"}
    if start:
        headers["Range"] = f"bytes={start}-"
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return _OPENER.open(urllib.request.Request(url, headers=headers, method=method), timeout=timeout)


def remote_size(url: str, timeout: float, token: str | None = None) -> int | None:
    """Content-Length from a HEAD request (None if the server does not say)."""
    with _request(url, timeout, "HEAD", token=token) as resp:
        length = resp.headers.get("Content-Length")
        return int(length) if length is not None else None


def _is_transient(err: BaseException) -> bool:
    if isinstance(err, urllib.error.HTTPError):
        return err.code in RETRYABLE_STATUS
    return isinstance(err, (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError,
                            http.client.HTTPException, OSError))


def _describe(err: BaseException) -> str:
    if isinstance(err, urllib.error.HTTPError):
        return f"HTTP {err.code} {err.reason}"
    return f"{type(err).__name__}: {err}"


def download_file(url: str, dest: str | os.PathLike, policy: RetryPolicy | None = None, progress: bool = True,
                  position: int | None = None, token: str | None = None) -> str:
    """Download ``url`` to ``dest``; returns ``"skipped"``, ``"downloaded"`` or ``"resumed"``.

    ``token`` is sent as ``Authorization: Bearer`` (gated Hugging Face datasets), never to another host.

    Raises DownloadError when the server refuses the file or the retries are exhausted.
    """
    policy = policy or RetryPolicy()
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(dest)
    size: int | None = None
    resumed = False
    for attempt in range(policy.retries + 1):
        try:
            if size is None:
                size = remote_size(url, policy.timeout, token)
            if dest.exists() and (size is None or dest.stat().st_size == size):
                return "skipped"
            if dest.exists():
                log.warning("%s: size %d differs from the server's %d, downloading again", dest,
                            dest.stat().st_size, size)
            start = tmp.stat().st_size if tmp.exists() else 0
            if size is not None and start > size:
                start = 0
            resumed |= start > 0
            if size is None or start < size:
                _fetch(url, tmp, start, size, policy.timeout, progress, dest.name, position, token)
            got = tmp.stat().st_size
            if size is not None and got != size:
                raise http.client.IncompleteRead(b"", size - got)
            os.replace(tmp, dest)
            return "resumed" if resumed else "downloaded"
        except BaseException as err:  # noqa: B902 - classified below
            if isinstance(err, KeyboardInterrupt) or not _is_transient(err):
                if isinstance(err, KeyboardInterrupt):
                    raise
                raise DownloadError(f"{url}: {_describe(err)}") from None
            if attempt == policy.retries:
                raise DownloadError(f"{url}: {_describe(err)} (gave up after {policy.retries} retries)") from None
            wait = policy.delay(attempt)
            log.warning("%s: %s; retry %d/%d in %.1f s", url, _describe(err), attempt + 1, policy.retries, wait)
            time.sleep(wait)
    raise AssertionError("unreachable")


def _fetch(url: str, tmp: Path, start: int, size: int | None, timeout: float, progress: bool, name: str,
           position: int | None, token: str | None) -> None:
    """Append the bytes from ``start`` to ``tmp`` (restarting from 0 if the server ignores the Range)."""
    with _request(url, timeout, start=start, token=token) as resp:
        if start and resp.status != 206:
            log.info("%s: server ignored the Range request, restarting from 0", url)
            start = 0
        mode = "ab" if start else "wb"
        with open(tmp, mode) as out, tqdm(total=size, initial=start, unit="B", unit_scale=True, desc=name,
                                          disable=not progress, position=position, leave=position is None) as bar:
            while True:
                chunk = resp.read(CHUNK)
                if not chunk:
                    break
                out.write(chunk)
                bar.update(len(chunk))
            out.flush()
            os.fsync(out.fileno())
