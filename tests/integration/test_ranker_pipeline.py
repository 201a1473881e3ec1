"""The learned ranker end to end on the real data slice: a small sasrec-hybrid and its holdout
twin trained, groups from train rows, LightGBM chosen on valid users, the ranker evaluated as a
two-stage recommender, and served by the real ``recbridge serve`` as ``sasrec-hybrid+ranker``
without ever loading an LLM."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from agent.config import Settings, load_settings
from agent.data.schema import Dataset
from agent.models.prepare import prepare_model
from agent.pipeline.two_stage import TwoStageRecommender
from agent.rerank.ranker import LearnedRanker, read_card
from agent.rerank.registry import make_reranker
from eval.evaluator import RankingEvaluator, make_valid_fn
from finetune.ranker import ranker_data, train_ranker
from tests.integration.api_fixtures import ApiServer, start_api_server

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TOP = 10
SETS: dict[str, object] = {
    "train.epochs": 2,
    "train.hidden": 32,
    "train.max_len": 20,
    "train.threads": 1,
    "rerank.top_n": TOP,
    "ranker.top_n": TOP,
    "ranker.num_leaves": "[7]",
    "ranker.min_data_in_leaf": "[5, 20]",
    "ranker.rounds": 30,
    "ranker.early_stopping": 10,
    "ranker.threads": 1,
    "eval.bootstrap": 20,
}


@pytest.fixture(scope="module")
def ranker_settings(
    session_settings: Settings,
    slice_embeddings: np.ndarray,  # the slice embedded once, into the shared cache
    tmp_path_factory: pytest.TempPathFactory,
) -> Settings:
    work = tmp_path_factory.mktemp("ranker-work")
    return load_settings(
        set_items=[
            f"data.path={session_settings.data.path}",
            f"embedding.cache_dir={session_settings.embedding_cache_dir}",
            f"work_dir={work}",
            *(f"{k}={v}" for k, v in SETS.items()),
        ]
    )


@pytest.fixture(scope="module")
def trained(ranker_settings: Settings, slice_data: Dataset) -> Path:
    prepare_model(
        "sasrec-hybrid", slice_data, ranker_settings, train=True, valid_fn_factory=make_valid_fn
    )
    return train_ranker(ranker_settings, slice_data)


def test_ranker_card_records_how_it_was_chosen(trained: Path) -> None:
    card = read_card(trained)
    assert card.retriever == "sasrec-hybrid" and card.top_n == TOP
    assert set(card.valid["tried"]) == {
        "leaves=7,min_data_in_leaf=5",
        "leaves=7,min_data_in_leaf=20",
    }
    assert card.valid["users"] == 40  # every valid user of the slice
    assert sum(card.importance.values()) == pytest.approx(1.0)
    assert card.train["groups"] + card.train["skipped_target_missed"] == card.train["rows"]
    assert card.train["peak_rss_mb"] > 0


def test_groups_are_cut_from_train_rows_and_well_formed(
    trained: Path, ranker_settings: Settings, slice_data: Dataset
) -> None:
    groups = ranker_data(ranker_settings, slice_data)  # read back from the cache
    train, valid = groups.train, groups.valid
    train_rows = {u.user_id: u.items for u in slice_data.split("train")}
    held_out = {u.user_id for u in slice_data.users if u.split != "train"}
    assert not set(train.user_ids) & held_out
    offsets = train.offsets
    ids = slice_data.catalog.ids
    for g, user in enumerate(train.user_ids):
        lo, hi = int(offsets[g]), int(offsets[g + 1])
        assert train.labels[lo:hi].sum() == 1  # one label: the row's held-out last item
        target = ids[int(train.items[lo + int(np.argmax(train.labels[lo:hi]))]) - 1]
        assert target == train_rows[user][-1]
        # no candidate is in the row's history; all share the target's domain
        cands = [ids[int(i) - 1] for i in train.items[lo:hi]]
        assert not set(cands) & set(train_rows[user][:-1])
        assert {slice_data.items[c].domain for c in cands} == {slice_data.items[target].domain}
        # in retrieval order
        assert list(train.features[lo:hi, 1]) == list(range(hi - lo))
    assert len(valid.sizes) == 40 and set(valid.sizes.tolist()) == {TOP}
    assert valid.labels.sum() <= 40


def test_ranker_as_a_two_stage_recommender(
    trained: Path, ranker_settings: Settings, slice_data: Dataset
) -> None:
    retriever = prepare_model("sasrec-hybrid", slice_data, ranker_settings).model
    ranker = make_reranker("ranker", None, ranker_settings, data=slice_data)
    assert isinstance(ranker, LearnedRanker)
    system = TwoStageRecommender(retriever, ranker, top_n=TOP, history_items=50)
    evaluator = RankingEvaluator(slice_data, ranker_settings, split="test")
    base = evaluator(retriever)
    result = evaluator(system, name="sasrec-hybrid+ranker")
    # the second stage only reorders the top N: a target outside it keeps its rank
    outside = base.ranks >= TOP
    assert np.array_equal(result.ranks[outside], base.ranks[outside])
    assert (result.ranks[~outside] < TOP).all()
    assert system.stats.users == 40 and system.stats.prompt_tokens == 0
    assert all(
        sorted(r.ranking) == sorted(q.candidate_ids)
        for q, r in zip(system.requests, system.results, strict=True)
    )


@pytest.fixture(scope="module")
def ranker_api(
    trained: Path, ranker_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiServer]:
    root = tmp_path_factory.mktemp("ranker-api")
    sets = {"work_dir": ranker_settings.work_dir, **SETS}
    sets = {k: v for k, v in sets.items() if not k.startswith("ranker.")}
    args = ["--pipeline", "sasrec-hybrid+ranker", "--pipeline", "sasrec-hybrid"]
    server = start_api_server(ranker_settings, sets, args, root / "server.log")
    try:
        yield server
    finally:
        server.stop()


def test_ranker_served_through_the_http_api(ranker_api: ApiServer, slice_data: Dataset) -> None:
    user = slice_data.split("test")[0]
    with ranker_api.client() as http:
        health = http.get("/healthz").json()
        assert health["llm"] == {"ok": True, "used": False}  # no LLM loaded for the ranker
        models = {m["id"] for m in http.get("/v1/models").json()["data"]}
        assert "sasrec-hybrid+ranker" in models
        ranked = http.post(
            "/v1/recommendations",
            json={"user": user.user_id, "model": "sasrec-hybrid+ranker", "top_k": TOP},
        )
        plain = http.post(
            "/v1/recommendations",
            json={"user": user.user_id, "model": "sasrec-hybrid", "top_k": TOP},
        )
    assert ranked.status_code == 200, ranked.text
    items = ranked.json()["items"]
    assert len(items) == TOP
    # the same retrieved top N, reordered by the ranker
    assert {i["item_id"] for i in items} == {i["item_id"] for i in plain.json()["items"]}
    assert all(i["title"] == slice_data.items[i["item_id"]].title for i in items)
