"""What the store never keeps: passwords in URLs and settings named like secrets.

Every run's config snapshot goes through ``redact_settings`` before it is written, and reports pass
what they read from the store through it again (runs recorded before this existed may hold a
password). Error messages name a URL with ``display_url``.

The rule for names (``is_secret_name``), on the last dotted part of a setting's path, split into
words at ``_``, ``-``, any other non-alphanumeric and camelCase boundaries, case ignored:

- a word that ends with ``password``, ``passwd``, ``passphrase``, ``secret`` or ``token`` (``db_password``,
  ``api_secret``, ``hf_token``, ``authtoken``; not ``max_tokens``, ``tokenizer`` or ``secretary``);
- or the last word is ``key`` or ends with ``apikey`` (``api_key``, ``secret_key``, ``llm.remote_key``,
  ``apiKey``; not ``num_key_value_heads``, ``keys``, ``monkey`` or ``data.cache_dir``).

A secret setting's value becomes ``"***"``, unless it is empty (``""`` or null says "not set", which
a reader may need to know). Any other string that is a URL with a password keeps the URL and loses
the password. No key of today's ``config.toml`` matches (a test holds that); API keys for live
trading come from the environment only and never reach the config.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

HIDDEN = "***"
_SECRET_ENDINGS = ("password", "passwd", "passphrase", "secret", "token")
_WORDS = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")
_USERINFO = re.compile(r"(://[^:/@]*:)[^@]*@")


def is_secret_name(name: str) -> bool:
    """True when a setting's name says it holds a password, secret, token or key (rule above)."""
    words = [w.lower() for w in _WORDS.findall(name.rsplit(".", 1)[-1])]
    if not words:
        return False
    return any(w.endswith(_SECRET_ENDINGS) for w in words) or words[-1] == "key" or words[-1].endswith("apikey")


def display_url(text: str) -> str:
    """``text`` with the password of a URL in it replaced by ``***``; never raises. A database URL is
    read as SQLAlchemy reads it (a password may hold ``/``), a web URL as ``urllib`` does."""
    if "://" not in text:
        return text
    if text.split("://", 1)[0].lower() in ("http", "https", "ws", "wss", "ftp"):
        try:
            parts = urlsplit(text)
        except ValueError:
            return _USERINFO.sub(rf"\1{HIDDEN}@", text)
        if parts.password is None:
            return text
        host = parts.netloc.rsplit("@", 1)[1]
        return urlunsplit(parts._replace(netloc=f"{parts.username}:{HIDDEN}@{host}"))
    from sqlalchemy import exc as sa_exc
    from sqlalchemy.engine import make_url

    try:
        url = make_url(text)
    except (sa_exc.ArgumentError, ValueError):
        return _USERINFO.sub(rf"\1{HIDDEN}@", text)
    return text if url.password is None else url.render_as_string(hide_password=True)


def redact_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a (nested) settings mapping with secret settings blanked and URL passwords hidden."""
    return {key: HIDDEN if is_secret_name(str(key)) and value not in ("", None) else _redact_value(value)
            for key, value in settings.items()}


def _redact_value(value: Any) -> Any:
    if isinstance(value, Mapping):
        return redact_settings(value)
    if isinstance(value, str):
        return display_url(value)
    if isinstance(value, list | tuple):
        return type(value)(_redact_value(v) for v in value)
    return value
