"""Profiles for the reranker's prompt: from the profile cache, computed when missing.

The cache key covers the history (not the user id), templates, model, adapter and parameters,
so a profile made by ``recbridge profile`` for a user's test history is found again here, and a
raw history (``recommend --history``) is profiled like any user.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from agent.config import Settings
from agent.data.schema import Dataset, UserSequence
from agent.llm.backend import LLMBackend
from agent.profiles.cache import ProfileCache
from agent.profiles.profiler import HierarchicalProfiler, ProfileRunStats
from agent.profiles.schema import ProfileTree

log = logging.getLogger(__name__)


def history_user(history: Sequence[str], user_id: str | None = None) -> UserSequence:
    """A user made of a history alone (split "train": every item is history, none held out)."""
    uid = user_id or "history-" + hashlib.sha256("\n".join(history).encode()).hexdigest()[:12]
    return UserSequence(user_id=uid, split="train", items=tuple(history))


@dataclass
class ProfileSource:
    """Profile trees for histories; misses are profiled with the LLM in one batch and cached."""

    backend: LLMBackend
    data: Dataset
    settings: Settings
    cache: ProfileCache
    embeddings: np.ndarray | None = None
    adapter: str | None = None
    stats: ProfileRunStats = field(default_factory=ProfileRunStats)
    _profiler: HierarchicalProfiler | None = None

    @property
    def profiler(self) -> HierarchicalProfiler:
        if self._profiler is None:
            self._profiler = HierarchicalProfiler(
                self.backend,
                self.data,
                self.settings,
                embeddings=self.embeddings,
                adapter=self.adapter or self.settings.profile.adapter,
                cache=self.cache,
            )
        return self._profiler

    async def atrees(
        self, users: Sequence[UserSequence]
    ) -> tuple[list[ProfileTree | None], ProfileRunStats]:
        """One tree per user (cached or new; None where profiling failed, logged) and this
        call's counts (also added to ``stats``)."""
        results, stats = await self.profiler.aprofile_users(users)
        self.stats.merge(stats)
        for result in results:
            if result.tree is None:
                log.warning("no profile for user %s: %s", result.user_id, result.error)
        return [r.tree for r in results], stats
