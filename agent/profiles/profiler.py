"""The hierarchical profiler (after LLM4CDSR): per domain, the history is grouped (clusters or
recency chunks) and each group summarised by the "analyzer" prompt; the group summaries become
a domain profile (JSON, "summarizer" prompt); the domain profiles merge into one cross-domain
profile (JSON). Only ``UserSequence.history`` is used: the held-out target never leaks in.

Users go in batches; inside a batch each level is one ``agenerate_batch`` over all its users, so
the backend's concurrency limit (and vLLM's continuous batching) works across users. JSON
answers are parsed and repaired; an unusable one gets one retry with a repair instruction, then
a counted fallback built from the inputs' text (``CallInfo.fallback``). A request that fails
for good (server down, timeouts, 5xx after retries) fails that user only; each finished batch
goes to the cache (and ``on_result``) before the next starts, so nothing finished is lost.

``profile.mode`` "grounded" (the default) gives the domain and cross levels the history's facts
(``agent.profiles.facts``), constrains the lists to them and checks the summary
(``agent.profiles.check``): a failing answer is mended, else retried once, else replaced by the
facts' own profile, counted. "facts" makes that profile with no LLM; "free" is the above alone.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from agent.config import Settings
from agent.data.schema import Dataset, Item, UserSequence
from agent.items.text import cut
from agent.llm.backend import LLMBackend, LLMError
from agent.llm.types import ChatMessage, GenerationRequest, GenerationResult
from agent.profiles.cache import ProfileCache, profile_cache_key
from agent.profiles.check import CHECK_VERSION, ProfileChecker
from agent.profiles.facts import FACTS_VERSION, DomainFacts, FactsBuilder, ProfileFacts
from agent.profiles.grouping import Group, group_history, item_clusters
from agent.profiles.parsing import ParseError, parse_profile
from agent.profiles.schema import (
    CallInfo,
    DomainProfile,
    GroupSummary,
    Profile,
    ProfileTree,
    grounded_json_schema,
    profile_json_schema,
)
from agent.prompts import PromptTemplate, load_template

log = logging.getLogger(__name__)

_RETRY_ECHO_CHARS = 600  # how much of a bad answer goes back into the repair turn
_BAD_ANSWER_CHARS = 300  # kept in CallInfo.bad_answer for inspection
_CROSS_IDS = 12  # item ids offered to the cross-domain prompt as citable evidence


@dataclass
class UserResult:
    """One user's outcome: a tree, or the error that stopped it."""

    user_id: str
    tree: ProfileTree | None = None
    error: str | None = None
    cached: bool = False
    seconds: float = 0.0  # wall time of the batch share (batch seconds / users in it)

    @property
    def ok(self) -> bool:
        return self.tree is not None


@dataclass
class ProfileRunStats:
    users: int = 0
    ok: int = 0
    failed: int = 0
    cached: int = 0
    llm_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    fallbacks: int = 0  # nodes (group/domain/cross) built by fallback
    users_with_fallback: int = 0  # users whose cross-domain profile is a fallback
    retries: int = 0
    http_retries: int = 0  # requests sent again after 5xx/429/timeouts (then answered)
    repaired: int = 0
    dropped_evidence: int = 0
    check_failed: int = 0  # nodes whose first answer failed the grounded checks
    text_repaired: int = 0  # of those, mended by dropping failing summary clauses
    seconds: float = 0.0

    def add(self, result: UserResult) -> None:
        self.users += 1
        if result.tree is None:
            self.failed += 1
            return
        self.ok += 1
        self.cached += result.cached
        if result.cached:
            return  # a cache hit cost nothing now
        tree = result.tree
        self.llm_calls += tree.llm_calls
        self.prompt_tokens += tree.prompt_tokens
        self.completion_tokens += tree.completion_tokens
        self.fallbacks += tree.fallbacks
        self.users_with_fallback += tree.call.fallback
        self.retries += sum(c.retried for c in tree.calls())
        self.http_retries += sum(c.http_retries for c in tree.calls())
        self.repaired += sum(c.repaired for c in tree.calls())
        self.dropped_evidence += tree.dropped_evidence
        self.check_failed += sum(bool(c.check_problems) for c in tree.calls())
        self.text_repaired += sum(c.text_repaired for c in tree.calls())

    def merge(self, other: ProfileRunStats) -> None:
        """Add another run's counts and seconds to these."""
        for name, value in vars(other).items():
            setattr(self, name, getattr(self, name) + value)

    def as_dict(self) -> dict[str, Any]:
        fresh = max(1, self.ok - self.cached)
        return {
            **self.__dict__,
            "users_per_min": 60.0 * self.users / self.seconds if self.seconds > 0 else 0.0,
            "tokens_per_user": (self.prompt_tokens + self.completion_tokens) / fresh,
            "completion_tokens_per_user": self.completion_tokens / fresh,
            "calls_per_user": self.llm_calls / fresh,
        }


@dataclass
class _JsonJob:
    messages: list[ChatMessage]
    allowed_ids: frozenset[str]
    fallback: Callable[[], Profile]
    schema: dict[str, Any] | None  # for constrained decoding (None: free text)
    # Grounded: the checker's verdict on a parsed profile: the profile (summary mended when
    # needed) and whether it was mended; ParseError naming the problems when it cannot pass.
    check: Callable[[Profile], tuple[Profile, bool, list[str]]] | None = None


@dataclass
class _DomainPlan:
    domain: str
    history: list[str]
    grouping: str
    groups: list[Group]
    summaries: list[GroupSummary] = field(default_factory=list)


@dataclass
class _UserPlan:
    user: UserSequence
    key: str
    domains: list[_DomainPlan]
    facts: ProfileFacts | None = None
    error: str | None = None
    domain_profiles: list[DomainProfile] = field(default_factory=list)


def _call_info(result: GenerationResult) -> CallInfo:
    return CallInfo(
        calls=1,
        http_retries=result.attempts - 1,
        prompt_tokens=result.prompt_tokens,
        completion_tokens=result.completion_tokens,
        latency_s=result.latency_s,
        schema_enforced=result.schema_enforced,
        finish_reason=result.finish_reason,
    )


def _dedupe(values: Sequence[str], limit: int) -> list[str]:
    return list(dict.fromkeys(v for v in values if v))[:limit]


_FREE_ROLES = ("group", "domain", "cross", "repair")  # profile.mode "free"
_GROUNDED_ROLES = {  # role -> the ProfileTemplates field it reads in the grounded mode
    "domain": "domain_grounded",
    "cross": "cross_grounded",
    "repair": "repair_grounded",
    "facts": "facts",
}


class HierarchicalProfiler:
    """Profiles users of ``data`` with any ``LLMBackend`` (see the module docstring).

    ``profile.mode`` picks how: ``free`` (the LLM4CDSR prompts), ``grounded`` (the same
    levels, each given the history's facts, constrained to them and checked) or ``facts``
    (no LLM: the facts' text; ``backend`` may then be None).
    """

    def __init__(
        self,
        backend: LLMBackend | None,
        data: Dataset,
        settings: Settings,
        *,
        embeddings: np.ndarray | None = None,
        adapter: str | None = None,
        cache: ProfileCache | None = None,
        on_results: Callable[[list[UserResult]], None] | None = None,
        checker: ProfileChecker | None = None,
    ) -> None:
        self.params = settings.profile
        self.mode = self.params.mode
        if backend is None and self.mode != "facts":
            raise ValueError(f"profile.mode {self.mode} needs an LLM backend")
        self._backend = backend
        self.data = data
        self.settings = settings
        self.adapter = adapter
        self.cache = cache
        self.on_results = on_results
        files = self.params.templates.model_dump()
        roles = (
            {role: files[role] for role in _FREE_ROLES}
            if self.mode == "free"
            else {role: files[name] for role, name in _GROUNDED_ROLES.items()}
        )
        if self.mode == "facts":
            roles = {"facts": files["facts"]}
        self.templates: dict[str, PromptTemplate] = {
            role: load_template(file) for role, file in roles.items()
        }
        self._embeddings = embeddings
        self._labels: np.ndarray | None = None
        self._checker = checker
        self._facts: FactsBuilder | None = checker.facts if checker is not None else None

    @property
    def backend(self) -> LLMBackend:
        assert self._backend is not None, "profile.mode facts makes no LLM call"
        return self._backend

    @property
    def backend_name(self) -> str:
        return "facts" if self.mode == "facts" else self.backend.name

    @property
    def model_name(self) -> str:
        return "" if self.mode == "facts" else self.backend.model

    @property
    def facts(self) -> FactsBuilder:
        if self._facts is None:
            self._facts = FactsBuilder(self.data)
        return self._facts

    @property
    def checker(self) -> ProfileChecker:
        """Built on first use (the catalogue's vocabulary takes a few seconds)."""
        if self._checker is None:
            self._checker = ProfileChecker(self.data, facts=self.facts)
        return self._checker

    # -- grouping -----------------------------------------------------------------------------

    @property
    def labels(self) -> np.ndarray:
        """Cluster label per dense item id (k-means fitted once on the whole catalogue)."""
        if self._labels is None:
            embeddings = self._embeddings
            if embeddings is None:
                from agent.items.embeddings import item_embeddings

                embeddings = item_embeddings(self.data, self.settings, progress=False)
            self._labels = item_clusters(
                embeddings,
                self.params.clusters,
                self.settings.seed,
                self.settings.profile_cache_dir,
            )
        return self._labels

    def grouping_params(self) -> dict[str, Any]:
        p = self.params
        if self.mode == "facts":
            return {}  # no groups: the facts are the whole profile
        return {
            "clusters": p.clusters,
            "seed": self.settings.seed,
            "labels": hashlib.sha256(self.labels.tobytes()).hexdigest()[:16],
            "min_items_for_clusters": p.min_items_for_clusters,
            "chunk_size": p.chunk_size,
            "max_groups": p.max_groups,
            "titles_per_group": p.titles_per_group,
        }

    def _generation_params(self) -> dict[str, Any]:
        p = self.params
        params = {
            **self.grouping_params(),
            "group_max_tokens": p.group_max_tokens,
            "profile_max_tokens": p.profile_max_tokens,
            "max_list_items": p.max_list_items,
            "summary_max_chars": p.summary_max_chars,
            "phrase_max_chars": p.phrase_max_chars,
            "retry": p.retry_on_parse_error,
        }
        if self.mode == "grounded":
            params["grounded_summary_chars"] = p.grounded_summary_chars
            params["grounded_max_tokens"] = p.grounded_max_tokens
            params["check"] = CHECK_VERSION
        if self.mode != "free":  # absent for free profiles: keys cached before modes stay valid
            params["mode"] = self.mode
            params["facts"] = FACTS_VERSION
        return params

    def _plan(self, user: UserSequence) -> _UserPlan:
        history = list(user.history)  # never the valid/test target (a leak in the paper's code)
        by_domain: dict[str, list[str]] = {}
        for item_id in history:
            item = self.data.items.get(item_id)
            if item is not None:
                by_domain.setdefault(item.domain, []).append(item_id)
        index = self.data.catalog.index
        domains = []
        for domain in sorted(by_domain):
            groups: list[Group] = []
            grouping = "recency"
            if self.mode != "facts":
                grouping, groups = group_history(by_domain[domain], index, self.labels, self.params)
            domains.append(_DomainPlan(domain, by_domain[domain], grouping, groups))
        key = profile_cache_key(
            history,
            {role: t.ref.sha256 for role, t in self.templates.items()},
            backend=self.backend_name,
            model=self.model_name,
            adapter=self.adapter,
            params=self._generation_params(),
        )
        facts = self.facts(history) if self.mode != "free" else None
        return _UserPlan(user, key, domains, facts=facts)

    # -- LLM stages ---------------------------------------------------------------------------

    def _items(self, ids: Sequence[str]) -> list[Item]:
        return [self.data.items[i] for i in ids]

    def _schema(self, evidence_ids: Sequence[str]) -> dict[str, Any] | None:
        p = self.params
        if not p.constrained:
            return None
        return profile_json_schema(
            p.max_list_items,
            summary_chars=p.summary_max_chars,
            phrase_chars=p.phrase_max_chars,
            evidence_ids=evidence_ids,
        )

    def _grounded_schema(
        self, values: Sequence[str], evidence_ids: Sequence[str], themes: Sequence[str]
    ) -> dict[str, Any] | None:
        p = self.params
        if not p.constrained:
            return None
        return grounded_json_schema(
            values, evidence_ids, themes, p.max_list_items, summary_chars=p.grounded_summary_chars
        )

    def _request(
        self,
        messages: list[ChatMessage],
        max_tokens: int,
        schema: dict[str, Any] | None = None,
    ) -> GenerationRequest:
        return GenerationRequest(
            messages=messages,
            max_tokens=max_tokens,
            temperature=0.0,
            seed=self.settings.seed,
            json_schema=schema,
            adapter=self.adapter,
        )

    def facts_text(self, facts: ProfileFacts, domains: Sequence[DomainFacts] | None = None) -> str:
        """The facts as readable sentences (``prompts/profile_facts.j2``), no LLM."""
        chosen = list(domains) if domains is not None else facts.domains
        recent = {d.domain: self.data.items[d.recent[0]].display_title for d in chosen if d.recent}
        links = facts.links if domains is None or len(chosen) > 1 else []
        messages = self.templates["facts"].render(domains=chosen, recent=recent, links=links)
        return " ".join(messages[-1].content.split())

    def facts_profile(self, facts: ProfileFacts, domain: str | None = None) -> Profile:
        """A profile made from the facts alone (the grounded fallback and the facts mode)."""
        limit = self.params.max_list_items
        doms = [d for d in facts.domains if domain is None or d.domain == domain]
        sub = ProfileFacts(history_len=facts.history_len, domains=doms, links=facts.links)
        return Profile(
            summary=self.facts_text(facts, doms) or "No purchases.",
            preferences=sub.values()[:limit],
            cross_domain_themes=sub.themes()[:limit] if domain is None else [],
            evidence_item_ids=sub.evidence()[:limit],
        )

    def _grounded_check(
        self, history: Sequence[str], values: Sequence[str], themes: Sequence[str]
    ) -> Callable[[Profile], tuple[Profile, bool, list[str]]]:
        """The checks a grounded answer must pass; a failing summary is mended by dropping
        its failing (or repeated) clauses, when what is left passes and names a fact."""
        allowed_values = {v.casefold() for v in values}
        allowed_themes = {t.casefold() for t in themes}

        def check(profile: Profile) -> tuple[Profile, bool, list[str]]:
            # Constrained decoding keeps the lists to the facts; free text (unconstrained runs)
            # may not: drop what is not a listed value, as the schema would have.
            profile = profile.model_copy(
                update={
                    "preferences": [
                        v for v in profile.preferences if v.casefold() in allowed_values
                    ],
                    "cross_domain_themes": [
                        t for t in profile.cross_domain_themes if t.casefold() in allowed_themes
                    ],
                    "dislikes": [],
                }
            )
            found = self.checker.check(profile, history)
            if found.ok and self.checker.names_a_fact(profile.summary, history):
                return profile, False, []
            problems = found.problems() or ["the summary names none of the facts"]
            mended = self.checker.repair_text(profile.summary, history)
            repaired = profile.model_copy(update={"summary": mended})
            if (
                mended
                and self.checker.check(repaired, history).ok
                and self.checker.names_a_fact(mended, history)
            ):
                return repaired, True, problems
            raise ParseError("failed the checks: " + "; ".join(problems))

        return check

    def _facts_summaries(self, plans: list[_UserPlan]) -> None:
        """Level 1 of the grounded mode: each group summarised by its facts' text, no LLM call.
        (The analyzer prompt given the facts added nothing they do not say, at 2-3 calls per
        user: "These purchases have in common that they are all made by brands and kinds
        listed above", SmolLM2-135M on user t1.)"""
        for plan in plans:
            for dom in plan.domains:
                for group in dom.groups:
                    text = self.facts_text(self.facts(group.item_ids))
                    dom.summaries.append(
                        GroupSummary(
                            key=group.key, item_ids=list(group.item_ids), text=text, call=CallInfo()
                        )
                    )

    async def _summarise_groups(self, plans: list[_UserPlan]) -> None:
        """Level 1: one analyzer call per group of every user in the batch."""
        slots: list[tuple[_UserPlan, _DomainPlan, Group]] = []
        reqs: list[GenerationRequest] = []
        template = self.templates["group"]
        for plan in plans:
            for dom in plan.domains:
                for group in dom.groups:
                    messages = template.render(domain=dom.domain, items=self._items(group.item_ids))
                    reqs.append(self._request(messages, self.params.group_max_tokens))
                    slots.append((plan, dom, group))
        results = await self.backend.agenerate_batch(reqs) if reqs else []
        for (plan, dom, group), result in zip(slots, results, strict=True):
            if isinstance(result, LLMError):
                plan.error = plan.error or f"group summary: {result}"
                continue
            info = _call_info(result)
            text = cut(result.text, 600)
            if not text:
                # An empty answer: the titles themselves stand in for the summary (counted).
                titles = "; ".join(cut(i.title, 60) for i in self._items(group.item_ids))
                text = f"Bought: {titles}"
                info = info.model_copy(update={"fallback": True, "parse_error": "empty answer"})
            dom.summaries.append(
                GroupSummary(key=group.key, item_ids=list(group.item_ids), text=text, call=info)
            )

    def _accept(self, job: _JsonJob, text: str, info: CallInfo) -> Profile:
        """The profile in ``text`` (parsed, repaired, checked); ParseError when unusable."""
        parsed = parse_profile(text, job.allowed_ids)
        info.repaired = parsed.repaired
        info.dropped_evidence = parsed.dropped_evidence
        if job.check is None:
            return parsed.profile
        try:
            profile, mended, problems = job.check(parsed.profile)
        except ParseError as exc:
            info.check_problems = [str(exc)]
            raise
        info.check_problems, info.text_repaired = problems, mended
        return profile

    async def _json_stage(self, jobs: list[_JsonJob]) -> list[tuple[Profile, CallInfo] | LLMError]:
        """JSON profiles for ``jobs``: parse/repair/check, one repair retry, then a counted
        fallback."""
        p = self.params
        max_tokens = p.grounded_max_tokens if self.mode == "grounded" else p.profile_max_tokens
        first = await self.backend.agenerate_batch(
            [self._request(job.messages, max_tokens, job.schema) for job in jobs]
        )
        out: list[tuple[Profile, CallInfo] | LLMError] = []
        retry_at: list[int] = []
        retry_reqs: list[GenerationRequest] = []
        for pos, (job, result) in enumerate(zip(jobs, first, strict=True)):
            if isinstance(result, LLMError):
                out.append(result)
                continue
            info = _call_info(result)
            try:
                profile = self._accept(job, result.text, info)
            except ParseError as exc:
                info.parse_error = str(exc)
                info.bad_answer = result.text[:_BAD_ANSWER_CHARS]
                retry = self.params.retry_on_parse_error
                # Without a retry the fallback is final now; with one it is the retry's backstop.
                info.fallback = not retry
                out.append((job.fallback(), info))
                if retry:
                    repair = self.templates["repair"].render(error=str(exc))
                    echo = ChatMessage(role="assistant", content=result.text[:_RETRY_ECHO_CHARS])
                    retry_at.append(pos)
                    retry_reqs.append(
                        self._request([*job.messages, echo, *repair], max_tokens, job.schema)
                    )
                continue
            out.append((profile, info))
        if retry_reqs:
            second = await self.backend.agenerate_batch(retry_reqs)
            for pos, result in zip(retry_at, second, strict=True):
                previous = out[pos]
                if isinstance(result, LLMError) or isinstance(previous, LLMError):
                    out[pos] = result if isinstance(result, LLMError) else previous
                    continue
                fallback, first_info = previous
                info = first_info.add(_call_info(result))
                info.retried = True
                info.finish_reason = result.finish_reason
                try:
                    profile = self._accept(jobs[pos], result.text, info)
                except ParseError as exc:
                    info.parse_error = str(exc)
                    info.bad_answer = result.text[:_BAD_ANSWER_CHARS]
                    info.fallback = True
                    info.check_problems = [*first_info.check_problems, *info.check_problems]
                    out[pos] = (fallback, info)
                    continue
                # Kept: why the retry was needed.
                info.parse_error, info.bad_answer = first_info.parse_error, first_info.bad_answer
                info.check_problems = [*first_info.check_problems, *info.check_problems]
                out[pos] = (profile, info)
        return out

    def _domain_fallback(self, dom: _DomainPlan) -> Callable[[], Profile]:
        limit = self.params.max_list_items

        def build() -> Profile:
            recent = dom.history[-limit:]
            summaries = " ".join(s.text for s in dom.summaries)
            titles = [cut(i.title, 60) for i in self._items(list(reversed(recent)))]
            return Profile(
                summary=cut(summaries or f"Bought in {dom.domain}: " + "; ".join(titles), 600),
                preferences=titles,
                evidence_item_ids=list(reversed(recent)),
            )

        return build

    def _cross_fallback(self, domains: list[DomainProfile]) -> Callable[[], Profile]:
        limit = self.params.max_list_items

        def build() -> Profile:
            def union(attr: str) -> list[str]:
                return _dedupe([v for d in domains for v in getattr(d.profile, attr)], limit)

            return Profile(
                summary=cut(" ".join(f"{d.domain}: {d.profile.summary}" for d in domains), 800),
                preferences=union("preferences"),
                dislikes=union("dislikes"),
                cross_domain_themes=union("cross_domain_themes"),
                evidence_item_ids=union("evidence_item_ids"),
            )

        return build

    def _domain_job(self, plan: _UserPlan, dom: _DomainPlan) -> _JsonJob:
        template = self.templates["domain"]
        if self.mode == "free":
            listed = dom.history[-self.params.titles_per_group :]
            messages = template.render(
                domain=dom.domain,
                summaries=[s.text for s in dom.summaries],
                items=self._items(listed),
            )
            return _JsonJob(
                messages,
                frozenset(dom.history),
                self._domain_fallback(dom),
                self._schema(listed),
            )
        assert plan.facts is not None
        facts = plan.facts.domain(dom.domain)
        assert facts is not None
        evidence = facts.evidence()
        messages = template.render(domain=dom.domain, facts=facts, recent=self._items(facts.recent))
        values = facts.values()
        return _JsonJob(
            messages,
            frozenset(dom.history),
            lambda: self.facts_profile(plan.facts, dom.domain),  # type: ignore[arg-type]
            self._grounded_schema(values, evidence, []),
            self._grounded_check(dom.history, values, []),
        )

    async def _domain_profiles(self, plans: list[_UserPlan]) -> None:
        """Level 2: group summaries -> one JSON profile per domain of every live user."""
        slots: list[tuple[_UserPlan, _DomainPlan]] = []
        jobs: list[_JsonJob] = []
        for plan in plans:
            if plan.error:
                continue
            for dom in plan.domains:
                jobs.append(self._domain_job(plan, dom))
                slots.append((plan, dom))
        results = await self._json_stage(jobs) if jobs else []
        for (plan, dom), result in zip(slots, results, strict=True):
            if isinstance(result, LLMError):
                plan.error = plan.error or f"domain profile ({dom.domain}): {result}"
                continue
            profile, info = result
            plan.domain_profiles.append(
                DomainProfile(
                    domain=dom.domain,
                    grouping="clusters" if dom.grouping == "clusters" else "recency",
                    history_len=len(dom.history),
                    groups=dom.summaries,
                    profile=profile,
                    call=info,
                )
            )

    def _cross_job(self, plan: _UserPlan, doms: list[DomainProfile]) -> _JsonJob:
        history = plan.user.history
        cited = [i for d in doms for i in d.profile.evidence_item_ids]
        item_ids = _dedupe([*cited, *reversed(history)], _CROSS_IDS)
        profiles = [{"domain": d.domain, **d.profile.model_dump()} for d in doms]
        domains = [d.domain for d in doms]
        if self.mode == "free":
            messages = self.templates["cross"].render(
                domains=domains, profiles=profiles, item_ids=item_ids
            )
            return _JsonJob(
                messages, frozenset(history), self._cross_fallback(doms), self._schema(item_ids)
            )
        facts = plan.facts
        assert facts is not None
        themes = facts.themes()
        values = _dedupe([*(v for d in doms for v in d.profile.preferences), *facts.values()], 40)
        messages = self.templates["cross"].render(
            domains=domains, profiles=profiles, links=themes, item_ids=item_ids
        )
        return _JsonJob(
            messages,
            frozenset(history),
            lambda: self.facts_profile(facts),
            self._grounded_schema(values, item_ids, themes),
            self._grounded_check(history, values, themes),
        )

    async def _cross_profiles(self, plans: list[_UserPlan]) -> dict[str, tuple[Profile, CallInfo]]:
        """Level 3: domain profiles -> the cross-domain profile (one domain: no call needed)."""
        out: dict[str, tuple[Profile, CallInfo]] = {}
        slots: list[_UserPlan] = []
        jobs: list[_JsonJob] = []
        for plan in plans:
            if plan.error:
                continue
            doms = plan.domain_profiles
            if len(doms) == 1:
                out[plan.user.user_id] = (doms[0].profile, CallInfo())
                continue
            jobs.append(self._cross_job(plan, doms))
            slots.append(plan)
        results = await self._json_stage(jobs) if jobs else []
        for plan, result in zip(slots, results, strict=True):
            if isinstance(result, LLMError):
                plan.error = plan.error or f"cross-domain profile: {result}"
            else:
                out[plan.user.user_id] = result
        return out

    def _facts_only(self, plan: _UserPlan) -> tuple[Profile, CallInfo]:
        """The facts mode: every level from the facts, no LLM call."""
        assert plan.facts is not None
        for dom in plan.domains:
            plan.domain_profiles.append(
                DomainProfile(
                    domain=dom.domain,
                    grouping="recency",
                    history_len=len(dom.history),
                    groups=[],
                    profile=self.facts_profile(plan.facts, dom.domain),
                    call=CallInfo(),
                )
            )
        return self.facts_profile(plan.facts), CallInfo()

    # -- driver -------------------------------------------------------------------------------

    def _tree(
        self, plan: _UserPlan, cross: tuple[Profile, CallInfo], seconds: float
    ) -> ProfileTree:
        return ProfileTree(
            user_id=plan.user.user_id,
            split=plan.user.split,
            history_len=len(plan.user.history),
            backend=self.backend_name,
            model=self.model_name,
            adapter=self.adapter,
            templates={role: t.ref for role, t in self.templates.items()},
            grouping=self.grouping_params(),
            domains=plan.domain_profiles,
            profile=cross[0],
            call=cross[1],
            cache_key=plan.key,
            mode=self.mode,
            facts=plan.facts,
            seconds=round(seconds, 4),
        )

    def cached_users(self, users: Sequence[UserSequence]) -> set[str]:
        """The ids of ``users`` whose tree (for these settings) is in the cache already."""
        if self.cache is None:
            return set()
        return {u.user_id for u in users if self.cache.get(self._plan(u).key) is not None}

    async def _profile_batch(self, users: Sequence[UserSequence]) -> list[UserResult]:
        started = time.perf_counter()
        results: dict[str, UserResult] = {}
        plans: list[_UserPlan] = []
        for user in users:
            plan = self._plan(user)
            hit = self.cache.get(plan.key) if self.cache is not None else None
            if hit is not None:
                results[user.user_id] = UserResult(user.user_id, tree=hit, cached=True)
            elif not plan.domains:
                results[user.user_id] = UserResult(user.user_id, error="empty history")
            else:
                plans.append(plan)
        if plans:
            if self.mode == "facts":
                crosses = {p.user.user_id: self._facts_only(p) for p in plans}
            else:
                if self.mode == "grounded":
                    self._facts_summaries(plans)
                else:
                    await self._summarise_groups(plans)
                await self._domain_profiles(plans)
                crosses = await self._cross_profiles(plans)
            share = (time.perf_counter() - started) / len(plans)
            for plan in plans:
                uid = plan.user.user_id
                if plan.error or uid not in crosses:
                    log.warning("user %s failed: %s", uid, plan.error)
                    results[uid] = UserResult(uid, error=plan.error or "failed", seconds=share)
                    continue
                tree = self._tree(plan, crosses[uid], share)
                if self.cache is not None:
                    self.cache.put(tree)
                results[uid] = UserResult(uid, tree=tree, seconds=share)
        ordered = [results[u.user_id] for u in users]
        if self.on_results is not None:
            self.on_results(ordered)
        return ordered

    async def aprofile_users(
        self,
        users: Sequence[UserSequence],
        progress: Callable[[list[UserResult]], None] | None = None,
    ) -> tuple[list[UserResult], ProfileRunStats]:
        """Every user, in batches of ``profile.batch_users``; failures are results, not raises."""
        stats = ProfileRunStats()
        started = time.perf_counter()
        out: list[UserResult] = []
        size = max(1, self.params.batch_users)
        for start in range(0, len(users), size):
            batch = await self._profile_batch(users[start : start + size])
            for result in batch:
                stats.add(result)
            out.extend(batch)
            if progress is not None:
                progress(batch)
        stats.seconds = time.perf_counter() - started
        return out, stats

    def profile_users(
        self,
        users: Sequence[UserSequence],
        progress: Callable[[list[UserResult]], None] | None = None,
    ) -> tuple[list[UserResult], ProfileRunStats]:
        async def run() -> tuple[list[UserResult], ProfileRunStats]:
            try:
                return await self.aprofile_users(users, progress)
            finally:
                if self._backend is not None:
                    await self._backend.aclose()  # async clients belong to this loop

        return asyncio.run(run())

    def profile_user(self, user: UserSequence) -> UserResult:
        return self.profile_users([user])[0][0]
