"""Where annotation data may point: turning csv values into shard locations and image paths.

The trust rule (docs/security.md): flags and the user's own config files are trusted; every value read
from an annotation csv is data. Data chooses which bytes are read, inside the places the user named; it
never chooses a command, and never a place outside them unless the user allows it.

A **root** is a place the user named:

- by default, the folder of the csv that lists the value;
- for webdataset shards, ``--shard_root`` when given: a local folder, an ``http(s)://`` URL prefix, or a
  template holding ``{}`` where the shard's relative path goes, e.g. ``pipe:aws s3 cp s3://b/laion/{} -``
  or ``https://host/laion/{}?token=...``. A ``pipe:`` root must be a template (the command is the user's;
  only the path comes from the csv).

A csv **value** is resolved against its root by these rules, in order:

1. A ``pipe:`` value is always refused: commands come from the user, never from data.
2. A value with a URL scheme (``http://``, ``s3://``, ``file://``...) is refused, unless it lies under the
   user's own ``http(s)`` root prefix.
3. An absolute path is accepted only inside a local root.
4. A relative path is normalised; one that climbs out of its root with ``..`` is refused.
5. Placed into a template, the path is quoted for the shell (``pipe:``) or percent-encoded (URL), so
   ``x.tar; touch PWNED`` stays one odd file name.
6. Local files are checked again when opened (:func:`inside_root`): a symlink whose target lies
   outside the root is not followed.

``allow_outside_root=True`` (``--allow_outside_data_root``) lifts rules 2, 3, 4 and 6 for users whose csvs
deliberately name other places; rule 1 always holds and rule 5 always applies.
"""

from __future__ import annotations

import os
import re
import shlex
import urllib.parse
from dataclasses import dataclass

from mindone.errors import DataError

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_HTTP = ("http://", "https://")
OUTSIDE_FLAG = "--allow_outside_data_root"


class UnsafeLocation(DataError):
    """A csv value that would run a command or leave the place the user named; one line naming the row."""


@dataclass(frozen=True)
class Root:
    """A place the user named; ``kind`` is ``local``, ``http`` (URL prefix) or ``template`` (holds ``{}``)."""

    text: str
    kind: str

    @classmethod
    def parse(cls, text: str, *, flag: str = "--shard_root") -> "Root":
        """A root from a trusted string (a flag, or a csv's folder); refuses roots no reader can open."""
        if "{}" in text:
            return cls(text, "template")
        if text.startswith("pipe:"):
            raise UnsafeLocation(f"{flag} {text!r}: a pipe: command needs {{}} where the shard path goes, "
                                 "e.g. 'pipe:aws s3 cp s3://bucket/laion/{} -'")
        if text.startswith(_HTTP):
            return cls(text.rstrip("/") + "/", "http")
        if _SCHEME.match(text) and not os.path.exists(text):
            raise UnsafeLocation(f"{flag} {text!r}: cannot read {text.split(':', 1)[0]}: URLs directly; use a "
                                 "pipe: template, e.g. 'pipe:aws s3 cp s3://bucket/laion/{} -'")
        return cls(os.path.realpath(os.path.expanduser(text)), "local")

    def resolve(self, value: str, *, where: str, allow_outside_root: bool = False) -> str:
        """The location of csv ``value`` (``where`` names the csv and row for the error line)."""
        if self.kind == "local" and ".." not in value and ":" not in value and not value.startswith("/"):
            return os.path.join(self.text, value)  # the common case, millions of times: plainly inside
        if value.startswith("pipe:"):
            raise UnsafeLocation(f"{where}: {value[:60]!r} is a command; commands come only from --shard_root "
                                 "(see docs/security.md)")
        if _SCHEME.match(value) and not _is_windows_drive(value):
            if value.startswith("file://"):
                return self._local_absolute(value[7:], where=where, allow_outside_root=allow_outside_root)
            if allow_outside_root and value.startswith(_HTTP):
                return value
            if self.kind == "http" and value.startswith(self.text):
                return value
            raise UnsafeLocation(f"{where}: URL {value[:80]!r} is outside the data root {self.text!r} "
                                 f"(pass {OUTSIDE_FLAG} to read it)")
        if os.path.isabs(value):
            return self._local_absolute(value, where=where, allow_outside_root=allow_outside_root)
        relative = _normalised_relative(value)
        if relative is None and not allow_outside_root:
            raise UnsafeLocation(f"{where}: path {value[:80]!r} climbs out of the data root {self.text!r} "
                                 f"(pass {OUTSIDE_FLAG} to read it)")
        relative = relative if relative is not None else value
        if self.kind == "template":
            quote = shlex.quote if self.text.startswith("pipe:") else _url_quote
            return self.text.replace("{}", quote(relative))
        if self.kind == "http":
            return self.text + _url_quote(relative)
        return os.path.join(self.text, relative)

    def _local_absolute(self, path: str, *, where: str, allow_outside_root: bool) -> str:
        if allow_outside_root or (self.kind == "local" and is_under(os.path.normpath(path), self.text)):
            return path
        raise UnsafeLocation(f"{where}: path {path[:80]!r} is outside the data root {self.text!r} "
                             f"(pass {OUTSIDE_FLAG} to read it)")


def _is_windows_drive(value: str) -> bool:
    return len(value) > 2 and value[1] == ":" and value[2] in "\\/"


def _url_quote(path: str) -> str:
    return urllib.parse.quote(path, safe="/")


def _normalised_relative(value: str) -> str | None:
    """``value`` without ``.`` / empty parts; None when ``..`` would leave the root."""
    parts: list[str] = []
    for part in value.replace("\\", "/").split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                return None
            parts.pop()
        else:
            parts.append(part)
    return "/".join(parts)


def is_under(path: str, root: str) -> bool:
    """True when ``path`` is ``root`` or lies below it (both already normalised, no symlink resolution)."""
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def inside_root(path: str, root: str) -> bool:
    """True when the file ``path`` opens lies inside ``root`` after resolving symlinks (rule 6)."""
    return is_under(os.path.realpath(path), os.path.realpath(root))
