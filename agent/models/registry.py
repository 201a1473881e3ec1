"""Recommenders by name, as the CLI and the harness know them."""

from __future__ import annotations

import importlib

from agent.config import Settings
from agent.data.schema import Dataset
from agent.models.base import Recommender

# name -> "module:Class"; imported lazily so `recbridge --help` stays fast.
RECOMMENDERS: dict[str, str] = {
    "popularity": "agent.models.popularity:PopularityRecommender",
    "text-knn": "agent.models.text_knn:TextKNNRecommender",
    "sasrec-id": "agent.models.sasrec_id:SASRecIDRecommender",
    "sasrec-text": "agent.models.sasrec_text:SASRecTextRecommender",
    "sasrec-hybrid": "agent.models.sasrec_hybrid:SASRecHybridRecommender",
    "gru4rec": "agent.models.sequential:GRU4RecRecommender",
    "llm4cdsr": "agent.models.llm4cdsr:LLM4CDSRRecommender",
    "llm-recg": "agent.models.llm_recg:LLMRecGRecommender",
    "semacdr": "agent.models.semacdr:SemaCDRRecommender",
}


class UnknownModelError(ValueError):
    pass


def recommender_class(name: str) -> type[Recommender]:
    if name not in RECOMMENDERS:
        raise UnknownModelError(
            f"unknown model {name!r}; choose one of: {', '.join(sorted(RECOMMENDERS))}"
        )
    module_name, cls_name = RECOMMENDERS[name].split(":")
    cls: type[Recommender] = getattr(importlib.import_module(module_name), cls_name)
    return cls


def build_recommender(name: str, data: Dataset, settings: Settings) -> Recommender:
    return recommender_class(name)(data, settings)
