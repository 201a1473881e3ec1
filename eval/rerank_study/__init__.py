"""Rerank studies: LLM-stage rows (reranker, prompt, adapter, profile, fusion) on one retriever,
on the same users and candidates, with paired differences (``recbridge rerank-study FILE``)."""

from eval.rerank_study.report import markdown, paired_interval, summarize_rows, write_report
from eval.rerank_study.run import RerankStudy, RowResult, run_study
from eval.rerank_study.spec import (
    RerankRow,
    RerankStudyError,
    RerankStudySpec,
    load_rerank_study,
    row_settings,
)

__all__ = [
    "RerankRow",
    "RerankStudy",
    "RerankStudyError",
    "RerankStudySpec",
    "RowResult",
    "load_rerank_study",
    "markdown",
    "paired_interval",
    "row_settings",
    "run_study",
    "summarize_rows",
    "write_report",
]
