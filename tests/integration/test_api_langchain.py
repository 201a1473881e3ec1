"""LangChain: ``RecBridgeRetriever`` against the real ``recbridge serve`` (sync and async), and
the Chroma item collection as a ``langchain_chroma`` vector store with the project's embedder."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from agent.config import Settings, load_settings
from agent.data.schema import Dataset, display_title
from agent.integrations.langchain import RecBridgeEmbeddings, RecBridgeRetriever, item_vectorstore
from agent.items.embedder import MiniLMEmbedder
from agent.store.chroma_store import ItemIndex, make_client
from tests.integration.api_fixtures import ApiServer

pytestmark = pytest.mark.integration


def test_retriever_returns_recommended_items_as_documents(
    api_server: ApiServer, slice_data: Dataset
) -> None:
    retriever = RecBridgeRetriever(
        base_url=api_server.url, api_key=api_server.key, model="text-knn", top_k=4
    )
    docs = retriever.invoke("user: t1")
    assert len(docs) == 4
    assert [d.metadata["rank"] for d in docs] == [1, 2, 3, 4]
    for doc in docs:
        item = slice_data.items[doc.metadata["item_id"]]
        assert doc.page_content == item.title and doc.id == item.item_id
        assert doc.metadata["pipeline"] == "text-knn" and doc.metadata["fallback"] is None
    # A history (ids or titles) in the message format, and the async path.
    history = list(slice_data.split("test")[0].history)[-3:]
    query = "history: " + "; ".join(history) + "\ndomain: kitchen\ntop_k: 2"
    docs = asyncio.run(retriever.ainvoke(query))
    assert len(docs) == 2 and {d.metadata["domain"] for d in docs} == {"kitchen"}
    assert not {d.metadata["item_id"] for d in docs} & set(history)
    # Each document's reason names history items of this request, by their titles.
    for doc in docs:
        assert set(doc.metadata["because"]) <= set(history)
        assert doc.metadata["reason"].endswith("by text-knn")
        for iid in doc.metadata["because"]:
            assert display_title(slice_data.items[iid].title, 48) in doc.metadata["reason"]
    with pytest.raises(ValueError, match=r"404.*nobody"):
        retriever.invoke("user: nobody")


def test_item_index_opens_as_a_langchain_chroma_store(
    session_settings: Settings,
    slice_data: Dataset,
    slice_embeddings: np.ndarray,
    minilm: MiniLMEmbedder,
    tmp_path: Path,
) -> None:
    settings = load_settings(
        overrides={
            "data.path": str(session_settings.data.path),
            "work_dir": str(tmp_path / "work"),
            "embedding.cache_dir": str(session_settings.embedding_cache_dir),
        }
    )
    index = ItemIndex(make_client(settings), settings, minilm.model_id)
    index.index(slice_data, slice_embeddings, progress=False)
    store = item_vectorstore(settings, embedder=minilm)
    hits = store.similarity_search_with_score("green tea", k=3, filter={"domain": "food"})
    assert len(hits) == 3
    assert all(doc.metadata["domain"] == "food" for doc, _ in hits)
    assert all(doc.page_content == slice_data.items[str(doc.id)].title for doc, _ in hits)
    # The same collection and the same vectors: LangChain's hits are RecBridge's own.
    query = RecBridgeEmbeddings(minilm).embed_query("green tea")
    assert abs(float(np.linalg.norm(query)) - 1.0) < 1e-5
    own = index.query(np.asarray(query, dtype=np.float32), "food", 3)
    assert [doc.id for doc, _ in hits] == [iid for iid, _ in own]
    docs = store.as_retriever(search_kwargs={"k": 2, "filter": {"domain": "kitchen"}}).invoke(
        "cast iron skillet"
    )
    assert len(docs) == 2 and {d.metadata["domain"] for d in docs} == {"kitchen"}
