"""eval/study.py: study files (errors name file and field), seed aggregation, the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eval.study import (
    Cell,
    StudyError,
    aggregate,
    check_row_settings,
    load_study,
    plan_training,
    study_markdown,
    write_study,
)


def _write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "study.toml"
    path.write_text(body, encoding="utf-8")
    return path


GOOD = """
name = "s"
protocols = ["in-domain", "food:kitchen"]
history_from = ["target", "source"]
seeds = [1, 2]
set = ["train.epochs=2"]
[[rows]]
name = "pop"
model = "popularity"
[[rows]]
name = "id"
model = "sasrec-id"
vs = "pop"
[[rows]]
name = "recg"
model = "llm-recg"
[[rows]]
name = "recg-noSeq"
model = "llm-recg"
checkpoint_of = "recg"
score_set = ["methods.llm_recg.sequence_level=false"]
"""


def test_a_good_study_plans_one_job_per_trained_row_seed_and_protocol(tmp_path: Path) -> None:
    spec = load_study(_write(tmp_path, GOOD))
    jobs = plan_training(spec, tmp_path / "root", base_args=["--set", "work_dir=/w"])
    # popularity needs no training, recg-noSeq scores recg's checkpoints: 2 rows x 2 seeds x 2
    assert len(jobs) == 8
    assert [j.seed for j in jobs[:4]] == [1, 1, 1, 1]  # seed by seed
    first = jobs[0]
    assert first.out == tmp_path / "root" / "checkpoints" / "in-domain" / "id" / "seed1"
    expected = ["--set", "work_dir=/w", "--set", "train.epochs=2", "train", "--model",
                "sasrec-id", "--seed", "1", "--out", str(first.out)]  # fmt: skip
    assert first.argv[3:] == expected
    zero = [j for j in jobs if j.transfer.zero_shot]
    assert {j.transfer.spec for j in zero} == {"food:kitchen"}
    assert zero[0].argv[-2:] == ["--transfer", "food:kitchen"]
    assert "zeroshot-food-kitchen" in str(zero[0].out)


def test_a_costly_row_runs_only_its_own_seeds(tmp_path: Path) -> None:
    body = GOOD.replace('vs = "pop"', 'vs = "pop"\nseeds = [2]').replace(
        'model = "llm-recg"\n[[rows]]', 'model = "llm-recg"\nseeds = [1]\n[[rows]]'
    )
    spec = load_study(_write(tmp_path, body))
    jobs = plan_training(spec, tmp_path / "root")
    assert {(j.row, j.seed) for j in jobs} == {("id", 2), ("recg", 1)}
    # a row scoring another row's checkpoints follows that row's seeds
    assert spec.seeds_of(spec.row("recg-noSeq")) == [1]
    assert spec.seeds_of(spec.row("id"), [1]) == []


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ("name = 's'\nrows = []", "at least one row"),
        (
            "name = 's'\nseeds = [1]\n[[rows]]\nname = 'a'\nmodel = 'sasrec-id'\nseeds = [3]",
            "seeds",
        ),
        ("name = 's'\n[[rows]]\nname = 'a'\nmodel = 'nope'", "rows.0"),
        ("name = 's'\n[[rows]]\nname = 'a b'\nmodel = 'popularity'", "letters, digits"),
        (
            "name = 's'\n[[rows]]\nname = 'a'\nmodel = 'sasrec-id'\n"
            "[[rows]]\nname = 'a'\nmodel = 'sasrec-id'",
            "appears twice",
        ),
        ("name = 's'\n[[rows]]\nname = 'a'\nmodel = 'sasrec-id'\nvs = 'b'", "not an earlier row"),
        (
            "name = 's'\n[[rows]]\nname = 'a'\nmodel = 'sasrec-id'\n"
            "[[rows]]\nname = 'b'\nmodel = 'sasrec-text'\ncheckpoint_of = 'a'",
            "same model",
        ),
        ("name = 's'\nprotocols = ['food']\n[[rows]]\nname = 'a'\nmodel = 'popularity'", "SOURCE"),
        ("name = 's'\nbogus = 1\n[[rows]]\nname = 'a'\nmodel = 'popularity'", "bogus"),
        ("name = 's\n", "cannot parse"),
    ],
)
def test_bad_study_files_name_the_file_and_the_problem(
    tmp_path: Path, body: str, needle: str
) -> None:
    path = _write(tmp_path, body)
    with pytest.raises(StudyError) as info:
        load_study(path)
    assert str(path) in str(info.value) and needle in str(info.value)


def test_missing_study_file(tmp_path: Path) -> None:
    with pytest.raises(StudyError, match="not found"):
        load_study(tmp_path / "none.toml")


def _cell(row: str, seed: int | None, ndcg: float, food: float) -> Cell:
    metric = {"hr@10": 2 * ndcg, "ndcg@10": ndcg, "mrr": ndcg / 2}
    return Cell(
        "in-domain",
        row,
        seed,
        {"overall": metric, "food": {**metric, "ndcg@10": food}},
        {"overall": 10, "food": 4},
        {} if seed is None else {"epochs": 4, "best_epoch": seed, "seconds_per_epoch": 10.0 + seed},
    )


def test_aggregate_gives_mean_sample_sd_and_paired_deltas(tmp_path: Path) -> None:
    spec = load_study(_write(tmp_path, GOOD))
    cells = [
        _cell("pop", None, 0.10, 0.2),
        _cell("id", 1, 0.20, 0.3),
        _cell("id", 2, 0.30, 0.5),
        _cell("recg", 1, 0.25, 0.1),
    ]
    by_row = {s.row: s for s in aggregate(spec, cells)}
    assert list(by_row) == ["pop", "id", "recg"]  # the file's order
    pop, ident = by_row["pop"], by_row["id"]
    assert pop.deterministic and pop.n_seeds == 1 and pop.metrics["overall"]["ndcg@10"].sd == 0
    stat = ident.metrics["overall"]["ndcg@10"]
    assert stat.mean == pytest.approx(0.25) and stat.sd == pytest.approx(0.0707107, rel=1e-5)
    assert ident.metrics["food"]["ndcg@10"].mean == pytest.approx(0.4)
    # paired against a deterministic reference: each seed minus the one value
    assert ident.delta is not None and ident.delta.mean == pytest.approx(0.15)
    assert ident.seconds_per_epoch is not None and ident.seconds_per_epoch.mean == 11.5
    assert by_row["recg"].delta is None  # no vs
    text = study_markdown(spec, aggregate(spec, cells), ["in-domain/recg/seed2"])
    row = "| `id` | 2 | 0.500 ± 0.141 | 0.400 ± 0.141 | 0.150 ± 0.071 (pop) | 11.5 | 4.0 (1.5) |"
    assert row in text  # one domain: no separate overall column
    assert "| `pop` | det. |" in text
    assert "in-domain/recg/seed2" in text  # failures are listed, not hidden


def test_write_study_writes_markdown_json_and_plot(tmp_path: Path) -> None:
    spec = load_study(_write(tmp_path, GOOD))
    cells = [_cell("pop", None, 0.10, 0.2), _cell("id", 1, 0.20, 0.3), _cell("id", 2, 0.3, 0.5)]
    md = write_study(tmp_path / "out", spec, aggregate(spec, cells), [])
    assert md.read_text(encoding="utf-8").startswith("# Study `s`")
    body = json.loads((tmp_path / "out" / "study.json").read_text(encoding="utf-8"))
    ident = next(r for r in body["rows"] if r["row"] == "id")
    assert ident["metrics"]["overall"]["ndcg@10"] == pytest.approx(
        {"mean": 0.25, "sd": 0.0707107, "n": 2}, rel=1e-5
    )
    assert ident["delta_ndcg10"]["mean"] == pytest.approx(0.15)
    assert (tmp_path / "out" / "study.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("name", ["in_domain.toml", "zero_shot.toml", "retrievers.toml"])
def test_the_shipped_study_files_load_with_valid_settings(name: str) -> None:
    path = Path(__file__).resolve().parents[2] / "eval" / "studies" / name
    spec = load_study(path)
    check_row_settings(spec)  # every row's settings load (a typo would stop the study)
    assert spec.seeds == [42, 43, 44] and len(spec.rows) >= 6
