"""Optional bearer API keys: from ``serve.api_keys`` (or the env, ``RECBRIDGE_SERVE__API_KEYS``)
and ``serve.api_keys_file``. No key configured = an open server. Keys are never logged."""

from __future__ import annotations

import hmac
from pathlib import Path

from agent.config import ConfigError, ServeSettings


def load_keys(serve: ServeSettings) -> list[str]:
    keys = [k.strip() for k in serve.api_keys if k.strip()]
    path: Path | None = serve.api_keys_file
    if path is not None:
        if not path.is_file():
            raise ConfigError(f"serve.api_keys_file {path}: not found")
        for line in path.read_text(encoding="utf-8").splitlines():
            key = line.split("#", 1)[0].strip()
            if key:
                keys.append(key)
    return keys


def bearer_ok(header: str | None, keys: list[str]) -> bool:
    """``Authorization: Bearer <key>`` with one of ``keys`` (constant-time compare)."""
    if not keys:
        return True
    if not header or not header.lower().startswith("bearer "):
        return False
    given = header[7:].strip().encode()
    return any(hmac.compare_digest(given, key.encode()) for key in keys)
