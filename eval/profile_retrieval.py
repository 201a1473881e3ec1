"""Profile retrieval: does a profile say what the user buys next?

For each user of a split (a seeded sample, ``eval.evaluator.select_users``: the users every
other evaluation of that size gets), a query text is embedded with the project's embedder and
the target's domain is searched in the Chroma item index (the domain collection; the user's
history excluded). The held-out target's position in the top ``TOP`` gives HR@10, HR@50 and
NDCG@10, with 95% bootstrap intervals, and the paired difference to the ``titles`` row.

Query sources (``SOURCES``), the same users for all:

- ``titles``: the titles the profile prompt shows (the history's most recent
  ``profile.next.history_items``), joined: the no-LLM baseline;
- ``base``: the base model's next-interest profile (``prompts/profile_next.j2``);
- ``lora``: the same prompt answered by the profile adapter (``profile.next.adapter``);
- ``target-rule``: the training rule (``finetune.profile_data``) applied to the held-out target
  itself: an oracle, the ceiling of the profile format, not a method;
- ``free``, ``grounded``, ``facts``: the hierarchical profile tree written in that
  ``profile.mode`` (``agent.profiles.profiler``; trees cached in the profile cache, so those of
  ``recbridge profile`` runs are reused); its target-domain profile is the query, and its
  faithfulness is checked (``eval.profile_faithfulness``).

A profile's query text is its phrases (``finetune.profile_render.query_text``). An answer that
does not parse even after JSON repair, or is empty, falls back to the ``titles`` text: counted
per source (``fallbacks``). Generated profiles are cached in sqlite (keyed by history, domain,
template hash, model, adapter weights, generation settings) after every batch of users, so a
killed run resumes and a re-run costs no LLM call.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from agent.config import Settings
from agent.data.schema import Dataset, Split, UserSequence
from agent.items.embedder import Embedder, make_embedder
from agent.llm.adapters import adapter_fingerprint, discover_adapters
from agent.llm.backend import LLMBackend, LLMError
from agent.profiles.cache import ProfileCache
from agent.profiles.check import ProfileChecker
from agent.profiles.parsing import ParseError
from agent.profiles.schema import ProfileTree

if TYPE_CHECKING:
    from agent.profiles.profiler import HierarchicalProfiler, UserResult
from agent.sqlite_store import SQLiteStore
from agent.store.chroma_store import ItemIndex, make_client
from eval.evaluator import select_users
from eval.metrics import bootstrap_intervals
from eval.profile_faithfulness import TREE_SOURCES, check_tree, summarise
from eval.profile_faithfulness import query_text as tree_query_text
from eval.runinfo import run_info
from finetune.profile_data import TitleRule
from finetune.profile_render import NextInterestPrompt, parse_next_interest, query_text

log = logging.getLogger(__name__)

NEXT_SOURCES = ("titles", "base", "lora", "target-rule")  # next-interest profiles
SOURCES = (*NEXT_SOURCES, *TREE_SOURCES)
LLM_SOURCES = frozenset({"base", "lora"})
BASELINE = "titles"
TOP = 50
METRICS = ("hr@10", "hr@50", "ndcg@10")
_EXAMPLES = 3  # users whose queries the Markdown report shows


class ProfileEvalError(ValueError):
    """A profile-retrieval run that cannot start; the message says what to do."""


@dataclass
class Query:
    """One user's query text from one source, and how it was made."""

    user_id: str
    source: str
    text: str
    profile: dict[str, list[str]] | None = None
    fallback: bool = False  # the answer was unusable: the titles text stands in
    repaired: bool = False
    error: str | None = None  # why it fell back
    llm_error: bool = False  # the request failed (not cached: the next run asks again)
    cached: bool = False
    latency_s: float = 0.0
    completion_tokens: int = 0


class QueryCache(SQLiteStore):
    """``key -> Query`` JSON (generated profiles only; an LLM error is never cached)."""

    def __init__(self, cache_dir: Path) -> None:
        super().__init__(
            cache_dir,
            "queries.sqlite",
            "queries",
            "CREATE TABLE IF NOT EXISTS queries ("
            " key TEXT PRIMARY KEY, user_id TEXT NOT NULL, source TEXT NOT NULL,"
            " body TEXT NOT NULL, created REAL)",
        )

    def get_many(self, keys: Sequence[str]) -> dict[str, Query]:
        sql = "SELECT key, body FROM queries WHERE key IN ({marks})"
        return {key: Query(**json.loads(body)) for key, body in self.select_in(sql, keys)}

    def put_many(self, items: Sequence[tuple[str, Query]]) -> None:
        with self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO queries (key, user_id, source, body, created)"
                " VALUES (?, ?, ?, ?, ?)",
                [
                    (key, q.user_id, q.source, json.dumps(asdict(q)), time.time())
                    for key, q in items
                ],
            )


@dataclass
class SourceResult:
    source: str
    metrics: dict[str, dict[str, float]]  # metric -> mean, lo, hi
    paired: dict[str, dict[str, float]]  # metric -> mean, lo, hi of (this - titles)
    per_domain: dict[str, dict[str, float]]  # domain -> metric -> mean
    fallbacks: int  # unusable answers and failed requests: the titles text stood in
    llm_errors: int  # of those, failed requests (run again to retry them)
    repaired: int
    cached: int
    llm_seconds: float
    mean_query_chars: float
    faithfulness: dict[str, Any] | None = None  # profile trees only (eval.profile_faithfulness)


@dataclass
class ProfileRetrievalReport:
    split: str
    users: int  # evaluated (fewer than sampled with cached_only)
    top: int
    adapter: str | None
    sources: list[SourceResult]
    settings: dict[str, Any]
    per_user: list[dict[str, Any]] = field(default_factory=list)
    examples: list[dict[str, Any]] = field(default_factory=list)
    run: dict[str, Any] = field(default_factory=dict)
    sampled: int = 0  # the seeded sample the users were drawn from

    def row(self, source: str) -> SourceResult:
        return next(s for s in self.sources if s.source == source)


def target_position(hits: Sequence[str], target: str) -> int | None:
    """0-based position of ``target`` in the retrieved ids, None when it is not among them."""
    try:
        return list(hits).index(target)
    except ValueError:
        return None


def user_metrics(position: int | None) -> list[float]:
    """HR@10, HR@50, NDCG@10 of one user (``METRICS`` order)."""
    if position is None:
        return [0.0, 0.0, 0.0]
    gain = 1.0 / float(np.log2(position + 2.0))
    return [float(position < 10), float(position < TOP), gain if position < 10 else 0.0]


def _interval(values: np.ndarray, resamples: int, seed: int) -> dict[str, dict[str, float]]:
    lo, hi = bootstrap_intervals(values, resamples, np.random.default_rng(seed))
    means = values.mean(axis=0)
    return {
        name: {"mean": float(means[j]), "lo": float(lo[j]), "hi": float(hi[j])}
        for j, name in enumerate(METRICS)
    }


class ProfileRetrieval:
    """One profile-retrieval run (module docstring)."""

    def __init__(
        self,
        data: Dataset,
        settings: Settings,
        *,
        users: int,
        split: Split = "test",
        sources: Sequence[str] = SOURCES,
        backend: LLMBackend | None = None,
        adapter: str | None = None,
        embedder: Embedder | None = None,
        cached_only: bool = False,
    ) -> None:
        unknown = [s for s in sources if s not in SOURCES]
        if unknown or not sources:
            raise ProfileEvalError(
                f"sources {', '.join(unknown) or '(none)'}: expected some of {', '.join(SOURCES)}"
            )
        self.data = data
        self.settings = settings
        self.cfg = settings.profile.next
        self.split: Split = split
        self.sources = [BASELINE, *[s for s in dict.fromkeys(sources) if s != BASELINE]]
        self.adapter = adapter or self.cfg.adapter
        self.users = [u for u in select_users(data, split, users, settings.seed) if u.target]
        self.prompt = NextInterestPrompt(data, self.cfg)
        self.embedder = embedder or make_embedder(settings)
        self._backend = backend
        self._adapter_fp = ""
        if "lora" in self.sources:
            path = discover_adapters(settings).get(self.adapter)
            if path is None:
                raise ProfileEvalError(
                    f"profile adapter {self.adapter!r} not found in {settings.adapters_dir}: "
                    "train it with `recbridge finetune data --recipe next-interest` then "
                    "`recbridge finetune train --kind profile` (or leave out the lora source)"
                )
            self._adapter_fp = adapter_fingerprint(path)
        self.out_root = settings.work_dir / "profile_retrieval"
        self.trees: dict[str, list[ProfileTree | None]] = {}
        self._checker: ProfileChecker | None = None
        self.sampled = len(self.users)
        if cached_only:
            self._keep_cached()

    # -- query texts --------------------------------------------------------------------------

    @property
    def backend(self) -> LLMBackend:
        if self._backend is None:
            from agent.llm.factory import make_backend

            self._backend = make_backend(self.settings)
        return self._backend

    def _domain(self, user: UserSequence) -> str:
        assert user.target is not None
        return self.data.items[user.target].domain

    def _key(self, user: UserSequence, source: str) -> str:
        payload = {
            "source": source,
            "history": list(user.history),
            "domain": self._domain(user),
            "template": self.prompt.template.ref.sha256,
            "backend": self.backend.name,
            "model": self.backend.model,
            "dtype": self.settings.llm.local_dtype if self.backend.name == "local" else None,
            "adapter": [self.adapter, self._adapter_fp] if source == "lora" else None,
            "cfg": self.cfg.model_dump(mode="json", exclude={"adapter", "next_items"}),
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    def titles_query(self, user: UserSequence) -> Query:
        return Query(user.user_id, "titles", self.prompt.history_titles_text(user.history))

    def rule_query(self, user: UserSequence, rule: TitleRule) -> Query:
        assert user.target is not None
        profile = rule.profile([self.data.items[user.target]], self.cfg.max_list_items)
        return Query(user.user_id, "target-rule", query_text(profile), profile.model_dump())

    def _from_answer(self, user: UserSequence, source: str, result: Any) -> Query:
        if isinstance(result, LLMError):
            fallback = self.titles_query(user)
            return Query(
                user.user_id,
                source,
                fallback.text,
                fallback=True,
                error=str(result),
                llm_error=True,
            )
        try:
            profile, repaired = parse_next_interest(result.text, self.cfg.max_list_items)
        except ParseError as exc:
            return Query(
                user.user_id,
                source,
                self.titles_query(user).text,
                fallback=True,
                error=f"{exc}: {result.text[:200]!r}",
                latency_s=result.latency_s,
                completion_tokens=result.completion_tokens,
            )
        return Query(
            user.user_id,
            source,
            query_text(profile),
            profile.model_dump(),
            repaired=repaired,
            latency_s=result.latency_s,
            completion_tokens=result.completion_tokens,
        )

    def llm_queries(self, source: str, cache: QueryCache) -> list[Query]:
        """Every user's profile from ``source`` (base or lora): cached, in batches."""
        adapter = self.adapter if source == "lora" else None
        keys = [self._key(u, source) for u in self.users]
        found = cache.get_many(keys)
        out: dict[str, Query] = {}
        for key, user in zip(keys, self.users, strict=True):
            if key in found:
                out[user.user_id] = found[key]
                out[user.user_id].cached = True
        todo = [(k, u) for k, u in zip(keys, self.users, strict=True) if u.user_id not in out]
        batch = max(1, self.settings.llm.concurrency)
        with tqdm(total=len(todo), desc=f"profiles ({source})", unit="user") as bar:
            for start in range(0, len(todo), batch):
                chunk = todo[start : start + batch]
                reqs = [self.prompt.request(u.history, self._domain(u), adapter) for _, u in chunk]
                results = self.backend.generate_batch(reqs)
                made = [
                    (k, self._from_answer(u, source, r))
                    for (k, u), r in zip(chunk, results, strict=True)
                ]
                cache.put_many([(k, q) for k, q in made if not q.llm_error])
                out.update({q.user_id: q for _, q in made})
                bar.update(len(chunk))
        return [out[u.user_id] for u in self.users]

    def _profiler(self, mode: str, cache: ProfileCache) -> HierarchicalProfiler:
        from agent.profiles.profiler import HierarchicalProfiler

        profile = self.settings.profile.model_copy(update={"mode": mode})
        settings = self.settings.model_copy(update={"profile": profile})
        backend = None if mode == "facts" else self.backend
        return HierarchicalProfiler(backend, self.data, settings, cache=cache, checker=self.checker)

    def _keep_cached(self) -> None:
        """Only the users whose LLM-written trees are all cached already (the same users for
        every row): a partial run is reported as such, never completed silently."""
        modes = [s for s in self.sources if s in TREE_SOURCES and s != "facts"]
        with ProfileCache(self.settings.profile_cache_dir) as cache:
            for mode in modes:
                found = self._profiler(mode, cache).cached_users(self.users)
                self.users = [u for u in self.users if u.user_id in found]
        log.info(
            "cached only: %d of %d sampled users have every tree (%s)",
            len(self.users),
            self.sampled,
            ", ".join(modes) or "none needed",
        )

    def tree_queries(self, mode: str) -> list[Query]:
        """Every user's profile tree in ``mode`` (profile cache first), as queries."""
        with ProfileCache(self.settings.profile_cache_dir) as cache:
            profiler = self._profiler(mode, cache)
            with tqdm(total=len(self.users), desc=f"profiles ({mode})", unit="user") as bar:

                def advance(batch: list[UserResult]) -> None:
                    bar.update(len(batch))

                results, _ = profiler.profile_users(self.users, progress=advance)
        self.trees[mode] = [r.tree for r in results]
        out = []
        for user, result in zip(self.users, results, strict=True):
            if result.tree is None:  # the LLM failed for this user: titles stand in
                fallback = self.titles_query(user)
                out.append(
                    Query(user.user_id, mode, fallback.text, fallback=True, error=result.error)
                )
                continue
            tree = result.tree
            out.append(
                Query(
                    user.user_id,
                    mode,
                    tree_query_text(tree, self._domain(user)),
                    fallback=tree.call.fallback,
                    cached=result.cached,
                    latency_s=tree.seconds,
                    completion_tokens=tree.completion_tokens,
                )
            )
        return out

    @property
    def checker(self) -> ProfileChecker:
        if self._checker is None:
            self._checker = ProfileChecker(self.data)
        return self._checker

    def faithfulness(self, source: str) -> dict[str, Any] | None:
        trees = self.trees.get(source)
        if trees is None:
            return None
        histories = {u.user_id: u.history for u in self.users}
        checks = [check_tree(t, histories[t.user_id], self.checker) for t in trees if t]
        return summarise(checks)

    def queries(self) -> dict[str, list[Query]]:
        rule = TitleRule.of(self.data) if "target-rule" in self.sources else None
        out: dict[str, list[Query]] = {}
        with QueryCache(self.out_root) as cache:
            for source in self.sources:
                if source == "titles":
                    out[source] = [self.titles_query(u) for u in self.users]
                elif source == "target-rule":
                    assert rule is not None
                    out[source] = [self.rule_query(u, rule) for u in self.users]
                elif source in TREE_SOURCES:
                    out[source] = self.tree_queries(source)
                else:
                    out[source] = self.llm_queries(source, cache)
        return out

    # -- retrieval ----------------------------------------------------------------------------

    def item_index(self) -> ItemIndex:
        """The Chroma index of this embedder; filled (idempotently) when it lacks items."""
        index = ItemIndex(make_client(self.settings), self.settings, self.embedder.model_id)
        if index.count() != len(self.data.catalog):
            from agent.items.embeddings import item_embeddings

            log.info("item index %s is incomplete; indexing", index.name)
            vectors = item_embeddings(self.data, self.settings, embedder=self.embedder)
            index.index(self.data, vectors, progress=False)
        return index

    def positions(self, index: ItemIndex, queries: Sequence[Query]) -> list[int | None]:
        vectors = self.embedder.embed([q.text or " " for q in queries])
        domains = [self._domain(u) for u in self.users]
        hits = index.query_batch(vectors, domains, TOP, [list(u.history) for u in self.users])
        return [
            target_position([iid for iid, _ in found], str(u.target))
            for found, u in zip(hits, self.users, strict=True)
        ]

    def run(self) -> ProfileRetrievalReport:
        if not self.users:
            raise ProfileEvalError(f"split {self.split} has no users with a target")
        queries = self.queries()
        index = self.item_index()
        positions = {s: self.positions(index, qs) for s, qs in queries.items()}
        values = {
            s: np.array([user_metrics(p) for p in pos], dtype=np.float64)
            for s, pos in positions.items()
        }
        resamples, seed = self.settings.eval.bootstrap, self.settings.seed
        domains = np.array([self._domain(u) for u in self.users])
        rows: list[SourceResult] = []
        for source in self.sources:
            qs = queries[source]
            per_domain = {
                d: dict(
                    zip(METRICS, values[source][domains == d].mean(axis=0).tolist(), strict=True)
                )
                for d in sorted(set(domains.tolist()))
            }
            rows.append(
                SourceResult(
                    source=source,
                    metrics=_interval(values[source], resamples, seed),
                    paired=_interval(values[source] - values[BASELINE], resamples, seed),
                    per_domain=per_domain,
                    fallbacks=sum(q.fallback for q in qs),
                    llm_errors=sum(q.llm_error for q in qs),
                    repaired=sum(q.repaired for q in qs),
                    cached=sum(q.cached for q in qs),
                    llm_seconds=sum(q.latency_s for q in qs if not q.cached),
                    mean_query_chars=float(np.mean([len(q.text) for q in qs])),
                    faithfulness=self.faithfulness(source),
                )
            )
        per_user = [
            {
                "user_id": u.user_id,
                "domain": self._domain(u),
                "target": u.target,
                "positions": {s: positions[s][row] for s in self.sources},
                "queries": {s: queries[s][row].text for s in self.sources},
                "fallbacks": [s for s in self.sources if queries[s][row].fallback],
            }
            for row, u in enumerate(self.users)
        ]
        examples = [
            {
                "user_id": u.user_id,
                "target": self.data.items[str(u.target)].title,
                "queries": {s: queries[s][row].text for s in self.sources},
            }
            for row, u in enumerate(self.users[:_EXAMPLES])
        ]
        return ProfileRetrievalReport(
            split=self.split,
            users=len(self.users),
            top=TOP,
            adapter=self.adapter if "lora" in self.sources else None,
            sources=rows,
            settings={
                "profile_next": self.cfg.model_dump(mode="json"),
                "template": self.prompt.template.ref.model_dump(),
                "embedder": self.embedder.model_id,
                "llm": {
                    "backend": self.settings.llm.backend,
                    "model": self.settings.llm.model,
                    "local_dtype": self.settings.llm.local_dtype,
                },
                "seed": seed,
                "bootstrap": resamples,
            },
            per_user=per_user,
            examples=examples,
            run=run_info(),
            sampled=self.sampled,
        )


def _seconds(f: dict[str, Any]) -> str:
    """Mean wall seconds per profile, and of how many when not all were timed."""
    if f["seconds_per_profile"] is None:
        return "-"
    part = "" if f["timed_profiles"] == f["profiles"] else f" ({f['timed_profiles']} timed)"
    return f"{f['seconds_per_profile']:.1f}{part}"


def _pct(share: float | None, of: int) -> str:
    return "-" if share is None else f"{100 * share:.1f}% of {of}"


def _cell(value: dict[str, float]) -> str:
    return f"{value['mean']:.4f} [{value['lo']:.4f}, {value['hi']:.4f}]"


def markdown(report: ProfileRetrievalReport) -> str:
    """The table (mean [95% CI]), the paired differences to ``titles``, a few example queries."""
    lines = [
        f"# Profile retrieval: {report.users} {report.split} users"
        + (
            f" (those of {report.sampled} sampled with every tree cached)"
            if report.sampled > report.users
            else ""
        )
        + f", top {report.top} of the target's domain (history excluded)",
        "",
        "| query source | HR@10 | HR@50 | NDCG@10 | NDCG@10 - titles | HR@50 - titles "
        "| fallbacks |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in report.sources:
        same = row.source == BASELINE
        lines.append(
            f"| {row.source} | {_cell(row.metrics['hr@10'])} | {_cell(row.metrics['hr@50'])} | "
            f"{_cell(row.metrics['ndcg@10'])} | "
            f"{'-' if same else _cell(row.paired['ndcg@10'])} | "
            f"{'-' if same else _cell(row.paired['hr@50'])} | {row.fallbacks} |"
        )
    trees = [row for row in report.sources if row.faithfulness is not None]
    if trees:
        lines += [
            "",
            "Faithfulness of the profile trees (pooled over every profile node):",
            "",
            "| profiles | evidence ids valid | attributes supported | contradictions "
            "| repeated sentences | words in no title | summaries naming no fact "
            "| fallback nodes | LLM calls | tokens | s/profile |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row in trees:
            f = row.faithfulness
            assert f is not None
            lines.append(
                f"| {row.source} | {_pct(f['evidence_valid'], f['cited_ids'])} | "
                f"{_pct(f['attributes_supported'], f['named_attributes'])} | "
                f"{f['contradictions']} | {f['repeated_sentences']} | {f['unknown_words']} | "
                f"{_pct(f['silent_summaries'], f['nodes'])} | "
                f"{_pct(f['fallback_rate'], f['nodes'])} | {f['llm_calls_per_profile']:.1f} | "
                f"{f['tokens_per_profile']:.0f} | {_seconds(f)} |"
            )
        for row in trees:
            assert row.faithfulness is not None
            shown = ", ".join(row.faithfulness["unsupported_examples"]) or "none"
            lines.append(f"- {row.source}: flagged (examples): {shown}")
    lines += ["", "Per domain (mean HR@50 / NDCG@10):", ""]
    for row in report.sources:
        parts = [f"{d}: {m['hr@50']:.3f} / {m['ndcg@10']:.3f}" for d, m in row.per_domain.items()]
        lines.append(f"- {row.source}: " + "; ".join(parts))
    lines += ["", "Example queries:", ""]
    for ex in report.examples:
        lines.append(f"- user {ex['user_id']} (target: {ex['target'][:80]})")
        for source, text in ex["queries"].items():
            lines.append(f"  - {source}: {text[:200]}")
    return "\n".join(lines) + "\n"


def write_report(report: ProfileRetrievalReport, out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / "report.json", out_dir / "report.md"
    json_path.write_text(json.dumps(asdict(report), indent=1), encoding="utf-8")
    md_path.write_text(markdown(report), encoding="utf-8")
    return json_path, md_path
