"""Checkpoint folders: a ``config.json`` that says how to rebuild the model and which data it
was trained on, next to the model's own files (``model.pt``, ``counts.json``, ...).

The catalog's item ids are stored in full so that loading against other data fails with a
message that says what differs, instead of silently scoring item k with item j's embedding.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from agent.data.schema import DataError, ItemCatalog

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
FIT_REPORT_FILE = "fit_report.json"
FORMAT_VERSION = 1


class CheckpointError(DataError):
    """A checkpoint that cannot be used with this model or this data; the message says why."""


def catalog_fingerprint(catalog: ItemCatalog) -> dict[str, Any]:
    digest = hashlib.sha256("\n".join(catalog.ids).encode("utf-8")).hexdigest()
    return {"n_items": len(catalog), "sha256": digest, "ids": list(catalog.ids)}


def check_catalog(saved: dict[str, Any], catalog: ItemCatalog, path: Path) -> None:
    """Raise ``CheckpointError`` unless ``catalog`` has the same ids in the same order."""
    if saved.get("sha256") == catalog_fingerprint(catalog)["sha256"]:
        return
    saved_ids: list[str] = list(saved.get("ids", []))
    current = set(catalog.ids)
    missing = [i for i in saved_ids if i not in current]
    extra = sorted(current - set(saved_ids))
    detail = (
        f"checkpoint has {len(saved_ids)} items, the data {len(catalog)}; "
        f"{len(missing)} checkpoint items are not in the data (e.g. {missing[:3]}), "
        f"{len(extra)} data items are not in the checkpoint (e.g. {extra[:3]})"
    )
    if not missing and not extra:
        detail = "same items but in another order (the dense ids would not match)"
    raise CheckpointError(
        f"checkpoint was trained on other data: {detail}; train again on this data", path=path
    )


def write_config(out: Path, model: str, catalog: ItemCatalog, config: dict[str, Any]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    body = {
        "format_version": FORMAT_VERSION,
        "model": model,
        "config": config,
        "catalog": catalog_fingerprint(catalog),
    }
    path = out / CONFIG_FILE
    path.write_text(json.dumps(body, indent=1), encoding="utf-8")
    return path


def read_config(path: Path, model: str, catalog: ItemCatalog) -> dict[str, Any]:
    """The ``config`` a checkpoint folder was saved with, after checking model and data."""
    cfg_path = path / CONFIG_FILE
    if not cfg_path.is_file():
        raise CheckpointError(f"not a checkpoint folder (no {CONFIG_FILE})", path=path)
    try:
        body = json.loads(cfg_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"unreadable: {exc}", path=cfg_path) from exc
    if body.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"format version {body.get('format_version')!r}, expected {FORMAT_VERSION}",
            path=cfg_path,
        )
    if body.get("model") != model:
        raise CheckpointError(
            f"checkpoint is of model {body.get('model')!r}, not {model!r}", path=cfg_path
        )
    check_catalog(body.get("catalog", {}), catalog, cfg_path)
    config: dict[str, Any] = body["config"]
    return config
