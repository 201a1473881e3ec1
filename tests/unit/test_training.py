"""The shared trainer on the real data slice: loss, early stopping, checkpoints, sampling."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner, Result

from agent.cli.main import app
from agent.config import Settings
from agent.data.schema import Dataset
from agent.models.base import UNKNOWN_ITEM_SCORE
from agent.models.checkpoint import CONFIG_FILE, FIT_REPORT_FILE, CheckpointError
from agent.models.neural import MODEL_FILE
from agent.models.prepare import ModelNotReady, checkpoint_loss, default_checkpoint, prepare_model
from agent.models.registry import build_recommender
from agent.models.sasrec_id import SASRecIDRecommender
from agent.models.sequential import SASRecRecommender
from agent.models.training import (
    DomainNegativeSampler,
    LengthPoolBatchSampler,
    training_sequences,
)
from eval.evaluator import make_valid_fn


def with_train(settings: Settings, **train: Any) -> Settings:
    return settings.model_copy(update={"train": settings.train.model_copy(update=train)})


def fast(settings: Settings, **train: Any) -> Settings:
    base: dict[str, Any] = {"batch_size": 64, "lr": 5e-3, "dropout": 0.1, "epochs": 3}
    return with_train(settings, **(base | train))


def test_training_sequences_are_shifted_train_histories(slice_data: Dataset) -> None:
    inputs, targets = training_sequences(slice_data, max_len=20)
    train = [u for u in slice_data.iter_split("train") if len(u.history) >= 2]
    assert inputs.shape == targets.shape == (len(train), 20)
    ids = slice_data.catalog.encode(train[0].history)[-21:]
    row_in, row_out = inputs[0][inputs[0] > 0], targets[0][targets[0] > 0]
    assert row_in.tolist() == ids[:-1] and row_out.tolist() == ids[1:]
    assert ((inputs > 0) == (targets > 0)).all()  # padded at the same columns


def test_negatives_stay_in_the_target_domain(slice_data: Dataset) -> None:
    domain_of = slice_data.catalog.domain_of
    sampler = DomainNegativeSampler(domain_of)
    targets = torch.from_numpy(training_sequences(slice_data, max_len=20)[1][:200])
    negs = sampler.sample(targets, 5, torch.Generator().manual_seed(0))
    assert negs.shape == (*targets.shape, 5)
    real = targets > 0
    assert (negs[~real] == 0).all()
    pos_dom = torch.from_numpy(domain_of)[targets[real]]
    neg_dom = torch.from_numpy(domain_of)[negs[real]]
    assert (neg_dom == pos_dom.unsqueeze(-1)).all()
    assert (negs[real] != targets[real].unsqueeze(-1)).all()
    assert len(torch.unique(negs[real])) > 100  # spread over the domain, not one item


def test_length_pools_cover_every_row_once() -> None:
    lengths = np.random.default_rng(0).integers(1, 50, size=1000)
    sampler = LengthPoolBatchSampler(lengths, 32, torch.Generator().manual_seed(0), pool=4)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 32
    assert sorted(i for b in batches for i in b) == list(range(1000))
    spread = np.mean([np.ptp(lengths[b]) for b in batches])
    assert spread < 20  # similar lengths in a batch (random batches: ~45)


def test_training_lowers_loss_and_keeps_the_best_checkpoint(
    settings: Settings, slice_data: Dataset, tmp_path: Path
) -> None:
    fit_settings = fast(settings, epochs=4)
    valid = make_valid_fn(slice_data, fit_settings, protocol="sampled-100")
    model = build_recommender("sasrec-id", slice_data, fit_settings)
    assert isinstance(model, SASRecIDRecommender)
    untrained = valid(model)
    report = model.fit(valid_fn=valid, out=tmp_path / "ckpt")
    losses = [h["loss"] for h in report.history]
    assert report.epochs == 4 and losses[-1] < losses[0] - 0.05, losses
    assert report.best_valid_ndcg10 == max(h["valid_ndcg10"] for h in report.history)
    assert report.best_valid_ndcg10 > untrained
    assert report.seconds_per_epoch > 0
    assert (tmp_path / "ckpt" / CONFIG_FILE).is_file()
    assert (tmp_path / "ckpt" / MODEL_FILE).is_file()
    assert valid(model) == pytest.approx(report.best_valid_ndcg10)  # best state restored


def test_early_stopping_stops_after_patience(settings: Settings, slice_data: Dataset) -> None:
    model = build_recommender("sasrec-id", slice_data, fast(settings, epochs=10, patience=2))
    report = model.fit(valid_fn=lambda _model: 0.5)  # never improves after the first epoch
    assert report.epochs == 3 and report.best_epoch == 1
    assert not report.budget_hit  # early stopping, not the budget, ended it


def test_a_run_that_keeps_improving_reports_the_budget_hit(
    settings: Settings, slice_data: Dataset
) -> None:
    model = build_recommender("sasrec-id", slice_data, fast(settings, epochs=3, patience=2))
    scores = iter([0.1, 0.2, 0.3])
    report = model.fit(valid_fn=lambda _model: next(scores))
    assert report.epochs == 3 and report.best_epoch == 3 and report.budget_hit


def _scores(model: SASRecRecommender, data: Dataset) -> list[np.ndarray]:
    users = data.split("valid")[:20]
    food = [data.catalog.ids[i - 1] for i in data.catalog.domain_items("food")]
    return model.score([u.history for u in users], [food] * len(users))


def test_same_seed_same_scores(settings: Settings, slice_data: Dataset) -> None:
    runs = []
    for _ in range(2):
        model = SASRecIDRecommender(slice_data, fast(settings, epochs=1))
        model.fit()
        runs.append(_scores(model, slice_data))
    for a, b in zip(*runs, strict=True):
        np.testing.assert_array_equal(a, b)
    other = SASRecIDRecommender(slice_data, fast(settings, epochs=1).model_copy(update={"seed": 7}))
    other.fit()
    assert not np.array_equal(_scores(other, slice_data)[0], runs[0][0])


def test_checkpoint_round_trip_gives_identical_scores(
    settings: Settings, slice_data: Dataset, tmp_path: Path
) -> None:
    model = SASRecIDRecommender(slice_data, fast(settings, epochs=1))
    model.fit(out=tmp_path / "ckpt")
    # other current settings: the checkpoint's own config rebuilds the network
    loaded = SASRecIDRecommender(slice_data, with_train(settings, hidden=8, layers=1))
    loaded.load(tmp_path / "ckpt")
    for a, b in zip(_scores(model, slice_data), _scores(loaded, slice_data), strict=True):
        np.testing.assert_array_equal(a, b)


def test_checkpoint_of_other_data_or_model_is_refused(
    settings: Settings, slice_data: Dataset, tmp_path: Path
) -> None:
    model = SASRecIDRecommender(slice_data, fast(settings, epochs=1))
    model.fit(out=tmp_path / "ckpt")
    dropped = next(iter(slice_data.items))
    items = {k: v for k, v in slice_data.items.items() if k != dropped}
    users = [u for u in slice_data.users if dropped not in u.items]
    other = replace(slice_data, items=items, users=users)
    with pytest.raises(CheckpointError, match=r"other data.*not in the data"):
        SASRecIDRecommender(other, settings).load(tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match="of model 'sasrec-id', not 'popularity'"):
        build_recommender("popularity", slice_data, settings).load(tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        model.load(tmp_path)


def test_a_default_checkpoint_of_another_loss_is_not_loaded_in_its_place(
    settings: Settings, slice_data: Dataset
) -> None:
    bce = fast(settings, epochs=1, loss="bce")
    trained = prepare_model("sasrec-id", slice_data, bce, train=True, valid_fn=lambda _m: 0.5)
    folder = default_checkpoint(bce, "sasrec-id")
    assert trained.source == "trained" and checkpoint_loss(folder) == "bce"
    ssm = with_train(bce, loss="sampled-softmax")
    with pytest.raises(ModelNotReady, match=r"trained with train\.loss=bce.*sampled-softmax"):
        prepare_model("sasrec-id", slice_data, ssm, train=True, valid_fn=lambda _m: 0.5)
    again = prepare_model("sasrec-id", slice_data, bce)  # the same loss: loaded, fit report too
    assert again.source == "checkpoint" and again.fit is not None
    assert again.fit.best_valid_ndcg10 == 0.5
    # Checkpoints written before train.loss existed were trained with bce.
    config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    del config["config"]["train"]["loss"]
    (folder / CONFIG_FILE).write_text(json.dumps(config), encoding="utf-8")
    assert checkpoint_loss(folder) == "bce"
    # LLM-RecG trains with methods.llm_recg.loss: train.loss does not describe its checkpoint.
    assert not build_recommender("llm-recg", slice_data, ssm).uses_train_loss


def test_score_ignores_unknown_history_and_ranks_unknown_candidates_last(
    settings: Settings, slice_data: Dataset
) -> None:
    model = SASRecIDRecommender(slice_data, fast(settings, epochs=1))
    user = slice_data.split("valid")[0]
    cands = [user.items[-1], "no-such-item", slice_data.catalog.ids[0]]
    plain = model.score([user.history], [cands])[0]
    noisy = model.score([("unknown-a", *user.history, "unknown-b")], [cands])[0]
    np.testing.assert_array_equal(plain, noisy)
    assert plain[1] == UNKNOWN_ITEM_SCORE and plain[0] > UNKNOWN_ITEM_SCORE
    assert model.score([], []) == []
    empty = model.score([[]], [cands])[0]  # no known history: still finite scores
    assert np.isfinite(empty[[0, 2]]).all()


def test_full_domain_ranking_matches_per_user_scoring(
    settings: Settings, slice_data: Dataset
) -> None:
    model = SASRecIDRecommender(slice_data, fast(settings, epochs=1))
    users = slice_data.split("test")[:5]
    kitchen = [slice_data.catalog.ids[i - 1] for i in slice_data.catalog.domain_items("kitchen")]
    together = model.score([u.history for u in users], [kitchen] * len(users))
    for user, scores in zip(users, together, strict=True):
        assert scores.shape == (len(kitchen),)
        alone = model.score([user.history], [kitchen[:50]])[0]
        np.testing.assert_allclose(scores[:50], alone, rtol=1e-5, atol=1e-6)


runner = CliRunner()


def _train_cli(tmp_path: Path, slice_dir: Path, *args: str) -> Result:
    settings = ["--set", "train.hidden=16", "--set", "train.max_len=20"]
    settings += ["--set", f"work_dir={tmp_path / 'work'}"]
    return runner.invoke(app, [*settings, "train", "--data", str(slice_dir), *args])


def test_train_cli_writes_checkpoint_and_fit_report(
    settings: Settings, slice_data: Dataset, slice_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "sid"
    result = _train_cli(
        tmp_path,
        slice_dir,
        "--model",
        "sasrec-id",
        "--out",
        str(out),
        "--epochs",
        "2",
        "--seed",
        "3",
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / FIT_REPORT_FILE).read_text(encoding="utf-8"))
    assert report["epochs"] == 2 and report["seed"] == 3 and report["model"] == "sasrec-id"
    assert 0.0 < report["best_valid_ndcg10"] <= 1.0 and report["seconds_per_epoch"] > 0
    loaded = SASRecIDRecommender(slice_data, settings)
    loaded.load(out)  # the checkpoint's own config (hidden 16) rebuilds the network
    assert loaded.network.hidden == 16


def test_train_cli_other_models_and_errors(slice_dir: Path, tmp_path: Path) -> None:
    pop = _train_cli(tmp_path, slice_dir, "--model", "popularity", "--out", str(tmp_path / "p"))
    assert pop.exit_code == 0, pop.output
    assert (tmp_path / "p" / "counts.json").is_file()
    assert (tmp_path / "p" / FIT_REPORT_FILE).is_file()
    knn = _train_cli(tmp_path, slice_dir, "--model", "text-knn", "--out", str(tmp_path / "k"))
    assert knn.exit_code == 0 and not (tmp_path / "k").exists()
    assert _train_cli(tmp_path, slice_dir, "--model", "nope").exit_code == 2
    assert _train_cli(tmp_path, slice_dir, "--device", "tpu").exit_code == 2
