"""Evaluation harness: candidates, ranking metrics, evaluator, reports.

Trainers use ``valid_ndcg10`` (or ``make_valid_fn(data, settings)``) as their ``ValidFn``.
"""

from eval.evaluator import EvalResult, RankingEvaluator, make_valid_fn, valid_ndcg10

__all__ = ["EvalResult", "RankingEvaluator", "make_valid_fn", "valid_ndcg10"]
