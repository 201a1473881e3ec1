"""Training examples for the reranker adapters, as JSON lines with a manifest beside them.

One example is one train row cut at a point: the history before it, the item that came next
(the target) and the candidates shown with it, already in display order (labels A, B, ... are
given by position when the prompt is rendered). Only ids are stored: titles and the prompt
come from the dataset and the templates at training time, through the reranker's own code.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent.data.schema import DataError

Recipe = Literal["random", "hard", "hard-sampled"]
MANIFEST_FILE = "manifest.json"


class RerankExample(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str  # <user_id>:<history length>
    user_id: str
    recipe: Recipe
    history: list[str]  # item ids, oldest first
    candidates: list[str]  # display order; the target is among them
    target: str
    domain: str  # the target's (and every candidate's) domain
    inserted: bool = False  # hard: the retriever missed the target; it took a random place

    @property
    def target_index(self) -> int:
        return self.candidates.index(self.target)


class Manifest(BaseModel):
    """What a data file holds and how it was made: enough to rebuild it and to trust it."""

    model_config = ConfigDict(extra="forbid")

    recipe: Recipe
    examples: int
    seed: int
    source_rows: int  # train rows sampled
    candidates: int
    data_fingerprint: str  # of the dataset's train rows and items (``data_fingerprint``)
    templates: dict[str, str]  # template file -> sha256 (the prompts these ids will render to)
    target_positions: dict[str, int]  # target index -> count (must be roughly uniform)
    per_domain: dict[str, int]
    inserted: int = 0  # hard: targets the retriever missed
    retriever: dict[str, Any] = Field(default_factory=dict)  # hard: checkpoint + fit summary
    settings: dict[str, Any] = Field(default_factory=dict)  # the finetune settings used

    @classmethod
    def describe(cls, examples: Sequence[RerankExample], **fields: Any) -> Manifest:
        positions = Counter(str(ex.target_index) for ex in examples)
        return cls(
            examples=len(examples),
            target_positions=dict(sorted(positions.items(), key=lambda kv: int(kv[0]))),
            per_domain=dict(Counter(ex.domain for ex in examples)),
            inserted=sum(ex.inserted for ex in examples),
            **fields,
        )


def write_examples(path: Path, examples: Iterable[BaseModel], manifest: BaseModel) -> None:
    """The JSONL and its manifest, each written to a temporary name and renamed (a kill
    leaves the old pair or none, never half a file). Any example type (reranker, profile)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        for ex in examples:
            handle.write(ex.model_dump_json() + "\n")
    tmp.replace(path)
    man = manifest_path(path)
    man_tmp = man.with_suffix(".tmp")
    man_tmp.write_text(manifest.model_dump_json(indent=1), encoding="utf-8")
    man_tmp.replace(man)


def manifest_path(path: Path) -> Path:
    return path.with_name(path.stem + "." + MANIFEST_FILE)


def read_examples(path: Path) -> list[RerankExample]:
    """Every example of a JSONL file; a bad line is a DataError naming file, line and field."""
    return list(iter_examples(path))


def iter_examples(path: Path) -> Iterator[RerankExample]:
    if not path.is_file():
        raise DataError("training data not found: run `recbridge finetune data` first", path=path)
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                ex = RerankExample.model_validate_json(line)
            except ValidationError as exc:
                err = exc.errors()[0]
                field = ".".join(str(p) for p in err["loc"]) or None
                raise DataError(err["msg"], path=path, line=number, field_name=field) from None
            if ex.target not in ex.candidates:
                raise DataError(
                    "target is not among the candidates",
                    path=path,
                    line=number,
                    field_name="target",
                )
            yield ex


def read_manifest(path: Path) -> Manifest:
    man = manifest_path(path)
    if not man.is_file():
        raise DataError("manifest not found (rebuild with `recbridge finetune data`)", path=man)
    return Manifest.model_validate_json(man.read_text(encoding="utf-8"))


def data_fingerprint(train_rows: Sequence[tuple[str, Sequence[str]]], n_items: int) -> str:
    """sha256 (16 hex) over the train rows (user id and items) and the catalogue size."""
    digest = hashlib.sha256()
    digest.update(str(n_items).encode())
    for user_id, items in train_rows:
        digest.update(json.dumps([user_id, list(items)]).encode())
    return digest.hexdigest()[:16]
