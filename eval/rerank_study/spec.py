"""Rerank study files: LLM-stage rows on one retriever, checked before anything runs.

A row is the retriever alone (no ``reranker``) or the retriever's top N reranked by an LLM
stage: a reranker kind, optionally a prompt template file (any ``.j2`` in ``prompts/`` or a
path), a LoRA adapter (a name that ``recbridge llm serve`` would serve, or ``name=path``), the
profile on or off, and score fusion (``fusion = "valid"``: the weight chosen on the study's
valid users; a number: that weight). Every row runs on the same users and candidates.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from agent.config import ConfigError, Settings, load_settings
from agent.rerank.registry import RERANKERS
from eval.study.spec import load_toml_model

_SLUG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


class RerankStudyError(ValueError):
    """A study file that cannot be run (names the file and the field)."""


class RerankRow(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    reranker: str | None = None  # None: the retriever alone
    template: str | None = None  # prompt file for this row (default: the reranker's)
    adapter: str | None = None  # adapter name, or name=path
    profile: bool = False  # the user's LLM profile in the prompt
    fusion: Literal["valid"] | float | None = None
    set: list[str] = Field(default_factory=list)  # any other settings for this row
    vs: str | None = None  # reference row for the paired difference
    note: str = ""

    @model_validator(mode="after")
    def _check(self) -> RerankRow:
        if not _SLUG.match(self.name):
            raise ValueError(f"row name {self.name!r}: letters, digits and _.+- only")
        if self.reranker is not None and self.reranker not in RERANKERS:
            raise ValueError(
                f"row {self.name!r}: unknown reranker {self.reranker!r} "
                f"(known: {', '.join(RERANKERS)})"
            )
        if self.reranker is None and (self.adapter or self.template or self.fusion is not None):
            raise ValueError(f"row {self.name!r}: adapter/template/fusion need a reranker")
        if isinstance(self.fusion, float) and not 0.0 <= self.fusion <= 1.0:
            raise ValueError(f"row {self.name!r}: fusion weight must be in [0, 1]")
        return self

    @property
    def adapter_name(self) -> str | None:
        return self.adapter.split("=", 1)[0] if self.adapter else None


class RerankStudySpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = ""
    retriever: str = "sasrec-id"
    retriever_checkpoint: Path | None = None  # default: the trained default checkpoint
    split: Literal["valid", "test"] = "test"
    users: int = 500  # seeded sample of the split (0 = all)
    valid_users: int = 200  # seeded valid users for fusion weights
    top_n: int = 20
    seed: int = 42
    backend: Literal["local", "openai"] = "local"
    bootstrap: int = 1000
    set: list[str] = Field(default_factory=list)
    rows: list[RerankRow]

    @model_validator(mode="after")
    def _check(self) -> RerankStudySpec:
        if not _SLUG.match(self.name):
            raise ValueError(f"study name {self.name!r}: letters, digits and _.+- only")
        if not self.rows:
            raise ValueError("a study needs at least one row")
        seen: set[str] = set()
        for row in self.rows:
            if row.name in seen:
                raise ValueError(f"row {row.name!r} appears twice")
            if row.vs is not None and row.vs not in seen:
                raise ValueError(f"row {row.name!r}: vs {row.vs!r} is not an earlier row")
            seen.add(row.name)
        return self


def load_rerank_study(path: Path) -> RerankStudySpec:
    """Read and check a rerank study file; errors name the file and the field."""
    return load_toml_model(path, RerankStudySpec, RerankStudyError)


def row_settings(
    spec: RerankStudySpec, row: RerankRow, config_file: Path | None, base_set: list[str]
) -> Settings:
    """The row's settings: base, the study's ``set``, the row's fields, then its ``set``."""
    items = [*base_set, *spec.set, f"seed={spec.seed}", f"rerank.top_n={spec.top_n}"]
    items.append(f"rerank.use_profile={str(row.profile).lower()}")
    if row.adapter_name:
        items.append(f"rerank.adapter={row.adapter_name}")
    if row.adapter and "=" in row.adapter:
        name, path = row.adapter.split("=", 1)
        items.append(f"llm.adapters.{name}={path}")
    if row.template and row.reranker:
        items.append(f"rerank.templates.{row.reranker}={row.template}")
    items.extend(row.set)
    try:
        return load_settings(config_file, set_items=items)
    except ConfigError as exc:
        raise RerankStudyError(f"study {spec.name!r}, row {row.name!r}: {exc}") from None
