"""Resumable HTTP(S) download of one file: size check, temp name then rename, retries with backoff.

- A complete file (same size as the server's Content-Length) is skipped.
- Bytes go to ``.<name>.partial`` beside the target; the target appears (atomic rename) only once the
  whole file is there, so a half-downloaded file is never mistaken for a complete one.
- A partial file is resumed with an HTTP Range request when the server supports it; otherwise the
  download restarts from zero. The ETag / Last-Modified / size the server gave when the partial was
  started are kept in a sidecar (``.<name>.partial.json``); a resume sends ``If-Range`` with them, and
  restarts from zero instead of splicing two versions when the file changed on the server (checked
  against the HEAD answer, by the server through If-Range, and against the 206 answer's own ETag). A
  partial without a sidecar (an older version of this tool) is resumed as before.
- A mirror refusing HEAD (403, 405, 501) is asked with a GET instead, whose headers give the size and
  validators; the body of that GET is not read.
- Transient failures (connection errors, timeouts, HTTP 5xx/429, short reads) are retried with
  exponential backoff; a permanent one (404, 403...) fails at once with the URL and status.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm import tqdm

from mindone.errors import DownloadError
from mindone.utils.atomic import atomic_write_text

log = logging.getLogger(__name__)

RETRYABLE_STATUS = {408, 425, 429, 500, 502, 503, 504}
HEAD_REFUSED = {403, 405, 501}  # mirrors (S3 presigned URLs, some CDNs) that answer GET but not HEAD
CHUNK = 1 << 20


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


def validator_path(partial: Path) -> Path:
    """The sidecar recording which version of the remote file ``partial`` holds the start of."""
    return partial.with_name(partial.name + ".json")


@dataclass
class RemoteInfo:
    """What the server says about the file: total size and validators (any may be unknown)."""

    size: int | None = None
    etag: str | None = None
    last_modified: str | None = None

    @classmethod
    def from_headers(cls, headers, status: int = 200) -> "RemoteInfo":
        size = None
        if status == 206:  # Content-Length is the rest; the total is after the slash of Content-Range
            total = (headers.get("Content-Range") or "").rpartition("/")[2].strip()
            size = int(total) if total.isdigit() else None
        elif headers.get("Content-Length") is not None:
            size = int(headers["Content-Length"])
        return cls(size, headers.get("ETag"), headers.get("Last-Modified"))

    def if_range(self) -> str | None:
        """The If-Range value: a strong ETag, else Last-Modified (a weak ETag is not allowed there)."""
        if self.etag and not self.etag.startswith("W/"):
            return self.etag
        return self.last_modified

    def differs_from(self, other: "RemoteInfo") -> str | None:
        """Why ``other`` is another version of the file than this one (None: same, or cannot tell)."""
        for what, mine, theirs in (("ETag", self.etag, other.etag), ("Last-Modified", self.last_modified, other.last_modified),
                                   ("size", self.size, other.size)):  # fmt: skip
            if mine is not None and theirs is not None and mine != theirs:
                return f"{what} {mine} -> {theirs}"
        return None


def _save_validator(partial: Path, info: RemoteInfo) -> None:
    atomic_write_text(validator_path(partial), json.dumps(asdict(info)))


def _load_validator(partial: Path) -> RemoteInfo | None:
    try:
        loaded = json.loads(validator_path(partial).read_text(encoding="utf-8"))
        return RemoteInfo(**{k: loaded.get(k) for k in ("size", "etag", "last_modified")})
    except (OSError, ValueError, TypeError, AttributeError, RecursionError):
        return None


class _RemoteChanged(Exception):
    """A 206 answer for another version of the file than the partial holds (server ignored If-Range)."""


class _RedirectHandler(urllib.request.HTTPRedirectHandler):
    """Follow redirects keeping HEAD a HEAD, never forward the token to another host (e.g. a CDN), and
    follow only to http(s): urllib alone would follow a server's redirect to ``ftp://``.

    The destination file name never comes from the server (no Content-Disposition, no redirect target,
    no listing): it is the subset's file name, fixed before the request.
    """

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if urllib.parse.urlsplit(newurl).scheme.lower() not in ("http", "https"):
            raise urllib.error.HTTPError(newurl, code, f"redirect to {newurl[:200]!r} refused (not http(s))", headers, fp)
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None:
            if req.get_method() == "HEAD":
                new.method = "HEAD"
            if urllib.parse.urlsplit(newurl).netloc != urllib.parse.urlsplit(req.full_url).netloc:
                new.remove_header("Authorization")
        return new


_OPENER = urllib.request.build_opener(_RedirectHandler)


def _request(url: str, timeout: float, method: str = "GET", start: int = 0, token: str | None = None,
             if_range: str | None = None):
    headers = {"User-Agent": "mindone-laion-tools/1.0"}
    if start:
        headers["Range"] = f"bytes={start}-"
        if if_range:
            headers["If-Range"] = if_range
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return _OPENER.open(urllib.request.Request(url, headers=headers, method=method), timeout=timeout)


def remote_info(url: str, timeout: float, token: str | None = None) -> RemoteInfo:
    """Size and validators from a HEAD request, or from a GET's headers when the server refuses HEAD."""
    try:
        with _request(url, timeout, "HEAD", token=token) as resp:
            return RemoteInfo.from_headers(resp.headers)
    except urllib.error.HTTPError as err:
        if err.code not in HEAD_REFUSED:
            raise
        log.info("%s: HEAD refused (%s), asking with GET", url, _describe(err))
    with _request(url, timeout, "GET", token=token) as resp:  # headers only: closed before the body is read
        return RemoteInfo.from_headers(resp.headers, resp.status)


def remote_size(url: str, timeout: float, token: str | None = None) -> int | None:
    """Content-Length of ``url`` (None if the server does not say)."""
    return remote_info(url, timeout, token).size


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
    info: RemoteInfo | None = None
    resumed = False
    for attempt in range(policy.retries + 1):
        try:
            if info is None:
                info = remote_info(url, policy.timeout, token)
            size = info.size
            if dest.exists() and (size is None or dest.stat().st_size == size):
                return "skipped"
            if dest.exists():
                log.warning("%s: size %d differs from the server's %d, downloading again", dest,
                            dest.stat().st_size, size)
            start = tmp.stat().st_size if tmp.exists() else 0
            if start:
                recorded = _load_validator(tmp)
                changed = recorded.differs_from(info) if recorded is not None else None
                if changed:
                    log.info("%s: changed on the server since %s was started (%s), restarting from 0", url, tmp.name, changed)
                    start = 0
            if size is not None and start > size:
                start = 0
            if size is None or start < size:
                args = (url, tmp, size, policy.timeout, progress, dest.name, position, token)
                try:
                    start = _fetch(*args, start=start)
                except _RemoteChanged as err:
                    log.info("%s: %s, restarting from 0", url, err)
                    info = None  # the size asked before belongs to the old version
                    start = _fetch(*args, start=0)
            resumed |= start > 0
            got = tmp.stat().st_size
            if size is not None and got != size:
                info = None  # ask again: the file may have changed
                raise http.client.IncompleteRead(b"", size - got)
            os.replace(tmp, dest)
            validator_path(tmp).unlink(missing_ok=True)
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


def _fetch(url: str, tmp: Path, size: int | None, timeout: float, progress: bool, name: str,
           position: int | None, token: str | None, start: int) -> int:
    """Append the bytes from ``start`` to ``tmp``; returns where it really started.

    From 0, the answer's validators are recorded beside ``tmp`` first. A resume sends If-Range with the
    recorded ones: a server holding another version answers 200 with the whole file, written from 0.
    """
    recorded = _load_validator(tmp) if start else None
    if_range = recorded.if_range() if recorded is not None else None
    with _request(url, timeout, start=start, token=token, if_range=if_range) as resp:
        if start and resp.status != 206:
            why = "the file changed on the server (If-Range)" if if_range else "server ignored the Range request"
            log.info("%s: %s, restarting from 0", url, why)
            start = 0
        elif start and recorded is not None:
            changed = recorded.differs_from(RemoteInfo.from_headers(resp.headers, resp.status))
            if changed:
                raise _RemoteChanged(f"the range answered belongs to another version ({changed})")
        if not start:
            _save_validator(tmp, RemoteInfo.from_headers(resp.headers, resp.status))
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
    return start
