"""Reranked lists on disk, so an interrupted evaluation resumes where it stopped.

Keyed by everything that shapes an answer: the reranker's description (kind, model, adapter,
parameters, template hash), the history shown, the profile text and the candidate order.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from agent.rerank.base import RerankRequest, RerankResult


def rerank_cache_key(describe: dict[str, Any], request: RerankRequest) -> str:
    payload = {
        "reranker": describe,
        "history": request.history_ids,
        "profile": request.profile,
        "candidates": request.candidate_ids,
        "domain": request.domain,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()


class RerankCache:
    """``key -> RerankResult`` JSON in one sqlite file; each ``put_many`` commits at once."""

    def __init__(self, cache_dir: Path) -> None:
        cache_dir.mkdir(parents=True, exist_ok=True)
        self.path = cache_dir / "rerank.sqlite"
        self._db = sqlite3.connect(self.path)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS reranked ("
            " key TEXT PRIMARY KEY, user_id TEXT NOT NULL, result TEXT NOT NULL, created REAL)"
        )
        self._db.commit()

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

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM reranked").fetchone()[0])

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> RerankCache:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
