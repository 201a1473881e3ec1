"""Profile trees in sqlite, keyed by everything that shapes them, so a re-run costs no LLM call.

The key hashes the user's history ids, the templates' content hashes, backend, model, adapter,
the grouping parameters (with the cluster labels' digest) and the generation limits: change
any of them and the entry is simply not found (old entries stay, harmless).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from agent.profiles.schema import ProfileTree
from agent.sqlite_store import SQLiteStore


def profile_cache_key(
    history: Sequence[str],
    template_hashes: Mapping[str, str],
    *,
    backend: str,
    model: str,
    adapter: str | None,
    params: Mapping[str, Any],
) -> str:
    payload = {
        "history": list(history),
        "templates": dict(sorted(template_hashes.items())),
        "backend": backend,
        "model": model,
        "adapter": adapter,
        "params": dict(sorted(params.items())),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()


class ProfileCache(SQLiteStore):
    """``key -> ProfileTree`` JSON in one sqlite file; each ``put`` is committed at once."""

    def __init__(self, cache_dir: Path) -> None:
        super().__init__(
            cache_dir,
            "profiles.sqlite",
            "profiles",
            "CREATE TABLE IF NOT EXISTS profiles ("
            " key TEXT PRIMARY KEY, user_id TEXT NOT NULL, tree TEXT NOT NULL, created REAL)",
        )

    def get(self, key: str) -> ProfileTree | None:
        row = self._db.execute("SELECT tree FROM profiles WHERE key = ?", (key,)).fetchone()
        return ProfileTree.model_validate_json(row[0]) if row else None

    def put(self, tree: ProfileTree) -> None:
        if not tree.cache_key:
            raise ValueError(f"profile tree of user {tree.user_id} has no cache key")
        self._db.execute(
            "INSERT OR REPLACE INTO profiles (key, user_id, tree, created) VALUES (?, ?, ?, ?)",
            (tree.cache_key, tree.user_id, tree.model_dump_json(), time.time()),
        )
        self._db.commit()
