"""Multi-seed studies: every row of a study file trained with each seed, all evaluated on the
same seeded candidates, reported as mean and spread over seeds (issue 5's tables).

A study file (TOML, ``eval/studies/``) names the protocols (``in-domain`` or ``SOURCE:TARGET``
zero-shot, with the test histories taken from the target or the source domain), the seeds, the
settings every row shares (``set``: e.g. the epoch budget) and the rows: a model, the settings
that change its training (``set``: an ablation) and those that change only its scoring
(``score_set``, with ``checkpoint_of``: the row whose checkpoints it scores).

The pipeline:

1. ``plan_training``: one job per (protocol, row, seed) whose checkpoint is not on disk yet:
   ``<study>/checkpoints/<protocol>/<row>/seed<S>/``. A model that needs no training (text-knn,
   popularity) has no job and one deterministic result.
2. ``run_training``: the jobs as ``recbridge train`` subprocesses, ``jobs`` at a time (one
   torch thread each), each with its own log; a failed job is reported and leaves its cell
   empty, never a silently shorter mean.
3. ``evaluate_study``: per protocol, one ``RankingEvaluator`` (candidates seeded by
   ``eval_seed``, so the model seeds change the models only) scores every checkpoint; each
   result is cached beside the study and reused while its checkpoint is unchanged.
4. ``aggregate`` + ``study_markdown``: mean ± sample standard deviation over seeds per domain,
   the seeds' paired difference to a row's reference (``vs``), training time per epoch.
"""

from __future__ import annotations

from eval.study.report import RowSummary, Stat, aggregate, study_markdown, write_study
from eval.study.scoring import METRICS, Cell, evaluate_study
from eval.study.spec import (
    StudyError,
    StudyRow,
    StudySpec,
    check_row_settings,
    checkpoint_dir,
    load_study,
    row_settings,
    study_dir,
    trained_rows,
    transfers,
)
from eval.study.training import ProcessJob, TrainJob, plan_training, run_training

__all__ = [
    "METRICS",
    "Cell",
    "ProcessJob",
    "RowSummary",
    "Stat",
    "StudyError",
    "StudyRow",
    "StudySpec",
    "TrainJob",
    "aggregate",
    "check_row_settings",
    "checkpoint_dir",
    "evaluate_study",
    "load_study",
    "plan_training",
    "row_settings",
    "run_training",
    "study_dir",
    "study_markdown",
    "trained_rows",
    "transfers",
    "write_study",
]
