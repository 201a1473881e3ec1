"""LangChain where its users reach for it.

- ``RecBridgeRetriever``: a ``BaseRetriever`` over ``recbridge serve``: the query (a user id or
  a history, in the chat message format of ``agent.service.messages``) -> the recommended items
  as ``Document``s (title as content; id, domain, score, rank and reason as metadata).
- ``RecBridgeEmbeddings``: the project's item embedder (MiniLM or an OpenAI-compatible API) as
  LangChain ``Embeddings``, so queries land in the same vector space as the items.
- ``item_vectorstore``: the Chroma item collection RecBridge indexes, opened as a
  ``langchain_chroma.Chroma`` vector store (the same collection, not a copy).

For chat, LangChain's own ``ChatOpenAI`` pointed at ``recbridge serve`` works unchanged.
"""

from __future__ import annotations

from typing import Any

import httpx
from langchain_chroma import Chroma
from langchain_core.callbacks import (
    AsyncCallbackManagerForRetrieverRun,
    CallbackManagerForRetrieverRun,
)
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.retrievers import BaseRetriever

from agent.config import Settings
from agent.items.embedder import Embedder, make_embedder
from agent.service.messages import parse_message
from agent.store.chroma_store import collection_name, make_client


class RecBridgeEmbeddings(Embeddings):
    """A RecBridge ``Embedder`` as LangChain ``Embeddings`` (unit-norm float vectors)."""

    def __init__(self, embedder: Embedder) -> None:
        self.embedder = embedder

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        vectors: list[list[float]] = self.embedder.embed(list(texts)).tolist()
        return vectors

    def embed_query(self, text: str) -> list[float]:
        return self.embed_documents([text])[0]


class ItemVectorStore(Chroma):
    """``Chroma`` over RecBridge's item collection. RecBridge stores vectors and metadata (id,
    domain, title) but no document text, and ``langchain_chroma`` drops hits without text: the
    title stands in as the document's content."""

    def _Chroma__query_collection(self, *args: Any, **kwargs: Any) -> Any:
        results = super()._Chroma__query_collection(*args, **kwargs)  # type: ignore[misc]
        documents = results.get("documents")
        metadatas = results.get("metadatas")
        if documents is not None and metadatas is not None:
            results["documents"] = [
                [
                    doc if doc is not None else str((meta or {}).get("title", ""))
                    for doc, meta in zip(docs, metas, strict=True)
                ]
                for docs, metas in zip(documents, metadatas, strict=True)
            ]
        return results


def item_vectorstore(settings: Settings, embedder: Embedder | None = None) -> ItemVectorStore:
    """The item collection of ``settings`` (embedded store or ``store.url`` server) as a
    LangChain vector store; filter by domain with ``filter={"domain": "kitchen"}``."""
    embedder = embedder or make_embedder(settings)
    return ItemVectorStore(
        collection_name=collection_name(settings.store.collection, embedder.model_id),
        embedding_function=RecBridgeEmbeddings(embedder),
        client=make_client(settings),
        create_collection_if_not_exists=False,
    )


class RecBridgeRetriever(BaseRetriever):
    """Recommended items for a user or a history, from a running ``recbridge serve``.

    The query is a chat message (``"user: t1"``, ``"history: B000BIZT3E; Green tea"``, or a JSON
    object); ``top_k``, ``domain`` and ``model`` (the pipeline) fill in what it does not say.
    """

    base_url: str  # e.g. http://127.0.0.1:8080
    api_key: str | None = None
    model: str | None = None
    top_k: int = 10
    domain: str | None = None
    timeout_s: float = 300.0

    def _body(self, query: str) -> dict[str, Any]:
        fields = parse_message(query, "query")
        body: dict[str, Any] = {
            "model": self.model,
            "top_k": fields.pop("top_k", self.top_k),
            "domain": fields.pop("domain", self.domain),
        }
        body.update(fields)
        return {k: v for k, v in body.items() if v is not None}

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    @staticmethod
    def _documents(resp: httpx.Response) -> list[Document]:
        if resp.status_code != 200:
            try:
                message = resp.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = resp.text[:300]
            raise ValueError(f"recbridge serve answered {resp.status_code}: {message}")
        body = resp.json()
        return [
            Document(
                id=item["item_id"],
                page_content=item["title"],
                metadata={
                    "item_id": item["item_id"],
                    "domain": item["domain"],
                    "rank": rank,
                    "score": item["score"],
                    "reason": item["reason"],
                    "because": item.get("because", []),
                    "display_title": item.get("display_title", item["title"]),
                    "pipeline": body["model"],
                    "fallback": body["fallback"],
                },
            )
            for rank, item in enumerate(body["items"], start=1)
        ]

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun
    ) -> list[Document]:
        resp = httpx.post(
            f"{self.base_url.rstrip('/')}/v1/recommendations",
            json=self._body(query),
            headers=self._headers(),
            timeout=self.timeout_s,
        )
        return self._documents(resp)

    async def _aget_relevant_documents(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun
    ) -> list[Document]:
        async with httpx.AsyncClient(timeout=self.timeout_s) as client:
            resp = await client.post(
                f"{self.base_url.rstrip('/')}/v1/recommendations",
                json=self._body(query),
                headers=self._headers(),
            )
        return self._documents(resp)
