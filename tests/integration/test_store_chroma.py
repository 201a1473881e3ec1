"""ItemIndex on embedded Chroma and on a real ``chroma run`` server (same tests, both clients)."""

from __future__ import annotations

import numpy as np
import pytest

from agent.config import Settings, load_settings
from agent.data.schema import Dataset
from agent.store.chroma_store import (
    ItemIndex,
    StoreError,
    collection_name,
    domain_collection_name,
    make_client,
    vector_fingerprint,
)

pytestmark = pytest.mark.integration
MODEL = "sentence-transformers/all-MiniLM-L6-v2"


@pytest.fixture()
def filled(
    store_settings: Settings, slice_data: Dataset, slice_embeddings: np.ndarray
) -> ItemIndex:
    index = ItemIndex(make_client(store_settings), store_settings, MODEL)
    report = index.index(slice_data, slice_embeddings, progress=False)
    assert report.upserted == report.items == report.count == len(slice_data.catalog)
    return index


def test_index_holds_every_item_with_its_vector_and_metadata(
    filled: ItemIndex, slice_data: Dataset, slice_embeddings: np.ndarray
) -> None:
    ids = slice_data.catalog.ids
    got = filled.collection.get(ids=ids[:50], include=["metadatas"])
    for iid, meta in zip(got["ids"], got["metadatas"] or [], strict=True):
        item = slice_data.items[iid]
        assert meta["domain"] == item.domain and meta["title"] == item.title[:200]
    stored = filled.vectors(ids)
    assert set(stored) == set(ids)
    for iid, dense in slice_data.catalog.index.items():
        assert np.allclose(stored[iid], slice_embeddings[dense], atol=1e-6)
    assert filled.collection.metadata["model_id"] == MODEL


def test_reindex_is_idempotent_and_repairs_what_is_missing_or_changed(
    filled: ItemIndex, slice_data: Dataset, slice_embeddings: np.ndarray
) -> None:
    n = len(slice_data.catalog)
    again = filled.index(slice_data, slice_embeddings, progress=False)
    assert (again.upserted, again.deleted, again.count) == (0, 0, n)

    ids = slice_data.catalog.ids
    filled.collection.delete(ids=ids[:37])  # lost items
    filled.collection.upsert(  # a stranger no longer in the catalogue
        ids=["not-an-item"], embeddings=slice_embeddings[1:2], metadatas=[{"domain": "food"}]
    )
    changed = slice_embeddings.copy()
    changed[40] = -changed[40]  # a vector that changed (e.g. new template)
    repair = filled.index(slice_data, changed, progress=False)
    assert (repair.upserted, repair.deleted, repair.count) == (38, 1, n)
    assert np.allclose(filled.vectors([ids[39]])[ids[39]], changed[40], atol=1e-6)


def test_query_respects_domain_excludes_ids_and_ranks_by_cosine(
    filled: ItemIndex, slice_data: Dataset, slice_embeddings: np.ndarray
) -> None:
    catalog = slice_data.catalog
    for domain in catalog.domains:
        query_vec = slice_embeddings[int(catalog.domain_items(domain)[3])]
        plain = filled.query(query_vec, domain, 10)
        exclude = [iid for iid, _ in plain[:4]]
        hits = filled.query(query_vec, domain, 10, exclude_ids=exclude)
        assert len(hits) == 10
        assert not set(exclude) & {iid for iid, _ in hits}
        assert [iid for iid, _ in hits[:6]] == [iid for iid, _ in plain[4:10]]
        assert all(slice_data.items[iid].domain == domain for iid, _ in hits)
        sims = [s for _, s in hits]
        assert sims == sorted(sims, reverse=True)
        for iid, sim in hits:  # similarity is the cosine of the stored (unit) vectors
            assert sim == pytest.approx(
                float(slice_embeddings[catalog.index[iid]] @ query_vec), abs=1e-4
            )


def test_domain_collections_hold_each_domain_and_answer_like_the_filter(
    filled: ItemIndex, slice_data: Dataset, slice_embeddings: np.ndarray
) -> None:
    catalog = slice_data.catalog
    for domain in catalog.domains:
        dense = catalog.domain_items(domain)
        stored = set(filled.domain_collection(domain).get(include=[])["ids"])
        assert stored == {catalog.ids[d - 1] for d in dense}
        query_vec = slice_embeddings[int(dense[5])]
        fast = [iid for iid, _ in filled.query(query_vec, domain, 10)]
        filtered = [iid for iid, _ in filled.query_filtered(query_vec, domain, 10)]
        exact = [
            catalog.ids[d - 1] for d in dense[np.argsort(-slice_embeddings[dense] @ query_vec)]
        ]
        assert len(set(fast) & set(exact[:10])) >= 9  # HNSW is approximate; at this size ~exact
        assert len(set(fast) & set(filtered)) >= 9
    everything = filled.query_all(slice_embeddings[1], 10)
    assert {slice_data.items[iid].domain for iid, _ in everything} <= set(catalog.domains)


def test_a_store_without_domain_collections_is_moved_over_without_embedding(
    store_settings: Settings, slice_data: Dataset, slice_embeddings: np.ndarray
) -> None:
    client = make_client(store_settings)
    old = ItemIndex(client, store_settings, MODEL)
    old.index(slice_data, slice_embeddings, progress=False)
    for domain in slice_data.catalog.domains:  # as a store indexed before this design
        client.delete_collection(domain_collection_name(old.name, domain))
    index = ItemIndex(make_client(store_settings), store_settings, MODEL)
    catalog = slice_data.catalog
    domain = catalog.domains[0]
    dense = catalog.domain_items(domain)
    hits = index.query(slice_embeddings[int(dense[0])], domain, 5)  # moves the domain over
    assert hits[0][0] == catalog.ids[dense[0] - 1]
    moved = index.domain_collection(domain).get(include=["embeddings", "metadatas"])
    assert len(moved["ids"]) == len(dense)
    assert moved["embeddings"] is not None and moved["metadatas"] is not None
    for iid, vec, meta in zip(moved["ids"], moved["embeddings"], moved["metadatas"], strict=True):
        assert np.allclose(vec, slice_embeddings[catalog.index[iid]], atol=1e-6)
        assert meta["domain"] == domain
    index.drop()  # the main collection and every domain collection
    names = {c.name for c in client.list_collections()}
    assert not {n for n in names if n.startswith(index.name)}


def test_query_batch_equals_single_queries(
    filled: ItemIndex, slice_data: Dataset, slice_embeddings: np.ndarray
) -> None:
    catalog = slice_data.catalog
    rows = [1, 2, 3, len(catalog)]
    domains = [catalog.domains[int(catalog.domain_of[r])] for r in rows][::-1]
    excludes = [[catalog.ids[r - 1]] for r in rows]
    batch = filled.query_batch(slice_embeddings[rows], domains, 5, excludes)
    for row, domain, excl, got in zip(rows, domains, excludes, batch, strict=True):
        single = filled.query(slice_embeddings[row], domain, 5, excl)
        assert [i for i, _ in got] == [i for i, _ in single]


def test_embedders_never_share_a_collection(
    store_settings: Settings, slice_data: Dataset, slice_embeddings: np.ndarray
) -> None:
    client = make_client(store_settings)
    a = ItemIndex(client, store_settings, MODEL)
    b = ItemIndex(client, store_settings, "openai/other-model")
    assert a.name != b.name
    a.index(slice_data, slice_embeddings, progress=False)
    assert b.count() == 0
    b.drop()
    a.drop()
    assert ItemIndex(client, store_settings, MODEL).count() == 0


def test_collection_names_are_valid_for_odd_model_ids() -> None:
    for model_id in ["openai/text-embedding-3-small", "a", "..weird//model..", "x" * 600]:
        name = collection_name("items", model_id)
        assert 3 <= len(name) <= 512 and name[0].isalnum() and name[-1].isalnum()
        assert ".." not in name
    assert collection_name("items", "A/B") != collection_name("items", "a-b")
    assert vector_fingerprint(np.ones(4)) == vector_fingerprint(np.ones(4, dtype=np.float32))


def test_unreachable_server_is_a_clear_error() -> None:
    settings = load_settings(overrides={"store.url": "http://127.0.0.1:9"})
    with pytest.raises(StoreError, match=r"127\.0\.0\.1:9"):
        make_client(settings)
