"""Faithfulness of hierarchical profiles: what they say, checked against the history.

For each profile tree (``agent.profiles.profiler``; one per user, made in one of the
``profile.mode``s, or with a LoRA adapter) the checker (``agent.profiles.check``) reads every
profile node (the domain profiles and the cross-domain one) and counts:

- cited evidence ids and those in the history (ids the parser dropped count as cited, invalid);
- named attribute words (brands, kinds, categories of the catalogue) and those the history
  supports;
- contradictions (liked and disliked), repeated sentences, summaries that name no fact;
- words found in no catalogue title (invented or mangled words: measured, not checked);
- tokens, LLM calls, seconds and fallbacks (a node the LLM did not write).

``eval.profile_retrieval`` adds the profile-retrieval metric: the profile of the target's
domain (its summary and preferences) as the Chroma query.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from agent.profiles.check import ProfileCheck, ProfileChecker
from agent.profiles.schema import Profile, ProfileTree

# profile-eval sources that are profile trees, named after the profile.mode that writes them
TREE_SOURCES = ("free", "grounded", "facts")


@dataclass
class TreeCheck:
    """The checks of one user's tree, summed over its profile nodes."""

    user_id: str
    nodes: int
    check: ProfileCheck
    silent_summaries: int  # summaries that name nothing the history supports
    fallbacks: int  # JSON nodes the LLM did not write
    llm_calls: int
    tokens: int
    seconds: float


def nodes(tree: ProfileTree) -> list[tuple[Profile, int]]:
    """(profile, evidence ids the parser dropped) of each node: the domain profiles, and the
    cross-domain profile when it is a node of its own (users with several domains)."""
    out = [(d.profile, d.call.dropped_evidence) for d in tree.domains]
    if len(tree.domains) != 1:
        out.append((tree.profile, tree.call.dropped_evidence))
    return out


def check_tree(tree: ProfileTree, history: Sequence[str], checker: ProfileChecker) -> TreeCheck:
    total = ProfileCheck()
    silent = 0
    found = nodes(tree)
    for profile, dropped in found:
        total = total.add(checker.check(profile, history, dropped))
        silent += not checker.names_a_fact(profile.summary, history)
    json_calls = [d.call for d in tree.domains] + ([tree.call] if len(tree.domains) != 1 else [])
    return TreeCheck(
        user_id=tree.user_id,
        nodes=len(found),
        check=total,
        silent_summaries=silent,
        fallbacks=sum(c.fallback for c in json_calls),
        llm_calls=tree.llm_calls,
        tokens=tree.prompt_tokens + tree.completion_tokens,
        seconds=tree.seconds,
    )


def query_text(tree: ProfileTree, domain: str) -> str:
    """The profile of ``domain`` (the cross-domain one when the user has none there) as a
    search query: its preferences, then its summary."""
    node = next((d.profile for d in tree.domains if d.domain == domain), tree.profile)
    return "; ".join([*node.preferences, node.summary])


def _share(num: int, den: int) -> float | None:
    return num / den if den else None


def summarise(checks: Sequence[TreeCheck]) -> dict[str, Any]:
    """Pooled shares and totals over users (module docstring)."""
    cited = sum(c.check.cited_ids for c in checks)
    named = sum(c.check.named for c in checks)
    n_nodes = sum(c.nodes for c in checks)
    users = max(1, len(checks))
    return {
        "profiles": len(checks),
        "nodes": n_nodes,
        "cited_ids": cited,
        "evidence_valid": _share(sum(c.check.valid_ids for c in checks), cited),
        "named_attributes": named,
        "attributes_supported": _share(sum(c.check.supported for c in checks), named),
        "contradictions": sum(len(c.check.contradictions) for c in checks),
        "repeated_sentences": sum(c.check.repeated_sentences for c in checks),
        "unknown_words": sum(len(c.check.unknown_words) for c in checks),
        "silent_summaries": _share(sum(c.silent_summaries for c in checks), n_nodes),
        "fallback_rate": _share(sum(c.fallbacks for c in checks), n_nodes),
        "llm_calls_per_profile": sum(c.llm_calls for c in checks) / users,
        "tokens_per_profile": sum(c.tokens for c in checks) / users,
        # Trees made before the profiler recorded wall time carry 0: left out, counted.
        "timed_profiles": len(timed := [c.seconds for c in checks if c.seconds > 0]),
        "seconds_per_profile": sum(timed) / len(timed) if timed else None,
        "unsupported_examples": _examples(checks),
    }


def _examples(checks: Sequence[TreeCheck], limit: int = 12) -> list[str]:
    seen: dict[str, None] = {}
    for c in checks:
        flagged = [*c.check.unsupported, *c.check.bad_ids, *c.check.contradictions]
        for word in [*flagged, *c.check.unknown_words]:
            seen.setdefault(word, None)
            if len(seen) >= limit:
                return list(seen)
    return list(seen)


def as_rows(checks: Sequence[TreeCheck]) -> list[dict[str, Any]]:
    return [{**asdict(c), "check": asdict(c.check)} for c in checks]
