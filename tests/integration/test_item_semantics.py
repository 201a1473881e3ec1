"""SemaCDR's item semantics with the real small model (in-process backend, no mock): generated
once, cached, resumed; then embedded and used by a short SemaCDR training run.

A base-model backend of its own (the session's ``local_llm`` also trains a LoRA adapter, which
this test does not need). About 4 s per description on one CPU thread: kept to 3 items.
"""

from __future__ import annotations

from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.config import Settings
from agent.data.schema import Dataset
from agent.items.semantics import (
    VIEWS,
    ItemSemantics,
    SemanticsCache,
    item_view_vectors,
    popular_items,
)
from agent.llm.local_backend import LocalBackend
from agent.models.method_settings import MethodSettings
from agent.models.semacdr import SemaCDRRecommender
from tests.integration.llm_fixtures import BASE

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def base_llm(llm_model_dir: Path) -> LocalBackend:
    backend = LocalBackend(llm_model_dir, BASE, threads=1, timeout_s=300)
    backend.load()
    return backend


def with_methods(settings: Settings, **semantics: Any) -> Settings:
    methods = MethodSettings()
    methods.semantics = methods.semantics.model_copy(update={"max_tokens": 48} | semantics)
    train = settings.train.model_copy(update={"epochs": 1, "hidden": 16, "batch_size": 64})
    return settings.model_copy(update={"methods": methods, "train": train})


def test_generate_cache_resume_and_train(
    settings: Settings, slice_data: Dataset, base_llm: LocalBackend
) -> None:
    cfg = with_methods(settings, max_items=0)
    items = popular_items(slice_data, 3)
    semantics = ItemSemantics(slice_data, cfg, model=base_llm.model)

    first = semantics.generate(base_llm, items[:2], progress=False)
    assert (first.requested, first.cached, first.generated, first.failed) == (4, 0, 4, 0)
    again = semantics.generate(base_llm, items, progress=False)  # resumes: one new item
    assert (again.requested, again.cached, again.generated) == (6, 4, 2)
    with closing(SemanticsCache(semantics.cache_dir)) as cache:
        assert len(cache) == 6
    texts = semantics.cached(VIEWS, items)
    assert all(len(texts[v]) == 3 and all(t.strip() for t in texts[v].values()) for v in VIEWS)
    assert texts["agnostic"][items[0]] != texts["specific"][items[0]]  # two prompts, two texts

    # another model name: other keys, nothing found
    assert ItemSemantics(slice_data, cfg, model="other-model").cached(VIEWS, items) == {
        "agnostic": {},
        "specific": {},
    }

    # max_items 3: all cached already, so no backend is built and nothing is generated
    vectors, report = item_view_vectors(slice_data, with_methods(settings, max_items=3), VIEWS)
    assert report is None
    index = slice_data.catalog.index
    for view in VIEWS:
        ids, vecs = vectors[view]
        assert sorted(ids.tolist()) == sorted(index[i] for i in items)
        assert vecs.shape == (3, 384) and np.isfinite(vecs).all()

    model = SemaCDRRecommender(slice_data, cfg)
    assert model.config["method"]["counts"] == [3, 3]
    fit = model.fit()
    assert fit.epochs == 1 and np.isfinite(fit.history[0]["loss"])
