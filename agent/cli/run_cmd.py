"""``recbridge run``: the main job on the embedded defaults, end to end.

data -> item text embeddings (cached) -> Chroma item index -> recommenders (trained, or loaded
from their checkpoints) -> evaluation table, JSON and plot -> on a seeded sample of test users,
the best recommender as retriever with each LLM reranker (users profiled, candidates reranked)
-> one example user end to end (history, profile, retrieved, reranked).
"""

from __future__ import annotations

import logging
import math
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from agent.cli.common import UserError, console, handles_user_errors, state
from agent.cli.eval_cmd import EVAL_ERRORS, LLM_ERRORS, llm_backend_kind, reranker_specs
from agent.cli.recommend_cmd import render_recommendation
from agent.config import Settings
from agent.data.stats import compute_stats
from agent.items.llm_states import StatesError
from agent.llm.adapters import best_rerank_adapter
from agent.models.base import Recommender
from agent.pipeline.build import TwoStageSpec
from agent.rerank.head import HeadError
from agent.rerank.ranker import RankerError
from agent.service import SERVICE_ERRORS, PipelineSpec, RecBridgeService
from eval.compare import (
    Comparison,
    TrainingFailed,
    TwoStagePlan,
    compare_models,
    settings_file,
    train_in_processes,
)
from eval.evaluator import RankingEvaluator, make_valid_fn
from eval.report import print_table, write_report
from eval.second_stage import best_stage, evaluate_stage
from eval.study.training import ProcessJob
from eval.two_stage import cost_markdown, cost_table, evaluate_two_stage, extra_info

log = logging.getLogger(__name__)

# The two SASRec retrievers of the retriever study (README): ID items, and ID + text items.
DEFAULT_MODELS = "popularity,text-knn,sasrec-id,sasrec-hybrid"
DEFAULT_RERANKERS = "listwise,verbalizer"
# LLM profiling + reranking on a CPU costs about 40 CPU-seconds per user: a sample keeps it
# minutes. With 10, profiling (queued behind sasrec-id) finished last and a cold `make run`
# took 16.3 min on 2 cores; with 5 it ends before sasrec-hybrid.
DEFAULT_RERANK_USERS = 5
EXAMPLE_TOP = 10
PREPARE_ERRORS: tuple[type[Exception], ...] = (*EVAL_ERRORS, *SERVICE_ERRORS, TrainingFailed)
RERANK_ERRORS: tuple[type[Exception], ...] = (*LLM_ERRORS, *SERVICE_ERRORS)
SECOND_STAGE_ERRORS: tuple[type[Exception], ...] = (RankerError, HeadError, StatesError)


def register(app: typer.Typer) -> None:
    app.command("run")(run)


@handles_user_errors
def run(
    ctx: typer.Context,
    data: Annotated[Path | None, typer.Option(help="Data folder (data.path).")] = None,
    models: Annotated[str, typer.Option(help="Comma-separated model names.")] = DEFAULT_MODELS,
    users: Annotated[int | None, typer.Option(help="Evaluate a seeded sample of N users.")] = None,
    protocol: Annotated[str | None, typer.Option(help="sampled-999|sampled-100|full")] = None,
    epochs: Annotated[int | None, typer.Option(help="Max epochs for trained models.")] = None,
    jobs: Annotated[
        int, typer.Option(min=1, help="Models trained at a time (a process each, 1 thread).")
    ] = 2,
    seed: Annotated[int | None, typer.Option(help="Seed for sampling and training.")] = None,
    out: Annotated[Path | None, typer.Option(help="Report folder.")] = None,
    rerankers: Annotated[
        str, typer.Option(help="LLM rerankers for the two-stage rows ('' = none).")
    ] = DEFAULT_RERANKERS,
    rerank_users: Annotated[
        int, typer.Option(min=1, help="Seeded test users for the two-stage rows.")
    ] = DEFAULT_RERANK_USERS,
    backend: Annotated[str | None, typer.Option(help="LLM: local or openai.")] = None,
) -> None:
    """Index, train or load the recommenders, evaluate them, rerank a sample with the LLM,
    show one example user end to end."""
    settings = state(ctx).settings(
        **{
            "data.path": str(data) if data else None,
            "eval.users": users,
            "eval.protocol": protocol,
            "train.epochs": epochs,
            "seed": seed,
        }
    )
    names = [n.strip() for n in models.split(",") if n.strip()]
    kind = llm_backend_kind(backend)
    specs = reranker_specs(rerankers, False, settings) if rerankers else []
    if specs:
        specs += adapter_specs(settings)
    started = time.perf_counter()
    service = RecBridgeService.from_settings(
        settings, backend=kind, pipelines=[], valid_fn_factory=make_valid_fn, progress=True
    )
    dataset = service.data
    stats = compute_stats(dataset)
    log.info(
        "data %s: %d items, %d users, %d interactions, domains %s",
        settings.data.path,
        stats.items,
        stats.users,
        stats.interactions,
        ", ".join(dataset.domains),
    )
    try:
        vectors = service.embeddings  # every item embedded (cached): text models train on them
        log.info("item embeddings: %d x %d", *vectors.shape)
        beside = [profile_job(settings, rerank_users, kind)] if profiled(specs) else []
        # The models train (and the two-stage users are profiled) in processes of their own
        # while this one fills the Chroma index.
        with ThreadPoolExecutor(max_workers=1) as pool:
            training = pool.submit(train_in_processes, names, settings, {}, jobs, beside)
            index = service.item_index
            log.info("Chroma collection %s: %d items", index.name, index.count())
            trained = training.result()
        comparison = compare_models(dataset, settings, names, out=out, name=None, trained=trained)
    except PREPARE_ERRORS as exc:
        raise UserError(str(exc)) from None
    print_table(comparison.results, comparison.evaluator.ks, console)
    log.info("report: %s", comparison.paths.directory)
    for name, model in comparison.models.items():
        service.add_retriever(name, model)  # trained or loaded once, by the comparison
    try:
        second_stage_row(comparison, settings)
    except SECOND_STAGE_ERRORS as exc:
        raise UserError(str(exc)) from None
    try:
        if not specs:
            show_example(service, comparison)
        else:
            best_name, best = _best_trained(comparison) or (names[0], comparison.models[names[0]])
            plan = TwoStagePlan(best_name, specs, kind)
            rerank_sample(service, plan, best, rerank_users, comparison)
    except RERANK_ERRORS as exc:
        raise UserError(str(exc)) from None
    finally:
        service.close_caches()
    log.info("done in %.0f s", time.perf_counter() - started)


def second_stage_row(comparison: Comparison, settings: Settings) -> None:
    """The best trained second stage (on valid users) over its retriever, on the main table's
    users, printed beside the retriever's row; one line on how to train one when none is."""
    best = _best_trained(comparison)
    if best is None:
        return
    name, retriever = best
    stage = best_stage(settings, name)
    if stage is None:
        log.info(
            "no trained second stage over %s in %s: `make second-stage` trains the learned "
            "ranker (and its LLM-feature variants), then `make run` adds its row",
            name,
            settings.work_dir / "rankers",
        )
        return
    log.info(
        "second stage: %s (valid NDCG@10 %.4f, the best trained)", stage.label, stage.valid_ndcg10
    )
    baseline = next(r for r in comparison.results if r.model == name)
    row = evaluate_stage(comparison.evaluator, retriever, baseline, stage, settings)
    print_table([baseline, row.result], comparison.evaluator.ks, console)
    mean, lo, hi = row.delta
    console.print(
        f"{row.stage.label} vs {name}: NDCG@10 {row.result.primary:.4f} vs {baseline.primary:.4f} "
        f"({row.result.primary / max(baseline.primary, 1e-12):.3f}x), paired Δ {mean:+.4f} "
        f"[{lo:+.4f}, {hi:+.4f}], {row.ms_per_user:.1f} ms/user, no LLM call"
    )


def rerank_sample(
    service: RecBridgeService,
    plan: TwoStagePlan,
    retriever: Recommender,
    users: int,
    comparison: Comparison,
) -> None:
    """The best model as retriever, alone and with each reranker, on ``users`` seeded test
    users (same candidates as the main table); then the first of them end to end."""
    dataset, settings = service.data, service.settings
    name = plan.retriever
    evaluator = RankingEvaluator(dataset, settings, users=users)
    log.info("two-stage: %s + %s on %d test users", name, rerankers_of(plan), len(evaluator.users))
    factory = service.factory  # the service's LLM backend (prepared on first use) and caches
    rows = evaluate_two_stage(evaluator, factory, name, retriever, plan.specs)
    results = [evaluator(retriever, name=name), *(r.result for r in rows)]
    extra = {"two_stage": extra_info(rows, factory), "retriever": name}
    paths = write_report(
        results,
        settings,
        comparison.paths.directory / "two-stage",
        extra=extra,
        appendix=cost_markdown(rows),
    )
    print_table(results, evaluator.ks, console)
    console.print(cost_table(rows))
    log.info("two-stage report: %s", paths.directory)

    user = evaluator.users[0]
    spec = plan.specs[0]
    target = user.target
    rec = service.run(
        service.arecommendation(
            PipelineSpec(name, spec.reranker, spec.use_profile),
            user.history,
            user_id=user.user_id,
            domain=dataset.domain_of(target) if target else None,
            top_k=EXAMPLE_TOP,
            top_n=settings.rerank.top_n,
        )
    )
    console.rule(f"example: user {user.user_id}, full {rec.domain} catalogue")
    console.print(render_recommendation(rec, dataset, target))


def profiled(specs: list[TwoStageSpec]) -> bool:
    return any(spec.use_profile for spec in specs)


def profile_job(settings: Settings, users: int, backend: str | None) -> ProcessJob:
    """``recbridge profile`` of the two-stage users, run while the retrievers train: profiles
    need no retriever, and they are cached, so the two-stage rows find them ready. One torch
    thread: it shares the cores with a training run."""
    argv = [sys.executable, "-m", "agent.cli", "--config", str(settings_file(settings))]
    argv += ["--set", "llm.threads=1", "profile", "--split", settings.eval.split]
    argv += ["--sample", str(users), "--no-store"]
    argv += ["--out", str(settings.work_dir / "logs" / "run-profiles.jsonl")]
    argv += ["--backend", backend] if backend else []
    return ProcessJob(
        f"profiling {users} {settings.eval.split} users",
        argv,
        settings.work_dir / "logs" / "run-profiles.log",
    )


def adapter_specs(settings: Settings) -> list[TwoStageSpec]:
    """The trained verbalizer adapter (best on valid), as its own row; or one line on how to
    train one."""
    name = settings.rerank.adapter or best_rerank_adapter(settings, "verbalizer")
    if name is None:
        log.info(
            "no trained reranker adapter in %s: `make finetune` trains one (about an hour on "
            "2 CPU cores), then `make run` adds its row",
            settings.adapters_dir,
        )
        return []
    log.info("two-stage: adding the LoRA adapter %s (verbalizer)", name)
    return [TwoStageSpec("verbalizer", use_profile=False, adapter=name)]


def rerankers_of(plan: TwoStagePlan) -> str:
    return ",".join(dict.fromkeys(s.reranker for s in plan.specs))


def _best_trained(comparison: Comparison) -> tuple[str, Recommender] | None:
    """The trained model with the best valid NDCG@10 of its fit (never a test figure)."""
    scored = [
        (float(fit["best_valid_ndcg10"]), name)
        for name, prep in comparison.prepared.items()
        if (fit := prep.get("fit")) and math.isfinite(fit.get("best_valid_ndcg10", math.nan))
    ]
    if not scored:
        return None
    _, best = max(scored)
    log.info("two-stage retriever: %s (best valid NDCG@10 of the trained models)", best)
    return best, comparison.models[best]


def show_example(service: RecBridgeService, comparison: Comparison) -> None:
    """One evaluated user end to end: history, target, Chroma retrieval, best model's list
    over the target domain's whole catalogue (history excluded)."""
    dataset = service.data
    user = comparison.evaluator.users[0]
    target = user.target
    assert target is not None  # evaluated users are valid/test rows
    domain = dataset.domain_of(target)
    history = Table(title=f"user {user.user_id}: last items of {len(user.history)}", box=None)
    history.add_column("#", justify="right")
    history.add_column("domain")
    history.add_column("title")
    for pos, item_id in list(enumerate(user.history))[-EXAMPLE_TOP:]:
        item = dataset.items[item_id]
        history.add_row(str(pos), item.domain, item.title[:90])
    console.print(history)
    console.print(f"held-out target ({domain}): {dataset.items[target].title[:90]}")

    shown = {"text-knn (Chroma)": "text-knn"}
    best = _best_trained(comparison)
    if best is not None:
        shown[f"{best[0]} (full {domain} catalogue)"] = best[0]

    async def lists() -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for title, name in shown.items():
            rec = await service.arecommendation(
                PipelineSpec(name), user.history, domain=domain, top_k=EXAMPLE_TOP
            )
            out[title] = [x.item_id for x in rec.items]
        return out

    for title, items in service.run(lists()).items():
        table = Table(title=title, box=None)
        table.add_column("rank", justify="right")
        table.add_column("title")
        table.add_column("")
        for rank, item_id in enumerate(items, start=1):
            mark = "<- target" if item_id == target else ""
            table.add_row(str(rank), dataset.items[item_id].title[:90], mark)
        console.print(table)
