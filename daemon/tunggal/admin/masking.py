"""Secrets out of anything printed: `tunggal config show` is pasted into tickets and chats."""

from __future__ import annotations

import re
from typing import Any, Final

from tunggal.connectors import SECRET_KEYS

MASK: Final = "********"
# postgresql://user:pw@host -> postgresql://user:********@host (any scheme: kafka, http, ...)
_URL_PASSWORD: Final = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*:)[^@\s]*(?=@)")
# libpq keyword strings and URL queries: password=pw, ...&password=pw
_KEYWORD_PASSWORD: Final = re.compile(r"(?P<head>\b(?:password|sslpassword)\s*=\s*)[^&\s]+", re.I)


def mask_text(text: str) -> str:
    text = _URL_PASSWORD.sub(lambda m: m.group("head") + MASK, text)
    return _KEYWORD_PASSWORD.sub(lambda m: m.group("head") + MASK, text)


def mask_tree(node: Any, key: str = "") -> Any:
    """A copy of a JSON-like tree with secret-named values and passwords inside URLs masked."""
    if isinstance(node, dict):
        return {k: mask_tree(v, str(k)) for k, v in node.items()}
    if isinstance(node, list | tuple):
        return [mask_tree(v, key) for v in node]
    if node not in (None, "") and any(word in key.lower() for word in SECRET_KEYS):
        return MASK
    if isinstance(node, str):
        return mask_text(node)
    return node
