"""Evaluation protocols (issue 5, "Protocols"): in-domain, and zero-shot transfer between domains.

- ``in-domain``: the dataset as loaded: train on every domain's sequences, test on every domain's
  targets.
- ``zero-shot SOURCE->TARGET`` (``apply_transfer``):

  * train rows keep only SOURCE items; a user left with fewer than 2 items has nothing to
    train on and is dropped (counted). No TARGET interaction is left in training
    (``check_no_leak`` verifies it on every call).
  * valid/test rows are kept only when their target is a TARGET item. Their histories are
    restricted to TARGET items (``history_from="target"``: the LLM-RecG setting, a target-domain
    user whose own target-domain history is known at test time but never trained on) or to
    SOURCE items (``history_from="source"``: the cross-domain case, a target-domain item
    predicted from the source-domain history). A user left with an empty history is dropped
    (counted).
  * the item catalogue stays whole: the text of TARGET items is available, as the zero-shot
    setting allows, and candidates are still sampled from the target's domain.
  * candidates exclude every item the user interacted with before the target, not only the
    restricted history the models see: the items of the target's domain that the restriction
    removed (with ``history_from="source"``, the user's earlier TARGET items) are recorded in
    ``Dataset.candidate_exclusions`` and are never negatives, in every candidate protocol
    (``eval.candidates``). With ``history_from="target"`` nothing of the target's domain is
    removed, so there are no exclusions and the candidates are exactly those of a plain
    dataset with these rows.

  Model selection (early stopping, LLM-RecG's fusion check) must not look at TARGET
  interactions either: ``selection_data`` is the view ``valid_fn`` ranks on, the valid users
  whose target is a SOURCE item, with their SOURCE histories. Training therefore does not
  depend on ``history_from``, and one checkpoint per (model, SOURCE, TARGET) serves both modes
  (``checkpoint_path``: ``<work_dir>/checkpoints/<model>@zeroshot-<source>-<target>``, never
  the in-domain ``<work_dir>/checkpoints/<model>``).

The transferred ``Dataset`` is named ``<name>@<tag>`` so its candidate files (keyed by the
dataset's name, ``eval.candidates.default_path``) never collide with the in-domain ones; where
a split has exclusions they are part of the candidates' fingerprint and file name, so a file
sampled without them is never reused.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from agent.config import Settings
from agent.data.schema import Dataset, LoadReport, UserSequence
from agent.models.base import FitReport, ValidFn
from agent.models.prepare import ModelNotReady, default_checkpoint, is_checkpoint, train_checkpoint

log = logging.getLogger(__name__)

HistoryFrom = Literal["target", "source"]
HISTORY_FROM: tuple[str, ...] = get_args(HistoryFrom)
IN_DOMAIN = "in-domain"
ZERO_SHOT = "zero-shot"


class TransferError(ValueError):
    """A protocol that cannot be applied (bad syntax, unknown or equal domains, a leak)."""


def _safe(name: str) -> str:
    """A domain name as it may appear in a file name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


@dataclass(frozen=True)
class Transfer:
    """The protocol: in-domain (no source/target) or zero-shot ``source`` -> ``target``."""

    source: str | None = None
    target: str | None = None
    history_from: HistoryFrom = "target"

    @classmethod
    def parse(cls, value: str | None, history_from: str = "target") -> Transfer:
        """``None`` -> in-domain; ``"food:kitchen"`` -> zero-shot food -> kitchen."""
        if history_from not in HISTORY_FROM:
            raise TransferError(
                f"--history-from {history_from!r}: expected {' or '.join(HISTORY_FROM)}"
            )
        hist: HistoryFrom = "source" if history_from == "source" else "target"
        if value is None:
            return cls(history_from=hist)
        source, sep, target = value.partition(":")
        source, target = source.strip(), target.strip()
        if not sep or not source or not target or ":" in target:
            raise TransferError(f"--transfer {value!r}: expected SOURCE:TARGET, e.g. food:kitchen")
        if source == target:
            raise TransferError(f"--transfer {value!r}: source and target must differ")
        return cls(source, target, hist)

    @property
    def zero_shot(self) -> bool:
        return self.source is not None and self.target is not None

    @property
    def protocol(self) -> str:
        return ZERO_SHOT if self.zero_shot else IN_DOMAIN

    @property
    def spec(self) -> str:
        """``SOURCE:TARGET`` as given to ``--transfer`` (empty for in-domain)."""
        return f"{self.source}:{self.target}" if self.zero_shot else ""

    @property
    def label(self) -> str:
        if not self.zero_shot:
            return IN_DOMAIN
        hist = self.target if self.history_from == "target" else self.source
        return f"zero-shot {self.source}->{self.target} (histories: {hist} items)"

    @property
    def model_tag(self) -> str:
        """What training depends on (not ``history_from``): the checkpoint suffix."""
        if not self.zero_shot:
            return IN_DOMAIN
        return f"zeroshot-{_safe(self.source or '')}-{_safe(self.target or '')}"

    @property
    def tag(self) -> str:
        """The whole protocol, file-name safe: dataset name suffix and report folder suffix."""
        if not self.zero_shot:
            return IN_DOMAIN
        return f"{self.model_tag}-hist-{self.history_from}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "protocol": self.protocol,
            "source": self.source,
            "target": self.target,
            "history_from": self.history_from if self.zero_shot else None,
            "label": self.label,
        }


@dataclass
class TransferReport:
    """What ``apply_transfer`` left out: users dropped per reason, interactions removed."""

    transfer: Transfer
    users_in: dict[str, int] = field(default_factory=dict)  # split -> users before
    users_kept: dict[str, int] = field(default_factory=dict)  # split -> users after
    dropped: dict[str, int] = field(default_factory=dict)  # "split: reason" -> users
    interactions_removed: dict[str, int] = field(default_factory=dict)  # split -> of kept users
    selection_users: int = 0  # valid users in selection_data (model selection)

    def drop(self, split: str, reason: str, count: int = 1) -> None:
        if count:
            key = f"{split}: {reason}"
            self.dropped[key] = self.dropped.get(key, 0) + count

    def lines(self) -> list[str]:
        t = self.transfer
        if not t.zero_shot:
            return [f"{IN_DOMAIN}: data unchanged"]
        kept = ", ".join(f"{s} {self.users_kept.get(s, 0)}/{n}" for s, n in self.users_in.items())
        out = [f"{t.label}: users kept {kept}"]
        out += [f"dropped {n} users, {reason}" for reason, n in self.dropped.items()]
        out += [
            f"{split}: {n} interactions outside the kept domain removed from kept users"
            for split, n in self.interactions_removed.items()
            if n
        ]
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.transfer.to_dict(),
            "users_in": dict(self.users_in),
            "users_kept": dict(self.users_kept),
            "dropped": dict(self.dropped),
            "interactions_removed": dict(self.interactions_removed),
            "selection_users": self.selection_users,
        }


def _check_domains(data: Dataset, transfer: Transfer) -> None:
    domains = data.domains
    for role, name in (("source", transfer.source), ("target", transfer.target)):
        if name not in domains:
            raise TransferError(
                f"--transfer {transfer.spec}: unknown {role} domain {name!r} "
                f"(the data has {', '.join(domains)})"
            )


def _domain_of(data: Dataset) -> dict[str, str]:
    return {iid: item.domain for iid, item in data.items.items()}


def _train_users(
    data: Dataset, source: str, domain_of: dict[str, str], report: TransferReport | None
) -> list[UserSequence]:
    """Train rows with SOURCE items only; rows left with fewer than 2 items dropped."""
    out: list[UserSequence] = []
    removed = dropped = 0
    for user in data.iter_split("train"):
        items = tuple(i for i in user.items if domain_of.get(i) == source)
        if len(items) < 2:
            dropped += 1
            continue
        removed += len(user.items) - len(items)
        out.append(
            user if len(items) == len(user.items) else UserSequence(user.user_id, "train", items)
        )
    if report is not None:
        report.drop("train", f"fewer than 2 {source} items", dropped)
        report.interactions_removed["train"] = removed
    return out


def _held_out_users(
    data: Dataset,
    split: Literal["valid", "test"],
    target: str,
    history_domain: str,
    domain_of: dict[str, str],
    report: TransferReport | None,
    exclusions: dict[tuple[str, str], tuple[str, ...]],
) -> list[UserSequence]:
    """``split`` rows whose target is a ``target`` item, histories of ``history_domain`` only.
    The user's items of ``target``'s domain left out of the history (other than the target)
    go to ``exclusions`` under (split, user id): the models do not see them, yet they are never
    candidate negatives."""
    out: list[UserSequence] = []
    other_target = no_history = removed = 0
    for user in data.iter_split(split):
        if user.target is None or domain_of.get(user.target) != target:
            other_target += 1
            continue
        history = tuple(i for i in user.history if domain_of.get(i) == history_domain)
        if not history:
            no_history += 1
            continue
        removed += len(user.history) - len(history)
        out.append(UserSequence(user.user_id, split, (*history, user.target)))
        # Candidates are of the target's domain: only its items can be false negatives.
        kept = set(history)
        prior = data.candidate_exclusions.get((split, user.user_id), ())
        hidden = dict.fromkeys(
            i
            for i in (*user.history, *prior)
            if domain_of.get(i) == target and i != user.target and i not in kept
        )
        if hidden:
            exclusions[(split, user.user_id)] = tuple(hidden)
    if report is not None:
        report.drop(split, f"target not a {target} item", other_target)
        report.drop(split, f"no {history_domain} items in the history", no_history)
        report.interactions_removed[split] = removed
    return out


def _derived(
    data: Dataset,
    name: str,
    users: list[UserSequence],
    notes: Iterable[str],
    exclusions: dict[tuple[str, str], tuple[str, ...]],
) -> Dataset:
    """A new Dataset over the same items (same catalogue, same dense ids) with ``users``."""
    report = LoadReport(
        skipped=Counter(data.report.skipped),
        examples={k: list(v) for k, v in data.report.examples.items()},
        notes=[*data.report.notes, *notes],
    )
    return Dataset(
        name=name, items=data.items, users=users, report=report, candidate_exclusions=exclusions
    )


def check_no_leak(data: Dataset, transfer: Transfer) -> None:
    """Raise TransferError if a train row of ``data`` holds any item outside the source domain."""
    if not transfer.zero_shot:
        return
    domain_of = _domain_of(data)
    for user in data.iter_split("train"):
        bad = [i for i in user.items if domain_of.get(i) != transfer.source]
        if bad:
            raise TransferError(
                f"{transfer.label}: train row {user.user_id!r} holds {len(bad)} items outside "
                f"{transfer.source} (e.g. {bad[0]!r}): target interactions would leak"
            )


def apply_transfer(data: Dataset, transfer: Transfer) -> tuple[Dataset, TransferReport]:
    """The dataset the protocol trains and evaluates on, and what it left out (logged)."""
    report = TransferReport(transfer)
    for split in ("train", "valid", "test"):
        report.users_in[split] = sum(1 for _ in data.iter_split(split))
    if not transfer.zero_shot:
        report.users_kept = dict(report.users_in)
        report.selection_users = report.users_in["valid"]
        return data, report
    _check_domains(data, transfer)
    source, target = transfer.source or "", transfer.target or ""
    history_domain = target if transfer.history_from == "target" else source
    domain_of = _domain_of(data)
    users = _train_users(data, source, domain_of, report)
    held_out: tuple[Literal["valid", "test"], ...] = ("valid", "test")
    exclusions: dict[tuple[str, str], tuple[str, ...]] = {}
    for split in held_out:
        users += _held_out_users(data, split, target, history_domain, domain_of, report, exclusions)
    for split in ("train", "valid", "test"):
        report.users_kept[split] = sum(1 for u in users if u.split == split)
    report.selection_users = sum(
        1 for _ in selection_data(data, transfer, domain_of).iter_split("valid")
    )
    out = _derived(data, f"{data.name}@{transfer.tag}", users, report.lines(), exclusions)
    check_no_leak(out, transfer)
    for line in report.lines():
        log.info("%s", line)
    if not report.users_kept["train"]:
        log.warning("%s: no train row left: trained models cannot be fitted", transfer.label)
    return out, report


def selection_data(
    data: Dataset, transfer: Transfer, domain_of: dict[str, str] | None = None
) -> Dataset:
    """What early stopping ranks on: in-domain, ``data`` itself; zero-shot, the valid users
    whose target is a SOURCE item with their SOURCE histories (no TARGET interaction)."""
    if not transfer.zero_shot:
        return data
    _check_domains(data, transfer)
    source = transfer.source or ""
    domain_of = domain_of or _domain_of(data)
    users = _train_users(data, source, domain_of, None)
    exclusions: dict[tuple[str, str], tuple[str, ...]] = {}  # none: all SOURCE items kept
    users += _held_out_users(data, "valid", source, source, domain_of, None, exclusions)
    return _derived(data, f"{data.name}@{transfer.model_tag}-select", users, (), exclusions)


def transfer_settings(settings: Settings, transfer: Transfer) -> Settings:
    """Zero-shot: ``methods.llm_recg.source_domains = [SOURCE]`` (k-means over source users)."""
    if not transfer.zero_shot:
        return settings
    recg = settings.methods.llm_recg
    wanted = [transfer.source or ""]
    if recg.source_domains and recg.source_domains != wanted:
        log.warning(
            "methods.llm_recg.source_domains %s replaced by %s for %s",
            recg.source_domains,
            wanted,
            transfer.label,
        )
    methods = settings.methods.model_copy(
        update={"llm_recg": recg.model_copy(update={"source_domains": wanted})}
    )
    return settings.model_copy(update={"methods": methods})


def checkpoint_path(settings: Settings, model: str, transfer: Transfer) -> Path:
    """The default checkpoint folder of ``model`` under the protocol (in-domain: unchanged)."""
    if not transfer.zero_shot:
        return default_checkpoint(settings, model)
    return default_checkpoint(settings, f"{model}@{transfer.model_tag}")


def prepare_checkpoints(
    full: Dataset,
    data: Dataset,
    settings: Settings,
    names: Sequence[str],
    transfer: Transfer,
    checkpoints: dict[str, Path],
    *,
    train_missing: bool,
) -> tuple[dict[str, Path], dict[str, Any]]:
    """Zero-shot: a checkpoint for every trainable model in ``names`` not given one, from
    ``checkpoint_path`` (trained on ``data`` now when missing and ``train_missing``), so the
    in-domain default checkpoints are never read or written. Returns (checkpoints, fits)."""
    from agent.models.registry import build_recommender, recommender_class
    from eval.evaluator import make_valid_fn

    out = dict(checkpoints)
    fits: dict[str, Any] = {}
    if not transfer.zero_shot:
        return out, fits
    valid_fn: ValidFn | None = None
    for name in names:
        if name in out or not recommender_class(name).trainable:
            continue
        path = checkpoint_path(settings, name, transfer)
        if is_checkpoint(path):
            log.info("%s: %s checkpoint %s", name, transfer.model_tag, path)
            out[name] = path
            continue
        if not any(True for _ in data.iter_split("train")):
            raise TransferError(f"{transfer.label}: no train row has 2 {transfer.source} items")
        if not train_missing:
            raise ModelNotReady(
                f"{name} has no {transfer.model_tag} checkpoint ({path}) and --no-train-missing "
                f"is set: run `recbridge train --model {name} --transfer {transfer.spec}` or "
                f"pass --checkpoint {name}=PATH"
            )
        if valid_fn is None:
            valid_fn = make_valid_fn(selection_data(full, transfer), settings)
        log.info("%s: no %s checkpoint, training now -> %s", name, transfer.model_tag, path)
        report = build_recommender(name, data, settings).fit(valid_fn=valid_fn, out=path)
        fit = asdict(report)
        fit["checkpoint"] = str(report.checkpoint or path)
        fits[name] = fit
        out[name] = path
    return out, fits


def train_under_protocol(
    name: str, settings: Settings, out: Path, *, transfer: str | None = None
) -> FitReport:
    """Train ``name`` under the protocol (in-domain, or zero-shot ``SOURCE:TARGET``) into
    ``out``: the library's ``train_checkpoint`` on the protocol's data, early stopping on
    valid NDCG@10 of ``selection_data`` (``recbridge train`` and the study's processes).

    ``train.workers > 1``: data-parallel on Ray Train (agent/compute/train.py), whose workers
    each run this function with ``train.workers = 1``."""
    if settings.train.workers > 1:
        from agent.compute.train import train_on_ray  # Ray only where it is asked for

        log.info(
            "training %s on %d Ray Train workers (train.workers)", name, settings.train.workers
        )
        return train_on_ray(name, settings, out, transfer=transfer, train_fn=train_under_protocol)
    from agent.data.loader import load_dataset
    from eval.evaluator import make_valid_fn

    spec = Transfer.parse(transfer, "target")
    full = load_dataset(settings.data)
    data, dropped = apply_transfer(full, spec)
    if spec.zero_shot and not dropped.users_kept["train"]:
        raise TransferError(f"{spec.label}: no train row has 2 {spec.source} items")
    settings = transfer_settings(settings, spec)
    valid_fn = make_valid_fn(selection_data(full, spec), settings)
    log.info("training %s under %s", name, spec.label)
    return train_checkpoint(
        name, data, settings, out, valid_fn=valid_fn, transfer=dropped.to_dict()
    )
