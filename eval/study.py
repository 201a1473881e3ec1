"""Multi-seed studies: every row of a study file trained with each seed, all evaluated on the
same seeded candidates, reported as mean and spread over seeds (issue 5's tables).

A study file (TOML, ``eval/studies/``) names the protocols (``in-domain`` or ``SOURCE:TARGET``
zero-shot, with the test histories taken from the target or the source domain), the seeds, the
settings every row shares (``set``: e.g. the epoch budget) and the rows: a model, the settings
that change its training (``set``: an ablation) and those that change only its scoring
(``score_set``, with ``checkpoint_of``: the row whose checkpoints it scores).

The pipeline:

1. ``plan_training``: one job per (protocol, row, seed) whose checkpoint is not on disk yet:
   ``<study>/checkpoints/<protocol>/<row>/seed<S>/``. A model that needs no training (text-knn,
   popularity) has no job and one deterministic result.
2. ``run_training``: the jobs as ``recbridge train`` subprocesses, ``jobs`` at a time (one
   torch thread each), each with its own log; a failed job is reported and leaves its cell
   empty, never a silently shorter mean.
3. ``evaluate_study``: per protocol, one ``RankingEvaluator`` (candidates seeded by
   ``eval_seed``, so the model seeds change the models only) scores every checkpoint; each
   result is cached beside the study and reused while its checkpoint is unchanged.
4. ``aggregate`` + ``study_markdown``: mean ± sample standard deviation over seeds per domain,
   the seeds' paired difference to a row's reference (``vs``), training time per epoch.
"""

from __future__ import annotations

import json
import logging
import re
import statistics
import subprocess
import sys
import tomllib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from tqdm import tqdm

from agent.config import ConfigError, Settings, load_settings
from agent.data.schema import Dataset
from agent.models.checkpoint import FIT_REPORT_FILE
from agent.models.registry import UnknownModelError, recommender_class
from eval.evaluator import EvalResult, RankingEvaluator
from eval.modelprep import is_checkpoint, prepare_model
from eval.plot import plot_study
from eval.transfer import HistoryFrom, Transfer, TransferError, apply_transfer, transfer_settings

log = logging.getLogger(__name__)

RESULT_VERSION = 1
METRICS = ("hr@10", "ndcg@10", "mrr")
_SLUG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


class StudyError(ValueError):
    """A study file that cannot be run (names the file and the field)."""


class StudyRow(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str  # row label and folder name
    model: str  # registry name
    set: list[str] = Field(default_factory=list)  # settings that change training (ablations)
    score_set: list[str] = Field(default_factory=list)  # settings applied when scoring only
    checkpoint_of: str | None = None  # score that row's checkpoints instead of training
    vs: str | None = None  # reference row: paired per-seed difference in the table
    note: str = ""

    @model_validator(mode="after")
    def _check(self) -> StudyRow:
        if not _SLUG.match(self.name):
            raise ValueError(f"row name {self.name!r}: letters, digits and _.+- only")
        try:
            recommender_class(self.model)
        except UnknownModelError as exc:
            raise ValueError(f"row {self.name!r}: {exc}") from None
        return self


def _target_only() -> list[HistoryFrom]:
    return ["target"]


class StudySpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = ""
    protocols: list[str] = Field(default_factory=lambda: ["in-domain"])
    history_from: list[HistoryFrom] = Field(default_factory=_target_only)
    seeds: list[int] = Field(default_factory=lambda: [42, 43, 44])
    eval_seed: int = 42  # candidates and tie-breaking: the same for every model seed
    set: list[str] = Field(default_factory=list)  # shared by every row (e.g. the epoch budget)
    rows: list[StudyRow]

    @model_validator(mode="after")
    def _check(self) -> StudySpec:
        if not _SLUG.match(self.name):
            raise ValueError(f"study name {self.name!r}: letters, digits and _.+- only")
        if not self.rows or not self.seeds:
            raise ValueError("a study needs at least one row and one seed")
        seen: dict[str, StudyRow] = {}
        for row in self.rows:
            if row.name in seen:
                raise ValueError(f"row {row.name!r} appears twice")
            for ref, what in ((row.checkpoint_of, "checkpoint_of"), (row.vs, "vs")):
                if ref is not None and ref not in seen:
                    raise ValueError(f"row {row.name!r}: {what} {ref!r} is not an earlier row")
            if row.checkpoint_of is not None:
                owner = seen[row.checkpoint_of]
                if owner.model != row.model or row.set:
                    raise ValueError(
                        f"row {row.name!r}: checkpoint_of {owner.name!r} needs the same model "
                        "and no training settings of its own (use score_set)"
                    )
            seen[row.name] = row
        for protocol in self.protocols:
            transfers(protocol, self.history_from)  # raises on a bad protocol
        return self

    def row(self, name: str) -> StudyRow:
        return next(r for r in self.rows if r.name == name)


def transfers(protocol: str, history_from: Sequence[str]) -> list[Transfer]:
    """``in-domain`` -> one protocol; ``SOURCE:TARGET`` -> one per history mode."""
    if protocol == "in-domain":
        return [Transfer()]
    try:
        return [Transfer.parse(protocol, h) for h in history_from]
    except TransferError as exc:
        raise ValueError(str(exc)) from None


def load_study(path: Path) -> StudySpec:
    """Read and check a study file; errors name the file and the field."""
    if not path.is_file():
        raise StudyError(f"study file {path}: not found")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise StudyError(f"study file {path}: cannot parse: {exc}") from None
    try:
        return StudySpec(**raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'top level'}: {err['msg']}"
            for err in exc.errors()
        )
        raise StudyError(f"study file {path}: {problems}") from None


def study_dir(settings: Settings, spec: StudySpec) -> Path:
    return settings.work_dir / "studies" / spec.name


def trained_rows(spec: StudySpec) -> list[StudyRow]:
    """Rows that own checkpoints: a trainable model, not scoring another row's."""
    return [
        r for r in spec.rows if r.checkpoint_of is None and recommender_class(r.model).trainable
    ]


def checkpoint_dir(root: Path, transfer: Transfer, row: str, seed: int) -> Path:
    return root / "checkpoints" / transfer.model_tag / row / f"seed{seed}"


def _has_run(path: Path) -> bool:
    return is_checkpoint(path) and (path / FIT_REPORT_FILE).is_file()


# ---- 1-2: training ------------------------------------------------------------------------


@dataclass
class TrainJob:
    row: str
    seed: int
    transfer: Transfer
    out: Path
    argv: list[str]
    log_path: Path
    returncode: int | None = None

    @property
    def label(self) -> str:
        return f"{self.transfer.model_tag}/{self.row}/seed{self.seed}"


def plan_training(
    spec: StudySpec,
    root: Path,
    *,
    base_args: Sequence[str] = (),
    seeds: Sequence[int] | None = None,
) -> list[TrainJob]:
    """The jobs still to run, seed by seed (a partial run ends with whole seeds done).

    ``base_args`` are the global CLI options every job repeats (``--config``, ``--set``).
    """
    jobs: list[TrainJob] = []
    models = trained_rows(spec)
    for seed in seeds or spec.seeds:
        for protocol in spec.protocols:
            transfer = transfers(protocol, ["target"])[0]  # training ignores history_from
            for row in models:
                out = checkpoint_dir(root, transfer, row.name, seed)
                if _has_run(out):
                    continue
                argv = [sys.executable, "-m", "agent.cli", *base_args]
                for item in [*spec.set, *row.set]:
                    argv += ["--set", item]
                argv += ["train", "--model", row.model, "--seed", str(seed), "--out", str(out)]
                if transfer.zero_shot:
                    argv += ["--transfer", transfer.spec]
                log_path = root / "logs" / f"{transfer.model_tag}-{row.name}-seed{seed}.log"
                jobs.append(TrainJob(row.name, seed, transfer, out, argv, log_path))
    return jobs


def _run_job(job: TrainJob) -> TrainJob:
    job.log_path.parent.mkdir(parents=True, exist_ok=True)
    with job.log_path.open("w", encoding="utf-8") as sink:
        job.returncode = subprocess.run(
            job.argv, stdout=sink, stderr=subprocess.STDOUT, check=False
        ).returncode
    return job


def run_training(jobs: list[TrainJob], workers: int) -> list[TrainJob]:
    """Run the jobs, ``workers`` at a time; returns the failed ones (their logs say why)."""
    if not jobs:
        return []
    failed: list[TrainJob] = []
    with (
        ThreadPoolExecutor(max_workers=max(1, workers)) as pool,
        tqdm(total=len(jobs), unit="run", desc="train") as bar,
    ):
        futures = [pool.submit(_run_job, job) for job in jobs]
        for future in as_completed(futures):
            job = future.result()
            bar.update(1)
            if job.returncode != 0 or not _has_run(job.out):
                failed.append(job)
                log.error("%s failed (exit %s): see %s", job.label, job.returncode, job.log_path)
            else:
                log.info("%s trained: %s", job.label, job.out)
    return failed


# ---- 3: evaluation -------------------------------------------------------------------------


@dataclass
class Cell:
    """One (protocol, row, seed) result: metrics per group, and what training cost."""

    tag: str
    row: str
    seed: int | None  # None: a model that needs no training (one deterministic result)
    metrics: dict[str, dict[str, float]]  # group -> metric -> value
    n_users: dict[str, int]
    fit: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": RESULT_VERSION,
            "tag": self.tag,
            "row": self.row,
            "seed": self.seed,
            "metrics": self.metrics,
            "n_users": self.n_users,
            "fit": self.fit,
        }


def _cell(tag: str, row: str, seed: int | None, result: EvalResult, fit: dict[str, Any]) -> Cell:
    metrics = {
        g: {m: float(v.mean) for m, v in ms.items() if m in METRICS}
        for g, ms in result.metrics.items()
    }
    return Cell(tag, row, seed, metrics, dict(result.n_users_by_group), fit)


def _fit_summary(path: Path) -> dict[str, Any]:
    body = json.loads((path / FIT_REPORT_FILE).read_text(encoding="utf-8"))
    return {k: body.get(k) for k in ("epochs", "best_epoch", "best_valid_ndcg10", "seconds")} | {
        "seconds_per_epoch": body.get("seconds_per_epoch"),
    }


def _cached(path: Path, stamp: float) -> Cell | None:
    if not path.is_file():
        return None
    body = json.loads(path.read_text(encoding="utf-8"))
    if body.get("version") != RESULT_VERSION or body.get("checkpoint_mtime") != stamp:
        return None
    return Cell(
        body["tag"], body["row"], body["seed"], body["metrics"], body["n_users"], body["fit"]
    )


def row_settings(
    config_file: Path | None, base_set: Sequence[str], spec: StudySpec, row: StudyRow
) -> Settings:
    """The row's settings for scoring: everything its training saw, its score_set, eval_seed."""
    owner = spec.row(row.checkpoint_of) if row.checkpoint_of else row
    items = [*base_set, *spec.set, *owner.set, *row.score_set, f"seed={spec.eval_seed}"]
    return load_settings(config_file, set_items=items)


def check_row_settings(
    spec: StudySpec, config_file: Path | None = None, base_set: Sequence[str] = ()
) -> None:
    """Every row's settings must load before any training starts (hours later is too late)."""
    for row in spec.rows:
        try:
            row_settings(config_file, base_set, spec, row)
        except ConfigError as exc:
            raise StudyError(f"study {spec.name!r}, row {row.name!r}: {exc}") from None


def evaluate_study(
    spec: StudySpec,
    full: Dataset,
    root: Path,
    *,
    config_file: Path | None = None,
    base_set: Sequence[str] = (),
    seeds: Sequence[int] | None = None,
) -> list[Cell]:
    """Score every checkpoint on disk (cached per checkpoint); missing ones are skipped."""
    cells: list[Cell] = []
    base = load_settings(config_file, set_items=[*base_set, *spec.set, f"seed={spec.eval_seed}"])
    for protocol in spec.protocols:
        for transfer in transfers(protocol, spec.history_from):
            data, _ = apply_transfer(full, transfer)
            evaluator = RankingEvaluator(data, transfer_settings(base, transfer))
            log.info("%s: %d test users", transfer.label, len(evaluator.users))
            for row in spec.rows:
                settings = transfer_settings(
                    row_settings(config_file, base_set, spec, row), transfer
                )
                owner = row.checkpoint_of or row.name
                row_seeds: list[int | None] = (
                    list(seeds or spec.seeds) if recommender_class(row.model).trainable else [None]
                )
                for seed in row_seeds:
                    cell = _evaluate_one(
                        evaluator, data, settings, root, transfer, row, owner, seed
                    )
                    if cell is not None:
                        cells.append(cell)
    return cells


def _evaluate_one(
    evaluator: RankingEvaluator,
    data: Dataset,
    settings: Settings,
    root: Path,
    transfer: Transfer,
    row: StudyRow,
    owner: str,
    seed: int | None,
) -> Cell | None:
    tag = transfer.tag
    cache = root / "results" / tag / f"{row.name}-{'det' if seed is None else f'seed{seed}'}.json"
    ckpt = None if seed is None else checkpoint_dir(root, transfer, owner, seed)
    fit: dict[str, Any] = {}
    stamp = 0.0
    if ckpt is not None:
        if not _has_run(ckpt):
            log.warning("%s %s seed %d: no checkpoint at %s (skipped)", tag, row.name, seed, ckpt)
            return None
        stamp = (ckpt / FIT_REPORT_FILE).stat().st_mtime
        fit = _fit_summary(ckpt)
    cached = _cached(cache, stamp)
    if cached is not None:
        return cached
    prep = prepare_model(row.model, data, settings, checkpoint=ckpt)
    result = evaluator(prep.model, name=row.name)
    cell = _cell(tag, row.name, seed, result, fit)
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(
        json.dumps(cell.to_dict() | {"checkpoint_mtime": stamp}, indent=1), encoding="utf-8"
    )
    log.info(
        "%s %s%s: NDCG@10 %.4f",
        tag,
        row.name,
        "" if seed is None else f" seed {seed}",
        result.primary,
    )
    return cell


# ---- 4: aggregation and report -------------------------------------------------------------


@dataclass
class Stat:
    mean: float
    sd: float  # sample standard deviation over seeds; 0 for one value
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Stat:
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return cls(statistics.fmean(values), sd, len(values))

    def text(self, digits: int = 3) -> str:
        return f"{self.mean:.{digits}f} ± {self.sd:.{digits}f}"


@dataclass
class RowSummary:
    tag: str
    row: str
    n_seeds: int
    deterministic: bool
    metrics: dict[str, dict[str, Stat]]  # group -> metric -> stat over seeds
    n_users: dict[str, int]
    vs: str | None = None
    delta: Stat | None = None  # paired per-seed overall NDCG@10 minus the reference row's
    seconds_per_epoch: Stat | None = None
    epochs: Stat | None = None
    best_epoch: Stat | None = None


def aggregate(spec: StudySpec, cells: list[Cell]) -> list[RowSummary]:
    by_key: dict[tuple[str, str], list[Cell]] = {}
    for cell in cells:
        by_key.setdefault((cell.tag, cell.row), []).append(cell)
    out: list[RowSummary] = []
    for (tag, row_name), group in by_key.items():
        row = spec.row(row_name)
        metrics = {
            g: {m: Stat.of([c.metrics[g][m] for c in group]) for m in METRICS}
            for g in group[0].metrics
        }
        summary = RowSummary(
            tag,
            row_name,
            len(group),
            group[0].seed is None,
            metrics,
            group[0].n_users,
            vs=row.vs,
        )
        fits = [c.fit for c in group if c.fit]
        if fits:
            summary.seconds_per_epoch = Stat.of([f["seconds_per_epoch"] for f in fits])
            summary.epochs = Stat.of([f["epochs"] for f in fits])
            summary.best_epoch = Stat.of([f["best_epoch"] for f in fits])
        if row.vs is not None:
            ref = {c.seed: c for c in by_key.get((tag, row.vs), [])}
            diffs = [
                c.metrics["overall"]["ndcg@10"]
                - (ref[c.seed] if c.seed in ref else ref[None]).metrics["overall"]["ndcg@10"]
                for c in group
                if c.seed in ref or None in ref
            ]
            summary.delta = Stat.of(diffs) if diffs else None
        out.append(summary)
    order = {r.name: i for i, r in enumerate(spec.rows)}
    return sorted(out, key=lambda s: (s.tag, order[s.row]))


def study_markdown(
    spec: StudySpec,
    summaries: list[RowSummary],
    failed: Sequence[str],
    seeds: Sequence[int] | None = None,
) -> str:
    lines = [f"# Study `{spec.name}`", ""]
    if spec.description:
        lines += [spec.description.strip(), ""]
    lines += [
        f"Seeds {', '.join(map(str, seeds or spec.seeds))} (mean ± sample sd over the seeds "
        f"that ran; n = seeds); candidates and tie-breaking seeded by {spec.eval_seed} for "
        "every model. "
        f"Shared settings: {', '.join(f'`{s}`' for s in spec.set) or 'defaults'}.",
        "",
    ]
    for tag in dict.fromkeys(s.tag for s in summaries):
        rows = [s for s in summaries if s.tag == tag]
        groups = [g for g in rows[0].metrics if g != "overall"]
        users = ", ".join(f"{g} {rows[0].n_users.get(g, 0)}" for g in groups)
        lines += [f"## {tag} (test users: {users})", ""]
        head = ["row", "n"]
        for g in groups:
            head += [f"{g} HR@10", f"{g} NDCG@10"]
        if len(groups) > 1:
            head += ["overall NDCG@10"]
        head += ["Δ NDCG@10 vs", "s/epoch", "epochs (best)"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" + "---:|" * (len(head) - 1)]
        for s in rows:
            cols = [f"`{s.row}`", "det." if s.deterministic else str(s.n_seeds)]
            for g in groups:
                cols += [s.metrics[g]["hr@10"].text(), s.metrics[g]["ndcg@10"].text()]
            if len(groups) > 1:
                cols += [s.metrics["overall"]["ndcg@10"].text()]
            cols += [f"{s.delta.text()} ({s.vs})" if s.delta and s.vs else ""]
            cols += [f"{s.seconds_per_epoch.mean:.1f}" if s.seconds_per_epoch else ""]
            cols += [
                f"{s.epochs.mean:.1f} ({s.best_epoch.mean:.1f})"
                if s.epochs and s.best_epoch
                else ""
            ]
            lines.append("| " + " | ".join(cols) + " |")
        lines.append("")
    notes = [f"- `{r.name}`: {r.note}" for r in spec.rows if r.note]
    if notes:
        lines += ["Rows:", *notes, ""]
    if failed:
        lines += ["Training runs that failed (their cells are empty):", ""]
        lines += [f"- {f}" for f in failed] + [""]
    return "\n".join(lines)


def write_study(
    root: Path,
    spec: StudySpec,
    summaries: list[RowSummary],
    failed: Sequence[str],
    seeds: Sequence[int] | None = None,
) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    md = root / "study.md"  # and study.json, study.png
    md.write_text(study_markdown(spec, summaries, failed, seeds), encoding="utf-8")

    def stat(s: Stat | None) -> dict[str, float] | None:
        return None if s is None else {"mean": s.mean, "sd": s.sd, "n": s.n}

    body = {
        "study": spec.model_dump(),
        "seeds": list(seeds or spec.seeds),
        "failed": list(failed),
        "rows": [
            {
                "tag": s.tag,
                "row": s.row,
                "n_seeds": s.n_seeds,
                "deterministic": s.deterministic,
                "n_users": s.n_users,
                "metrics": {g: {m: stat(v) for m, v in ms.items()} for g, ms in s.metrics.items()},
                "vs": s.vs,
                "delta_ndcg10": stat(s.delta),
                "seconds_per_epoch": stat(s.seconds_per_epoch),
                "epochs": stat(s.epochs),
                "best_epoch": stat(s.best_epoch),
            }
            for s in summaries
        ],
    }
    (root / "study.json").write_text(json.dumps(body, indent=1), encoding="utf-8")
    panels: dict[str, list[tuple[str, float, float]]] = {}
    for s in summaries:
        stat_ = s.metrics["overall"]["ndcg@10"]
        panels.setdefault(s.tag, []).append((s.row, stat_.mean, stat_.sd))
    if panels:
        plot_study(panels, root / "study.png", f"study {spec.name}: test users")
    return md
