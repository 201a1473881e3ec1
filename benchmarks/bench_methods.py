"""Training cost of each trained model: seconds per epoch and peak memory, one process per model.

    python -m benchmarks.bench_methods --out runs/bench/methods.json [--epochs 1] [--data DIR]
        [--models sasrec-id,sasrec-text,llm4cdsr,llm-recg-sasrec,llm-recg-gru4rec,semacdr]
        [--device cpu|cuda] [--timeout-s 3600] [--config FILE] [--set key=value ...]

Models (``VARIANTS``: registry name + the settings it runs with):

- ``sasrec-id``, ``sasrec-text``, ``sasrec-hybrid``, ``gru4rec``: the sequential baselines
  (``train.loss`` as set, bce by default).
- ``sasrec-id-ce``, ``sasrec-id-sampled-softmax``, ``sasrec-id-gbce``: sasrec-id with each
  other loss (its default number of negatives), for the cost of the loss alone.
- ``llm4cdsr``: the full method (contrastive regularization, both domain threads, the profile
  term on the train users with a cached profile).
- ``llm-recg-sasrec``, ``llm-recg-gru4rec``: LLM-RecG on each backbone; the fusion phase runs
  ``--epochs`` epochs too and is timed apart (``fusion_s_per_epoch``).
- ``semacdr``: with ``methods.semantics.max_items=0``: the cached LLM views only, no LLM call.

Each model is trained for ``--epochs`` epochs on the whole train split of ``--data`` (no early
stopping, no validation) in its OWN subprocess, so its peak resident memory is its own: the
peak RSS is the child's ``VmHWM`` (/proc/self/status: the high-water mark of this process's
memory map, which ``ru_maxrss`` is not after fork + exec), with the RSS after loading the data
beside it; on CUDA also ``torch.cuda.max_memory_allocated``. Seconds per epoch are the
trainer's own (the batches, not the data loading or model set-up, which are timed apart). A
model that fails is recorded with its error and the others go on; the exit code is then 1.

Writes ``--out`` (JSON: results, settings, git commit, host) and the same path with ``.md`` (a
Markdown table); each child's log goes to ``<out stem>.logs/<model>.log``. Not a test.

Before/after on one machine in one run (the speed work of the trainer):

    python -m benchmarks.bench_methods --revisions before=f94e523,after=worktree \
        --repeats 2 --max-batches 100 --models sasrec-id,gru4rec --out runs/bench/speed.json

- ``--revisions NAME=REV,...``: each model is trained under each revision's code (``git
  archive REV`` unpacked in a temporary folder and put first on the child's PYTHONPATH;
  ``worktree`` = this checkout as it is), with this file's harness and the same settings and
  ``work_dir`` (so every revision reads the same embedding cache).
- ``--repeats N``: the runs interleave (model 1: A B, A B, ...; then model 2), so load from
  other jobs on a shared machine falls on both sides alike; the table reports medians.
- ``--max-batches N``: each epoch stops after ``WARMUP_BATCHES`` untimed and N timed batches
  (0: whole epochs, all timed), the same batches for every revision (the batch order is
  seeded); s/epoch is scaled to the whole epoch.

Besides wall seconds each row has the child's CPU seconds per epoch (``cpu_s_per_epoch``,
process time over the batches): with one torch thread on a busy machine, wall time mostly
measures the other jobs, CPU time the code.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from agent.config import Settings, load_settings
from agent.logging_setup import setup_logging
from eval.runinfo import run_info

log = logging.getLogger("benchmarks.methods")

# variant -> (registry name, --set items that make the variant; they win over the user's --set)
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "sasrec-id": ("sasrec-id", []),
    "sasrec-text": ("sasrec-text", []),
    "sasrec-hybrid": ("sasrec-hybrid", []),
    "gru4rec": ("gru4rec", []),
    # the losses on sasrec-id (agent/models/ranking.py); bce is the row above
    "sasrec-id-ce": ("sasrec-id", ["train.loss=ce"]),
    "sasrec-id-sampled-softmax": ("sasrec-id", ["train.loss=sampled-softmax"]),
    "sasrec-id-gbce": ("sasrec-id", ["train.loss=gbce"]),
    "llm4cdsr": ("llm4cdsr", []),
    "llm-recg-sasrec": ("llm-recg", ["methods.llm_recg.backbone=sasrec"]),
    "llm-recg-gru4rec": ("llm-recg", ["methods.llm_recg.backbone=gru4rec"]),
    "semacdr": ("semacdr", ["methods.semantics.max_items=0"]),
}
DEFAULT_OUT = Path("runs/bench/methods.json")
LOG_TAIL_LINES = 15
REPO = Path(__file__).resolve().parents[1]
WORKTREE = "worktree"  # --revisions: this checkout, uncommitted changes included
WARMUP_BATCHES = 5  # --max-batches: run, not timed, before the timed ones

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM) in MB; ru_maxrss where /proc is missing."""
    try:
        for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def current_rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


@dataclass(frozen=True)
class Options:
    """What the parent passes on to every child (its own command line, minus --models)."""

    data: Path | None
    epochs: int
    device: str | None
    config: Path | None
    set_items: list[str]
    log_level: str
    max_batches: int = 0
    work_dir: Path | None = None

    def argv(self) -> list[str]:
        out = ["--epochs", str(self.epochs), "--log-level", self.log_level]
        out += ["--max-batches", str(self.max_batches)]
        if self.work_dir is not None:
            out += ["--work-dir", str(self.work_dir)]
        if self.data is not None:
            out += ["--data", str(self.data)]
        if self.device is not None:
            out += ["--device", self.device]
        if self.config is not None:
            out += ["--config", str(self.config)]
        for item in self.set_items:
            out += ["--set", item]
        return out

    def settings(self, variant: str | None = None) -> Settings:
        overrides: dict[str, Any] = {
            "data.path": str(self.data) if self.data else None,
            "work_dir": str(self.work_dir) if self.work_dir else None,
            "train.epochs": self.epochs,
            "train.device": self.device,
            # LLM-RecG's second phase (W_f alone) is timed over as many epochs as the first.
            "methods.llm_recg.fusion_epochs": self.epochs,
        }
        extra = VARIANTS[variant][1] if variant else []
        return load_settings(self.config, overrides=overrides, set_items=[*self.set_items, *extra])


def _phase_seconds(history: list[dict[str, float]], fusion: bool) -> list[float]:
    return [
        e["seconds"]
        for e in history
        if "seconds" in e and (e.get("phase", 1.0) == 2.0) == fusion and e.get("epoch", 0) > 0
    ]


def _parameters(model: Any) -> int | None:
    from torch import nn

    nets = [v for v in vars(model).values() if isinstance(v, nn.Module)]
    if not nets:
        return None
    return sum(p.numel() for net in nets for p in net.parameters() if p.requires_grad)


@dataclass
class EpochClock:
    """Wall and CPU seconds of each pass over the trainer's batch sampler, stopped after
    ``max_batches`` batches when set (see ``clock_batches``)."""

    max_batches: int
    epochs: list[dict[str, float]]


def clock_batches(max_batches: int) -> EpochClock:
    """Time every epoch of ``fit_loop`` (and stop it after ``WARMUP_BATCHES`` untimed and
    ``max_batches`` timed batches; 0 = the whole epoch, all timed)
    by wrapping its batch sampler, ``LengthPoolBatchSampler``, the one class every revision
    of the trainer iterates: a pass starts when the first batch is asked for and ends when the
    trainer asks past the last one, so it covers every step of the epoch and nothing else."""
    from agent.models import training

    clock = EpochClock(max_batches, [])
    sampler = training.LengthPoolBatchSampler
    full_iter = sampler.__iter__

    def timed_iter(self: Any) -> Iterator[list[int]]:
        # a bounded pass leaves its first WARMUP_BATCHES out of the clock (first-touch
        # allocations, lazy set-up): few batches then measure the steady step
        skip = WARMUP_BATCHES if max_batches else 0
        wall, cpu = time.perf_counter(), time.process_time()
        batches = 0
        for batch in full_iter(self):
            if max_batches and batches >= max_batches + skip:
                break
            if batches == skip:
                wall, cpu = time.perf_counter(), time.process_time()
            batches += 1
            yield batch
        clock.epochs.append(
            {
                "batches": float(max(batches - skip, 0)),
                "warmup_batches": float(min(skip, batches)),
                "of": float(len(self)),
                "wall_s": time.perf_counter() - wall,
                "cpu_s": time.process_time() - cpu,
            }
        )

    sampler.__iter__ = timed_iter  # type: ignore[method-assign]
    return clock


def _per_epoch(clock: EpochClock, key: str) -> float | None:
    """Mean seconds per whole epoch (a bounded pass scaled by batches of the epoch / run)."""
    values = [e[key] * e["of"] / e["batches"] for e in clock.epochs if e["batches"] > 0]
    return sum(values) / len(values) if values else None


def measure(variant: str, options: Options) -> dict[str, Any]:
    """In the child: load the data, build the model, train it; times and memory."""
    from agent.data.loader import load_dataset
    from agent.models.registry import build_recommender

    name = VARIANTS[variant][0]
    settings = options.settings(variant)
    clock = clock_batches(options.max_batches)
    started = time.perf_counter()
    data = load_dataset(settings.data)
    loaded = time.perf_counter()
    rss_data = current_rss_mb()
    model = build_recommender(name, data, settings)
    with tempfile.TemporaryDirectory(prefix="recbridge-bench-methods-") as tmp:
        fit_start = time.perf_counter()
        fit_cpu = time.process_time()
        report = model.fit(valid_fn=None, out=Path(tmp) / variant)
        fit_seconds = time.perf_counter() - fit_start
        fit_cpu = time.process_time() - fit_cpu
    phase1 = _phase_seconds(report.history, fusion=False)
    fusion = _phase_seconds(report.history, fusion=True)
    passes = clock.epochs[: len(phase1)]  # LLM-RecG: phase-1 passes first, then fusion's
    phase1_clock = EpochClock(options.max_batches, passes)
    out: dict[str, Any] = {
        "model": variant,
        "registry_name": name,
        "variant_settings": VARIANTS[variant][1],
        "status": "ok",
        "epochs": len(phase1),
        # the trainer's own seconds, scaled from a bounded pass when --max-batches is set
        "s_per_epoch": _per_epoch(phase1_clock, "wall_s")
        if options.max_batches
        else (sum(phase1) / len(phase1) if phase1 else None),
        "cpu_s_per_epoch": _per_epoch(phase1_clock, "cpu_s"),
        "max_batches": options.max_batches,
        "batch_passes": clock.epochs,
        "fit_cpu_seconds": fit_cpu,
        "fusion_epochs": len(fusion),
        "fusion_s_per_epoch": sum(fusion) / len(fusion) if fusion else None,
        "fit_seconds": fit_seconds,
        "setup_seconds": fit_start - loaded,  # model build: embeddings, PCA, LLM views ...
        "load_seconds": loaded - started,
        "train_users": sum(1 for _ in data.iter_split("train")),
        "items": len(data.items),
        "parameters": _parameters(model),
        "device": settings.train.device,
        "threads": settings.train.threads,
        "rss_after_data_mb": rss_data,
        "peak_rss_mb": peak_rss_mb(),
        "history": report.history,
    }
    if settings.train.device.startswith("cuda"):
        import torch

        out["cuda_peak_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def run_child(
    variant: str,
    options: Options,
    log_dir: Path,
    timeout_s: float,
    tree: Path = REPO,
    tag: str = "",
) -> dict[str, Any]:
    """``measure(variant)`` in a fresh interpreter on the code in ``tree`` (this file's harness,
    ``tree`` first on the import path); its result, or why there is none."""
    log_path = log_dir / f"{variant}{'.' + tag if tag else ''}.log"
    with tempfile.TemporaryDirectory(prefix="recbridge-bench-methods-") as tmp:
        result_path = Path(tmp) / "result.json"
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            *options.argv(),
            "--worker",
            variant,
            "--result",
            str(result_path),
        ]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(tree), *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])]
        )
        log.info(
            "%s%s: training %d epoch(s) in a subprocess (log %s)",
            variant,
            f" [{tag}]" if tag else "",
            options.epochs,
            log_path,
        )
        started = time.perf_counter()
        with log_path.open("w", encoding="utf-8") as log_file:
            try:
                done = subprocess.run(
                    cmd,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    timeout=timeout_s,
                    check=False,
                    cwd=tree,
                    env=env,
                )
                code: int | str = done.returncode
            except subprocess.TimeoutExpired:
                code = f"timeout after {timeout_s:.0f} s"
        wall = time.perf_counter() - started
        if code == 0 and result_path.is_file():
            result: dict[str, Any] = json.loads(result_path.read_text(encoding="utf-8"))
        else:
            tail = log_path.read_text(encoding="utf-8", errors="replace").splitlines()
            result = {
                "model": variant,
                "registry_name": VARIANTS[variant][0],
                "status": "failed",
                "error": f"exit {code}",
                "log_tail": tail[-LOG_TAIL_LINES:],
            }
    result["process_seconds"] = wall
    result["log"] = str(log_path)
    return result


def _num(value: Any, fmt: str) -> str:
    return "–" if value is None else format(value, fmt)


def markdown_table(results: list[dict[str, Any]], header: str) -> str:
    lines = [
        header,
        "",
        "| model | epochs | s/epoch | fusion s/epoch | fit s | set-up s | peak RSS MB "
        "| RSS after data MB | parameters | device | status |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in results:
        status = r["status"] if r["status"] == "ok" else f"{r['status']}: {r.get('error', '')}"
        device = r.get("device", "–")
        if r.get("cuda_peak_allocated_mb") is not None:
            device = f"{device} (peak {r['cuda_peak_allocated_mb']:.0f} MB allocated)"
        lines.append(
            f"| {r['model']} | {_num(r.get('epochs'), 'd')} | {_num(r.get('s_per_epoch'), '.2f')} "
            f"| {_num(r.get('fusion_s_per_epoch'), '.2f')} | {_num(r.get('fit_seconds'), '.1f')} "
            f"| {_num(r.get('setup_seconds'), '.1f')} | {_num(r.get('peak_rss_mb'), '.0f')} "
            f"| {_num(r.get('rss_after_data_mb'), '.0f')} | {_num(r.get('parameters'), ',d')} "
            f"| {device} | {status} |"
        )
    return "\n".join(lines) + "\n"


def parse_revisions(text: str) -> list[tuple[str, str]]:
    """``NAME=REV,...`` -> [(name, rev)]; a bare ``REV`` is its own name."""
    out: list[tuple[str, str]] = []
    for part in (p.strip() for p in text.split(",")):
        if part:
            name, _, rev = part.partition("=")
            out.append((name.strip(), (rev or name).strip()))
    if len({name for name, _ in out}) != len(out):
        raise typer.BadParameter(f"revision names repeat in {text!r}", param_hint="--revisions")
    return out


def unpack_revision(rev: str, dest: Path) -> str:
    """``git archive rev`` of this repository unpacked into ``dest``; the full commit id."""
    commit = subprocess.run(
        ["git", "rev-parse", "--verify", f"{rev}^{{commit}}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    archive = dest.with_suffix(".tar")
    with archive.open("wb") as handle:
        subprocess.run(["git", "archive", commit], cwd=REPO, stdout=handle, check=True)
    dest.mkdir(parents=True)
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    archive.unlink()
    return commit


def _median(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows if r.get("status") == "ok" and r.get(key) is not None]
    return statistics.median(values) if values else None


def compare_table(
    results: list[dict[str, Any]], names: list[str], revisions: list[str], header: str
) -> tuple[list[dict[str, Any]], str]:
    """Medians per model and revision, the ratio of the first revision's to each other's, and
    their Markdown table."""
    summary: list[dict[str, Any]] = []
    for name in names:
        row: dict[str, Any] = {"model": name}
        for rev in revisions:
            runs = [r for r in results if r["model"] == name and r.get("revision") == rev]
            row[rev] = {
                "runs": len(runs),
                "ok": sum(r.get("status") == "ok" for r in runs),
                "s_per_epoch": _median(runs, "s_per_epoch"),
                "cpu_s_per_epoch": _median(runs, "cpu_s_per_epoch"),
                "peak_rss_mb": _median(runs, "peak_rss_mb"),
            }
        summary.append(row)
    base, others = revisions[0], revisions[1:]
    cols = ["model"]
    for rev in revisions:
        cols += [f"{rev} s/epoch", f"{rev} CPU s/epoch", f"{rev} peak RSS MB"]
    cols += [f"CPU speed-up {rev} vs {base}" for rev in others]
    lines = [header, "", "| " + " | ".join(cols) + " |", "|---" + "|---:" * (len(cols) - 1) + "|"]
    for row in summary:
        cells = [row["model"]]
        for rev in revisions:
            r = row[rev]
            cells += [
                _num(r["s_per_epoch"], ".1f"),
                _num(r["cpu_s_per_epoch"], ".1f"),
                _num(r["peak_rss_mb"], ".0f"),
            ]
        for rev in others:
            a, b = row[base]["cpu_s_per_epoch"], row[rev]["cpu_s_per_epoch"]
            cells.append(f"{a / b:.2f}x" if a and b else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return summary, "\n".join(lines) + "\n"


@app.command()
def main(
    out: Annotated[Path, typer.Option(help="JSON file to write (the table: same path, .md).")] = (
        DEFAULT_OUT
    ),
    data: Annotated[Path | None, typer.Option(help="Data folder (data.path).")] = None,
    models: Annotated[str, typer.Option(help=f"Comma list of {', '.join(VARIANTS)}.")] = ",".join(
        VARIANTS
    ),
    epochs: Annotated[int, typer.Option(min=1, help="Training epochs per model.")] = 1,
    device: Annotated[str | None, typer.Option(help="cpu or cuda (train.device).")] = None,
    timeout_s: Annotated[float, typer.Option(help="Time limit per model, seconds.")] = 3600.0,
    config: Annotated[Path | None, typer.Option(help="Settings file.")] = None,
    set_items: Annotated[
        list[str] | None, typer.Option("--set", help="section.key=value (repeatable).")
    ] = None,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING, ERROR.")] = "INFO",
    max_batches: Annotated[
        int, typer.Option(min=0, help="Batches per epoch (0 = all); s/epoch is scaled up.")
    ] = 0,
    revisions: Annotated[
        str | None,
        typer.Option(help=f"NAME=REV,... git revisions to compare ({WORKTREE}: this checkout)."),
    ] = None,
    repeats: Annotated[int, typer.Option(min=1, help="Interleaved runs per model.")] = 1,
    work_dir: Annotated[Path | None, typer.Option(help="work_dir of every child.")] = None,
    worker: Annotated[str | None, typer.Option(hidden=True)] = None,
    result: Annotated[Path | None, typer.Option(hidden=True)] = None,
) -> None:
    """Training seconds per epoch and peak memory of each model, each in its own process."""
    setup_logging(log_level)
    options = Options(
        data, epochs, device, config, list(set_items or []), log_level, max_batches, work_dir
    )
    if worker is not None:  # the child: one model, result to --result
        if result is None or worker not in VARIANTS:
            raise typer.BadParameter("--worker needs a known model and --result")
        result.write_text(json.dumps(measure(worker, options), indent=1), encoding="utf-8")
        return
    names = [m.strip() for m in models.split(",") if m.strip()]
    unknown = [m for m in names if m not in VARIANTS]
    if unknown or not names:
        raise typer.BadParameter(
            f"unknown {', '.join(unknown) or 'none given'}; choose from {', '.join(VARIANTS)}",
            param_hint="--models",
        )
    settings = options.settings()  # fails here, once, on a bad --set or --config
    # every child (an older revision's too) reads the same caches: embeddings, candidates
    options = Options(**{**vars(options), "work_dir": settings.work_dir.resolve()})
    log_dir = out.parent / f"{out.stem}.logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results = []
    revs = parse_revisions(revisions) if revisions else []
    with tempfile.TemporaryDirectory(prefix="recbridge-bench-revisions-") as tmp:
        trees: dict[str, tuple[Path, str]] = {}
        for rev_name, rev in revs:
            if rev == WORKTREE:
                trees[rev_name] = (REPO, WORKTREE)
            else:
                trees[rev_name] = (Path(tmp) / rev_name, "")
                commit = unpack_revision(rev, trees[rev_name][0])
                trees[rev_name] = (trees[rev_name][0], commit)
                log.info("revision %s = %s unpacked in %s", rev_name, commit, trees[rev_name][0])
        for name in names:
            for rep in range(repeats):
                for rev_name, (tree, commit) in trees.items() or [("", (REPO, ""))]:
                    tag = ".".join(x for x in (rev_name, str(rep) if repeats > 1 else "") if x)
                    row = run_child(name, options, log_dir, timeout_s, tree, tag)
                    if rev_name:
                        row |= {"revision": rev_name, "commit": commit, "repeat": rep}
                    results.append(row)
                    if row["status"] == "ok":
                        log.info(
                            "%s%s: %.2f s/epoch (CPU %.2f), peak RSS %.0f MB "
                            "(%.0f MB after loading the data)",
                            name,
                            f" [{tag}]" if tag else "",
                            row["s_per_epoch"] or float("nan"),
                            row.get("cpu_s_per_epoch") or float("nan"),
                            row["peak_rss_mb"],
                            row["rss_after_data_mb"],
                        )
                    else:
                        log.error("%s failed (%s); log %s", name, row.get("error"), row["log"])
    info = run_info()
    payload = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "argv": sys.argv[1:],
        "params": {
            "data": str(settings.data.path),
            "models": names,
            "epochs": epochs,
            "max_batches": max_batches,
            "revisions": revs,
            "repeats": repeats,
            "device": settings.train.device,
            "timeout_s": timeout_s,
            "config": str(config) if config else None,
            "set_items": options.set_items,
        },
        **info,
        "load_avg": os.getloadavg(),
        "results": results,
        "total_seconds": time.perf_counter() - started,
        "settings": settings.model_dump(mode="json"),
    }
    bounded = (
        f", {max_batches} timed batches of each after {WARMUP_BATCHES} untimed ones"
        if max_batches
        else ""
    )
    header = (
        f"Training cost on `{settings.data.path}`, {epochs} epoch(s) per model{bounded}, each "
        f"model in its own process (peak RSS = VmHWM of that process), train.threads "
        f"{settings.train.threads}, load average at the end {os.getloadavg()[0]:.1f}."
    )
    if revs:
        rev_names = [name for name, _ in revs]
        described = ", ".join(f"{name} = {trees_commit}" for name, trees_commit in revs)
        header += (
            f" Revisions {described}; {repeats} interleaved run(s) per model and revision, medians."
        )
        payload["summary"], table = compare_table(results, names, rev_names, header)
    else:
        table = markdown_table(results, header)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    md = out.with_suffix(".md")
    md.write_text(table, encoding="utf-8")
    log.info("benchmark written to %s and %s", out, md)
    if any(r["status"] != "ok" for r in results):
        raise typer.Exit(code=1)


if __name__ == "__main__":
    app()
