"""Pydantic models of a hierarchical user profile (they cross the LLM, cache and CLI boundaries)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from agent.profiles.facts import ProfileFacts
from agent.prompts import TemplateRef


class Profile(BaseModel):
    """One profile, as the LLM is asked to write it (domain level or cross-domain)."""

    # The LLM may add keys of its own; they are ignored, not an error.
    model_config = ConfigDict(extra="ignore")

    summary: str = Field(min_length=1)
    preferences: list[str] = Field(default_factory=list)
    dislikes: list[str] = Field(default_factory=list)
    cross_domain_themes: list[str] = Field(default_factory=list)
    evidence_item_ids: list[str] = Field(default_factory=list)


def profile_json_schema(
    max_items: int = 5,
    *,
    summary_chars: int = 400,
    phrase_chars: int = 60,
    evidence_ids: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The schema sent for constrained decoding: closed object, bounded strings and lists.

    Written out by hand (not ``Profile.model_json_schema()``) so it stays within what vLLM's
    structured-output grammars accept. The bounds matter with a small model: unbounded, it
    repeats one sentence in ``summary`` until ``max_tokens`` (measured with SmolLM2-135M) and
    the lists never come. With ``evidence_ids`` the ids are an enum: none can be invented.
    """
    phrases = {
        "type": "array",
        "items": {"type": "string", "maxLength": phrase_chars},
        "maxItems": max_items,
    }
    evidence: dict[str, Any] = {"type": "array", "items": {"type": "string"}, "maxItems": max_items}
    if evidence_ids:
        evidence["items"] = {"type": "string", "enum": list(dict.fromkeys(evidence_ids))}
    return {
        "type": "object",
        "properties": {
            "summary": {"type": "string", "maxLength": summary_chars},
            "preferences": phrases,
            "dislikes": phrases,
            "cross_domain_themes": phrases,
            "evidence_item_ids": evidence,
        },
        "required": [
            "summary",
            "preferences",
            "dislikes",
            "cross_domain_themes",
            "evidence_item_ids",
        ],
        "additionalProperties": False,
    }


def grounded_json_schema(
    values: Sequence[str],
    evidence_ids: Sequence[str],
    themes: Sequence[str],
    max_items: int = 5,
    *,
    summary_chars: int = 400,
) -> dict[str, Any]:
    """The schema of a grounded profile: preferences only from ``values`` (the facts'
    attribute values), themes only from ``themes`` (the facts' cross-domain links), evidence
    only from ``evidence_ids``, and no dislikes (purchases do not show any). Only the summary
    is free text; the checker reads it after generation."""

    def choice(options: Sequence[str], least: int = 0) -> dict[str, Any]:
        unique = list(dict.fromkeys(options))
        if not unique:
            return {"type": "array", "items": {"type": "string"}, "maxItems": 0}
        most = min(max_items, len(unique))
        return {
            "type": "array",
            "items": {"type": "string", "enum": unique},
            "minItems": min(least, most),
            "maxItems": most,
        }

    # The summary comes last: the model writes it after it has picked the facts it names.
    properties = {
        # As many preferences as allowed: the model picks and orders them, it cannot skip them.
        "preferences": choice(values, least=max_items),
        "cross_domain_themes": choice(themes),
        "evidence_item_ids": choice(evidence_ids),
        "dislikes": {"type": "array", "items": {"type": "string"}, "maxItems": 0},
        "summary": {"type": "string", "maxLength": summary_chars},
    }
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }


class CallInfo(BaseModel):
    """What producing one node cost and how it went (sums over a retry)."""

    calls: int = 0  # LLM requests made (a repair retry adds one)
    http_retries: int = 0  # requests sent again after a 5xx/429/timeout/connection error
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    schema_enforced: bool = False
    finish_reason: str = ""
    repaired: bool = False  # JSON needed repair (fences, prose, truncation) but parsed
    retried: bool = False  # the first answer was unusable; the repair prompt was sent
    fallback: bool = False  # no usable answer: built from the inputs' text instead
    parse_error: str | None = None  # why the (last) answer was unusable
    bad_answer: str | None = None  # the start of that unusable answer, for inspection
    dropped_evidence: int = 0  # evidence ids not in the user's history, removed
    # Grounded profiles: what the checker found in an answer (before a repair or retry), and
    # whether failing summary sentences were dropped (the rest passed).
    check_problems: list[str] = Field(default_factory=list)
    text_repaired: bool = False

    def add(self, other: CallInfo) -> CallInfo:
        return CallInfo(
            calls=self.calls + other.calls,
            http_retries=self.http_retries + other.http_retries,
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            latency_s=self.latency_s + other.latency_s,
            schema_enforced=self.schema_enforced or other.schema_enforced,
        )


class GroupSummary(BaseModel):
    """One group of a domain history (a cluster, or a recency chunk) and its summary."""

    key: str  # "cluster-3" or "recent-0" (0 = the newest chunk)
    item_ids: list[str]
    text: str
    call: CallInfo


class DomainProfile(BaseModel):
    domain: str
    grouping: Literal["clusters", "recency"]
    history_len: int
    groups: list[GroupSummary]
    profile: Profile
    call: CallInfo


class ProfileTree(BaseModel):
    """Group summaries -> domain profiles -> the cross-domain profile of one user."""

    user_id: str
    split: str
    history_len: int
    backend: str
    model: str
    adapter: str | None = None
    templates: dict[str, TemplateRef]  # role -> the exact template used
    grouping: dict[str, Any]  # the parameters that shaped the groups
    domains: list[DomainProfile]
    profile: Profile  # the cross-domain profile
    call: CallInfo  # the cross-domain merge (calls=0 when the user has one domain)
    cache_key: str = ""
    mode: str = "free"  # profile.mode that wrote it: free, grounded or facts
    seconds: float = 0.0  # wall time it took (its share of the batch it was made in)
    facts: ProfileFacts | None = None  # what the grounded prompts were given (with evidence)

    def calls(self) -> list[CallInfo]:
        out = [self.call]
        for dom in self.domains:
            out.append(dom.call)
            out.extend(g.call for g in dom.groups)
        return out

    @property
    def llm_calls(self) -> int:
        return sum(c.calls for c in self.calls())

    @property
    def prompt_tokens(self) -> int:
        return sum(c.prompt_tokens for c in self.calls())

    @property
    def completion_tokens(self) -> int:
        return sum(c.completion_tokens for c in self.calls())

    @property
    def fallbacks(self) -> int:
        return sum(c.fallback for c in self.calls())

    @property
    def dropped_evidence(self) -> int:
        return sum(c.dropped_evidence for c in self.calls())

    @property
    def latency_s(self) -> float:
        return sum(c.latency_s for c in self.calls())
