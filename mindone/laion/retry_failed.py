"""Which failed img2dataset rows to download again (``laion_download_imgs.sh N --retry_failed``).

This module is pure: it decides from the status rows img2dataset wrote, never touches the network or the
disk. :mod:`mindone.laion.retry_round` reads the part folder, runs the round and publishes its shards.

**Error classes.** img2dataset records one ``error_message`` per failed row: ``str()`` of the exception
urllib raised (``HTTP Error 503: Service Unavailable``, ``timed out``, ``<urlopen error [Errno -3]
Temporary failure in name resolution>``, ``<urlopen error [SSL: CERTIFICATE_VERIFY_FAILED] ...>``,
``IncompleteRead(10 bytes read, 90 more expected)``), or its own words (``Use of image disallowed by
X-Robots-Tag directive``, ``hash mismatch``), and for rows whose bytes arrived but could not be used,
status ``failed_to_resize`` with the resizer's message (``Image decoding error``, ``image too small``,
``image area too large``, ``aspect ratio too large``, a cv2 error). :func:`classify` maps (status, message)
to one class of :data:`ERROR_CLASSES`; the first matching rule wins, in this order:

- status ``success``: ``success``; status ``failed_to_resize``: ``decode`` for a decoding error, else
  ``resize`` (the bytes were served; only other resize settings could change the outcome).
- ``HTTP Error <code>``: 408 is ``timeout``, 429 ``http_429``, 5xx ``http_5xx``, 403 ``http_403``, 404
  ``http_404``, 410 ``http_410``, any other 4xx ``http_4xx``, anything else (a 3xx urllib did not follow)
  ``http_other``.
- ``timeout``: "timed out" anywhere (connect, read, TLS handshake).
- ``ssl``: a TLS failure (``[SSL: ...]``, ``_ssl.c``, "certificate verify failed").
- ``dns``: name resolution (``[Errno -2]``/``-3``/``-5``, "Name or service not known", "Temporary failure
  in name resolution", "No address associated with hostname", "getaddrinfo failed").
- ``connection``: refused, reset, aborted, broken pipe, no route, network unreachable, "Remote end closed
  connection without response", ``IncompleteRead`` (the body stopped short).
- ``disallowed`` (X-Robots-Tag), ``hash_mismatch``, ``invalid_url`` (unknown url type, no host given,
  invalid IPv6 URL, control characters, a ``file://`` path), else ``other``.

**Retried by default** (:data:`DEFAULT_RETRY_ERRORS`): ``timeout, http_5xx, http_429, connection, dns,
ssl``: failures of the moment (an overloaded host, a rate limit, a resolver under load, a certificate that
``--insecure_ssl`` now accepts). Permanent by default: 403/404/410 and other 4xx (the link is gone or
refused), ``disallowed``, ``hash_mismatch``, ``invalid_url``, ``decode``/``resize`` and ``other``. Any
class can be chosen with ``--retry_errors`` (``default`` stands for the default list, ``all`` for every
failure class), e.g. ``--retry_errors default,resize`` after lowering ``--min_image_size``.

**Identity and latest status.** A row is identified across rounds by the key img2dataset gave it in the
part's first download (its *identity*). A retry round's input carries that key in a column
``retry_of``, which img2dataset copies into the round's shard parquet (and each sample's json). So every
record of a part folder is ``(identity, shard id, status, error_message)``: ``identity`` is ``retry_of``
where set, else ``key``. Rounds write shards numbered after every existing one, so a row's *latest*
record is the one in its highest shard: :class:`RetryPlan` keeps that one per identity. The url is not the
identity on purpose: LAION holds the same url under several rows (other captions), and each row is
downloaded, and retried, on its own.

**The plan.** Candidates are the identities whose latest record is a failure of a class to retry, in
identity order. A row whose latest record is ``success`` is never a candidate, so nothing is downloaded
twice; a row that failed again in a retry round is a candidate again while its class is retried.
:meth:`RetryPlan.counts` gives the per-class table (``success`` first, then every class of
:data:`ERROR_CLASSES`, zeros included) that the report shows before and after a round.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import pandas as pd

from mindone.errors import ConfigError, DataError

SUCCESS = "success"

# class -> (retried by default, what it is)
ERROR_CLASSES: dict[str, tuple[bool, str]] = {
    "timeout": (True, "no answer in --timeout seconds (connect, TLS handshake or read), or HTTP 408"),
    "http_5xx": (True, "the server failed (500, 502, 503, 504, ...)"),
    "http_429": (True, "rate limited (429 Too Many Requests)"),
    "connection": (True, "connection refused, reset or closed early; body cut short (IncompleteRead)"),
    "dns": (True, "host name not resolved (resolver overloaded, or the domain is gone)"),
    "ssl": (True, "TLS failure, e.g. a certificate that does not verify (retry with --insecure_ssl)"),
    "http_403": (False, "403 Forbidden"),
    "http_404": (False, "404 Not Found"),
    "http_410": (False, "410 Gone"),
    "http_4xx": (False, "any other 4xx (400, 401, 451, ...)"),
    "http_other": (False, "any other HTTP status urllib raised (a redirect it did not follow)"),
    "disallowed": (False, "refused by an X-Robots-Tag directive (noai, ...)"),
    "hash_mismatch": (False, "the bytes do not match the metadata's hash (--verify_hash)"),
    "invalid_url": (False, "not a URL img2dataset can fetch"),
    "decode": (False, "the bytes are not an image (failed_to_resize: Image decoding error)"),
    "resize": (False, "failed_to_resize: too small, area or aspect ratio too large, other resizer errors"),
    "other": (False, "any message not recognised above"),
}
DEFAULT_RETRY_ERRORS: tuple[str, ...] = tuple(name for name, (default, _) in ERROR_CLASSES.items() if default)
TABLE_CLASSES: tuple[str, ...] = (SUCCESS, *ERROR_CLASSES)
RETRY_OF = "retry_of"  # the column carrying a retried row's identity

_HTTP = re.compile(r"HTTP Error (\d{3})")
_RULES: list[tuple[str, re.Pattern]] = [
    ("timeout", re.compile(r"timed out", re.I)),
    ("ssl", re.compile(r"\[SSL|_ssl\.c|certificate verify failed|SSLError|SSL:", re.I)),
    ("dns", re.compile(r"\[Errno -[235]\]|Name or service not known|name resolution|No address associated|"
                       r"getaddrinfo failed|nodename nor servname", re.I)),
    ("connection", re.compile(r"Connection (refused|reset|aborted)|Broken pipe|No route to host|Network is "
                              r"unreachable|Remote end closed|IncompleteRead|RemoteDisconnected|"
                              r"ConnectionResetError", re.I)),
    ("disallowed", re.compile(r"X-Robots-Tag", re.I)),
    ("hash_mismatch", re.compile(r"hash mismatch", re.I)),
    ("invalid_url", re.compile(r"unknown url type|no host given|Invalid IPv6 URL|control characters|"
                               r"No such file or directory|Errno 2\]", re.I)),
]


class RetryFailedError(DataError):
    """A part folder ``--retry_failed`` cannot work on; one line naming the folder and what is wrong."""


def classify(status: str | None, error_message: str | None) -> str:
    """The class of one img2dataset row (see the module docstring): ``success`` or a key of ERROR_CLASSES."""
    if status == SUCCESS:
        return SUCCESS
    message = error_message or ""
    if status == "failed_to_resize":
        return "decode" if "decoding error" in message.lower() else "resize"
    http = _HTTP.search(message)
    if http:
        code = int(http.group(1))
        if code == 408:
            return "timeout"
        if code == 429:
            return "http_429"
        if 500 <= code <= 599:
            return "http_5xx"
        if code in (403, 404, 410):
            return f"http_{code}"
        return "http_4xx" if 400 <= code <= 499 else "http_other"
    for name, pattern in _RULES:
        if pattern.search(message):
            return name
    return "other"


def parse_retry_errors(text: str | Sequence[str]) -> frozenset[str]:
    """``"timeout,http_5xx"`` (or a list of such strings) -> the classes to retry; ``default`` and ``all``
    expand; an unknown name is a ConfigError listing the known ones."""
    items = [text] if isinstance(text, str) else list(text)
    names = [name.strip() for item in items for name in str(item).split(",") if name.strip()]
    chosen: set[str] = set()
    for name in names:
        if name == "default":
            chosen.update(DEFAULT_RETRY_ERRORS)
        elif name == "all":
            chosen.update(ERROR_CLASSES)
        elif name in ERROR_CLASSES:
            chosen.add(name)
        else:
            raise ConfigError(f"--retry_errors: unknown error class {name!r} (known: default, all, "
                              f"{', '.join(ERROR_CLASSES)})")
    if not chosen:
        raise ConfigError("--retry_errors: no error class given (e.g. default, or timeout,http_5xx)")
    return frozenset(chosen)


RECORD_COLUMNS = ("identity", "shard", "status", "error_message")


@dataclass(frozen=True)
class RetryPlan:
    """The latest record of every row of a part, and the rows a round should download again.

    ``records``: a DataFrame with columns :data:`RECORD_COLUMNS` (one per row per round the row was in);
    ``retry``: the classes to retry. Build with :meth:`from_records`.
    """

    latest: pd.DataFrame  # one row per identity: identity, shard, status, error_message, class
    retry: frozenset[str]

    @classmethod
    def from_records(cls, records: pd.DataFrame, retry: Iterable[str]) -> "RetryPlan":
        missing = [c for c in RECORD_COLUMNS if c not in records.columns]
        if missing:
            raise ValueError(f"records lack columns {missing}")
        latest = (records.loc[:, list(RECORD_COLUMNS)].sort_values(["shard"], kind="stable")
                  .drop_duplicates("identity", keep="last").sort_values("identity", kind="stable")
                  .reset_index(drop=True))  # fmt: skip
        pairs = latest[["status", "error_message"]].astype(object).where(latest[["status", "error_message"]].notna(), None)
        memo: dict[tuple, str] = {}  # a part has few distinct messages: classify each once
        classes = [memo.setdefault(key, classify(*key)) for key in zip(pairs["status"], pairs["error_message"])]
        latest["class"] = pd.Series(classes, index=latest.index, dtype=object)
        return cls(latest=latest, retry=frozenset(retry))

    @property
    def candidates(self) -> list[str]:
        """Identities to download again: latest record a failure of a retried class, in identity order."""
        chosen = self.latest["class"].isin(sorted(self.retry)) & (self.latest["class"] != SUCCESS)
        return self.latest.loc[chosen, "identity"].tolist()

    @property
    def rows(self) -> int:
        return len(self.latest)

    def counts(self) -> dict[str, int]:
        """Rows per class of their latest record: ``success`` then every error class, zeros included."""
        found = self.latest["class"].value_counts().to_dict()
        return {name: int(found.get(name, 0)) for name in TABLE_CLASSES}


def format_table(before: Mapping[str, int], after: Mapping[str, int] | None, retry: Iterable[str]) -> str:
    """The per-class table a run prints: class, retried or not, rows before and after the round.

    Classes with no row before or after are left out; ``after`` None (no round ran) repeats ``before``.
    """
    after = before if after is None else after
    retry = set(retry)
    lines = [f"{'class':<14} {'retried':>7} {'before':>8} {'after':>8}"]
    for name in TABLE_CLASSES:
        if before.get(name, 0) or after.get(name, 0):
            flag = "-" if name == SUCCESS else ("yes" if name in retry else "no")
            lines.append(f"{name:<14} {flag:>7} {before.get(name, 0):>8} {after.get(name, 0):>8}")
    lines.append(f"{'total':<14} {'':>7} {sum(before.values()):>8} {sum(after.values()):>8}")
    return "\n".join(lines)


def first_free_shard(names: Iterable[str], expected: int | None) -> int:
    """The first shard id a new round may use: after every numbered entry of the part folder (finished or
    not) and after the shards the part's first download is due to write (``expected``, when known)."""
    used = [int(name) for name in names if name.isdigit()]
    return max([*used, (expected or 0) - 1, -1]) + 1
