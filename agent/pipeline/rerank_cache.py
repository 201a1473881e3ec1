"""Reranked lists on disk, so an interrupted evaluation resumes where it stopped.

Keyed by everything that shapes an answer: the reranker's description (kind, model, adapter,
parameters, template hash), the history shown, the profile text and the candidate order.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from agent.rerank.base import RerankRequest, RerankResult
from agent.sqlite_store import SQLiteStore


def rerank_cache_key(describe: dict[str, Any], request: RerankRequest) -> str:
    payload = {
        "reranker": describe,
        "history": request.history_ids,
        "profile": request.profile,
        "candidates": request.candidate_ids,
        "domain": request.domain,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()


class RerankCache(SQLiteStore):
    """``key -> RerankResult`` JSON in one sqlite file; each ``put_many`` commits at once."""

    def __init__(self, cache_dir: Path) -> None:
        super().__init__(
            cache_dir,
            "rerank.sqlite",
            "reranked",
            "CREATE TABLE IF NOT EXISTS reranked ("
            " key TEXT PRIMARY KEY, user_id TEXT NOT NULL, result TEXT NOT NULL, created REAL)",
        )

    def get(self, key: str) -> RerankResult | None:
        row = self._db.execute("SELECT result FROM reranked WHERE key = ?", (key,)).fetchone()
        return RerankResult.model_validate_json(row[0]) if row else None

    def put_many(self, rows: list[tuple[str, RerankResult]]) -> None:
        now = time.time()
        self._db.executemany(
            "INSERT OR REPLACE INTO reranked (key, user_id, result, created) VALUES (?, ?, ?, ?)",
            [(key, r.user_id, r.model_dump_json(), now) for key, r in rows],
        )
        self._db.commit()
