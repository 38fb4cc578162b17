"""Captions: where to find them in a sample, and clean-up (mojibake, HTML entities, whitespace)."""

from __future__ import annotations

import html
import json
import re

import ftfy

_WHITESPACE = re.compile(r"\s+")


def clean_caption(text: str) -> str:
    """Fix mojibake (ftfy), unescape HTML entities, collapse whitespace."""
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text))
    return _WHITESPACE.sub(" ", text).strip()


def parse_meta(data: bytes | None) -> dict | None:
    """The per-sample json (img2dataset's ``{key}.json``), or None when absent or not a json object."""
    if not data:
        return None
    try:
        meta = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    return meta if isinstance(meta, dict) else None


def caption_of(txt: bytes | None, meta: dict | None) -> str | None:
    """Caption from the ``.txt`` member, else the json ``caption``; None when neither has text."""
    if txt is not None:
        text = txt.decode("utf-8", errors="replace")
        if text.strip():
            return text
    if meta is not None:
        caption = meta.get("caption")
        if isinstance(caption, str) and caption.strip():
            return caption
    return None
