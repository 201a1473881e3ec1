"""item_embeddings through the cache, with the real packaged MiniLM."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agent.config import Settings, load_settings
from agent.data.schema import Dataset, Item
from agent.items.embedder import Embedder, MiniLMEmbedder, make_embedder
from agent.items.embeddings import item_embeddings
from agent.items.text import item_text

pytestmark = pytest.mark.integration


class CountingEmbedder:
    """The real embedder, counting the texts it is asked to embed (optionally another id)."""

    def __init__(self, inner: Embedder, model_id: str | None = None) -> None:
        self.inner = inner
        self.model_id = model_id or inner.model_id
        self.texts = 0

    @property
    def dim(self) -> int:
        return self.inner.dim

    def embed(self, texts: list[str]) -> np.ndarray:
        self.texts += len(texts)
        return self.inner.embed(texts)


@pytest.fixture(scope="module")
def minilm() -> MiniLMEmbedder:
    return MiniLMEmbedder()  # the weights are loaded once per process


def _dataset(titles: list[str]) -> Dataset:
    items = {
        f"I{i}": Item(f"I{i}", "food" if i % 2 else "kitchen", t) for i, t in enumerate(titles)
    }
    return Dataset(name="tiny", items=items, users=[])


TITLES = [
    "Organic Green Tea, 100 bags",
    "Cast Iron Skillet 12 inch",
    "Dark Chocolate Bar 85%",
    "Stainless Steel Whisk",
    "Extra Virgin Olive Oil 1L",
    "Bamboo Cutting Board",
    "Organic Green Tea, 100 bags",  # same text as item 0: one embedding
]


@pytest.fixture()
def tiny_settings(tmp_path: Path) -> Settings:
    return load_settings(overrides={"work_dir": str(tmp_path), "embedding.batch_size": 4})


def test_rows_follow_dense_ids_and_cache_skips_known_texts(
    tiny_settings: Settings, minilm: MiniLMEmbedder
) -> None:
    data = _dataset(TITLES)
    first = CountingEmbedder(minilm)
    matrix = item_embeddings(data, tiny_settings, progress=False, embedder=first)
    assert matrix.shape == (len(TITLES) + 1, 384) and matrix.dtype == np.float32
    assert np.all(matrix[0] == 0)
    assert first.texts == len(set(TITLES))
    assert np.allclose(np.linalg.norm(matrix[1:], axis=1), 1.0, atol=1e-5)
    for iid, dense in data.catalog.index.items():
        direct = minilm.embed([item_text(data.items[iid], tiny_settings)])[0]
        assert np.allclose(matrix[dense], direct, atol=1e-5)

    second = CountingEmbedder(minilm)
    again = item_embeddings(data, tiny_settings, progress=False, embedder=second)
    assert second.texts == 0  # everything came from the cache
    assert np.array_equal(again, matrix)


def test_keys_change_with_text_and_with_model(
    tiny_settings: Settings, minilm: MiniLMEmbedder
) -> None:
    item_embeddings(_dataset(TITLES), tiny_settings, progress=False, embedder=minilm)
    edited = CountingEmbedder(minilm)
    changed = [*TITLES[:-2], "Bamboo Cutting Board, large", TITLES[-1]]
    item_embeddings(_dataset(changed), tiny_settings, progress=False, embedder=edited)
    assert edited.texts == 1  # only the changed title

    other_model = CountingEmbedder(minilm, model_id="test/other-model")
    item_embeddings(_dataset(TITLES), tiny_settings, progress=False, embedder=other_model)
    assert other_model.texts == len(set(TITLES))  # a new model id shares nothing


def test_default_embedder_is_minilm_and_lazy(tiny_settings: Settings) -> None:
    embedder = make_embedder(tiny_settings)
    assert isinstance(embedder, MiniLMEmbedder)
    assert embedder.model_id == "sentence-transformers/all-MiniLM-L6-v2"


def test_slice_is_embedded_once(settings: Settings, slice_data: Dataset) -> None:
    """The conftest slice through the session cache: a second call embeds nothing."""
    item_embeddings(slice_data, settings, progress=False)
    counter = CountingEmbedder(make_embedder(settings))
    matrix = item_embeddings(slice_data, settings, progress=False, embedder=counter)
    assert counter.texts == 0
    assert matrix.shape == (len(slice_data.catalog) + 1, 384)
