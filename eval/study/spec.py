"""Study files: rows, protocols, seeds; checked before anything runs."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from agent.config import ConfigError, Settings, load_settings
from agent.models.checkpoint import FIT_REPORT_FILE
from agent.models.prepare import is_checkpoint
from agent.models.registry import UnknownModelError, recommender_class
from eval.transfer import HistoryFrom, Transfer, TransferError

M = TypeVar("M", bound=BaseModel)
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
    # a subset of the study's seeds, for rows too costly to train with all (the table's n says it)
    seeds: list[int] | None = None
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
            if row.seeds is not None and (not row.seeds or set(row.seeds) - set(self.seeds)):
                raise ValueError(
                    f"row {row.name!r}: seeds {row.seeds} must be some of the study's {self.seeds}"
                )
            seen[row.name] = row
        for protocol in self.protocols:
            transfers(protocol, self.history_from)  # raises on a bad protocol
        return self

    def row(self, name: str) -> StudyRow:
        return next(r for r in self.rows if r.name == name)

    def seeds_of(self, row: StudyRow, seeds: Sequence[int] | None = None) -> list[int]:
        """The seeds ``row`` runs with: ``seeds`` (default the study's), cut to the row's own
        (those of ``checkpoint_of``'s row when it scores another row's runs)."""
        own = self.row(row.checkpoint_of).seeds if row.checkpoint_of else row.seeds
        return [s for s in (seeds or self.seeds) if own is None or s in own]


def transfers(protocol: str, history_from: Sequence[str]) -> list[Transfer]:
    """``in-domain`` -> one protocol; ``SOURCE:TARGET`` -> one per history mode."""
    if protocol == "in-domain":
        return [Transfer()]
    try:
        return [Transfer.parse(protocol, h) for h in history_from]
    except TransferError as exc:
        raise ValueError(str(exc)) from None


def load_toml_model(path: Path, model: type[M], error: type[ValueError]) -> M:
    """Read a TOML file into ``model``; every problem is one ``error`` naming file and field."""
    if not path.is_file():
        raise error(f"study file {path}: not found")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise error(f"study file {path}: cannot parse: {exc}") from None
    try:
        return model(**raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'top level'}: {err['msg']}"
            for err in exc.errors()
        )
        raise error(f"study file {path}: {problems}") from None


def load_study(path: Path) -> StudySpec:
    """Read and check a study file; errors name the file and the field."""
    return load_toml_model(path, StudySpec, StudyError)


def study_dir(settings: Settings, spec: StudySpec) -> Path:
    return settings.work_dir / "studies" / spec.name


def trained_rows(spec: StudySpec) -> list[StudyRow]:
    """Rows that own checkpoints: a trainable model, not scoring another row's."""
    return [
        r for r in spec.rows if r.checkpoint_of is None and recommender_class(r.model).trainable
    ]


def checkpoint_dir(root: Path, transfer: Transfer, row: str, seed: int) -> Path:
    return root / "checkpoints" / transfer.model_tag / row / f"seed{seed}"


def has_run(path: Path) -> bool:
    """A finished training run: a checkpoint and its fit report."""
    return is_checkpoint(path) and (path / FIT_REPORT_FILE).is_file()


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
