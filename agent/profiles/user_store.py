"""Cross-domain profiles in a Chroma ``users`` collection: the profile text embedded with the
item embedder (same vector space as the items, so users can query items and vice versa)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from chromadb.api import ClientAPI
from chromadb.api.models.Collection import Collection
from chromadb.api.types import Metadata

from agent.config import Settings
from agent.items.embedder import Embedder
from agent.profiles.schema import Profile, ProfileTree
from agent.store.chroma_store import collection_name

log = logging.getLogger(__name__)


def profile_text(profile: Profile) -> str:
    """The text a profile is embedded as: the summary plus its likes and themes."""
    parts = [profile.summary.strip()]
    if profile.preferences:
        parts.append("Likes: " + "; ".join(profile.preferences))
    if profile.cross_domain_themes:
        parts.append("Themes: " + "; ".join(profile.cross_domain_themes))
    return " ".join(parts)


class UserStore:
    """One collection per (profile.users_collection, embedder model id); ids are user ids."""

    def __init__(self, client: ClientAPI, settings: Settings, embedder: Embedder) -> None:
        self.client = client
        self.embedder = embedder
        self.name = collection_name(settings.profile.users_collection, embedder.model_id)
        self._collection: Collection | None = None

    @property
    def collection(self) -> Collection:
        if self._collection is None:
            self._collection = self.client.get_or_create_collection(
                self.name,
                embedding_function=None,  # we pass vectors; the default would download a model
                configuration={"hnsw": {"space": "cosine"}},
                metadata={"model_id": self.embedder.model_id, "kind": "user-profiles"},
            )
        return self._collection

    def upsert(self, trees: Sequence[ProfileTree]) -> int:
        if not trees:
            return 0
        texts = [profile_text(t.profile) for t in trees]
        vectors = self.embedder.embed(texts)
        metadatas: list[Metadata] = [
            {
                "split": t.split,
                "domains": ",".join(d.domain for d in t.domains),
                "history_len": t.history_len,
                "backend": t.backend,
                "model": t.model,
                "adapter": t.adapter or "",
                "fallback": t.call.fallback,
                "fallbacks": t.fallbacks,
                "cache_key": t.cache_key,
            }
            for t in trees
        ]
        self.collection.upsert(
            ids=[t.user_id for t in trees],
            embeddings=vectors,
            documents=texts,
            metadatas=metadatas,
        )
        log.debug("users collection %s: upserted %d profiles", self.name, len(trees))
        return len(trees)

    def count(self) -> int:
        return self.collection.count()
