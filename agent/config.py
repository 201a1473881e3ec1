"""One settings model for every RecBridge command.

Precedence, highest first: CLI overrides (``--set section.key=value`` and the commands' own
flags), environment (``RECBRIDGE_*``, nested with ``__``, e.g. ``RECBRIDGE_STORE__URL``), a
config file (YAML or TOML, ``--config`` or ``RECBRIDGE_CONFIG``), then the defaults below.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from agent.models.method_settings import MethodSettings, RankingLossName

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA_DIR = PROJECT_ROOT.parent / "shared" / "data" / "food-kitchen"


class ConfigError(ValueError):
    """A config file, env variable or override that cannot be used; the message names it."""


class TableColumns(BaseModel):
    """Column names of the interaction and item tables (both use ``item`` and ``domain``)."""

    model_config = ConfigDict(extra="forbid")

    user: str = "user_id"
    item: str = "item_id"
    timestamp: str = "timestamp"
    domain: str = "domain"  # optional in the interaction table; checked against the item table
    title: str = "title"
    categories: str = "categories"  # CSV: "|"-separated; JSONL/Parquet: a list or a string
    description: str = "description"
    brand: str = "brand"
    price: str = "price"


class AmazonSource(BaseModel):
    """One domain of the Amazon review dumps (2018 or 2023 JSON lines, plain or .gz)."""

    model_config = ConfigDict(extra="forbid")

    domain: str
    reviews: Path
    meta: Path


class DataSettings(BaseModel):
    path: Path = DEFAULT_DATA_DIR
    # "auto" picks by the files found: items.jsonl+sequences.jsonl -> shared,
    # interactions.*+items.* -> table, meta_<name>.json[l][.gz]+<name>.json[l][.gz] -> amazon.
    format: Literal["auto", "shared", "table", "amazon"] = "auto"
    lenient: bool = False  # skip (and count, and report) bad records instead of failing
    k_core: int = 0  # generic tables: keep users and items with at least k interactions
    max_history: int = 200
    # table/amazon: relative paths below are read from the data.path folder.
    interactions: Path | None = None  # default: interactions.{csv,tsv,jsonl}[.gz]|.parquet
    items_table: Path | None = None  # default: items.{csv,tsv,jsonl}[.gz]|.parquet
    columns: TableColumns = Field(default_factory=TableColumns)
    # One entry per domain; empty = pair meta_<name>.* with <name>.* files in data.path.
    amazon: list[AmazonSource] = Field(default_factory=list)


class EmbeddingSettings(BaseModel):
    backend: Literal["minilm", "openai"] = "minilm"
    model: str = "all-MiniLM-L6-v2"
    url: str | None = None  # OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1
    api_key: str = "local"
    # 32: on 2 CPU cores batches of 32 embed ~15% faster than 64 (README, scaling out)
    batch_size: int = 32
    timeout_s: float = 60.0
    retries: int = 3  # OpenAI backend: extra attempts on 5xx, 429, timeouts, connection errors
    retry_backoff_s: float = 0.5  # first wait between attempts; doubles each retry
    cache_dir: Path | None = None  # default: <work_dir>/embeddings
    template: str = "item_text.j2"


class StoreSettings(BaseModel):
    url: str | None = None  # a `chroma run` server; None = embedded PersistentClient
    path: Path | None = None  # embedded store folder; default: <work_dir>/chroma
    collection: str = "items"
    batch_size: int = 1000
    # HNSW breadth. Domain-filtered top-100 on the full data vs exact cosine: recall 0.94
    # (min 0.77) with Chroma's defaults (10/100), 0.98 (min 0.91) with these.
    hnsw_ef_search: int = 200
    hnsw_ef_construction: int = 200


class TrainSettings(BaseModel):
    # SASRec defaults measured on food-kitchen, 1 shared CPU thread (see agent/models/training.py):
    # sasrec-id ~9 s/epoch, best valid near epoch 30 with bce, 3-5 with sampled-softmax;
    # sasrec-text ~20-25 s/epoch. lr 2e-3 and batch 256 were worse per epoch; the valid curve is
    # noisy, hence patience 5.
    epochs: int = 40
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    hidden: int = 64
    layers: int = 2
    heads: int = 1
    dropout: float = 0.2
    max_len: int = 50
    patience: int = 5  # evaluations without a gain before stopping
    eval_every: int = 1
    valid_users: int = 0  # 0 = all valid users for early stopping
    # The ranking loss of sasrec-id, sasrec-text, sasrec-hybrid, gru4rec, llm4cdsr and semacdr
    # (agent/models/ranking.py): bce (SASRec's), bpr, ce (softmax over all items of the
    # target's domain), sampled-softmax (popularity negatives, logQ-corrected), gbce (gSASRec).
    # sampled-softmax: best on valid users in the retriever study (README), and it converges in
    # a third of bce's epochs; bce is kept for comparison (eval/studies/*.toml pin it).
    loss: RankingLossName = "sampled-softmax"
    # negatives per position, from the target's own domain; None: 1 for bce, 5 for bpr, 1024
    # for sampled-softmax, 256 for gbce (ce uses the whole domain)
    num_negatives: int | None = None
    gbce_t: float = 0.75  # gSASRec's calibration t: 0 = plain BCE, 1 = fully calibrated
    # gbce's negatives: shared per domain per batch (one product, fast) or drawn per position
    # as gSASRec does (a gather of K vectors per position, ~13x the step cost)
    gbce_shared: bool = True
    # ce only: the chunked logits' matmuls in bfloat16 (max, exp, sums, gradients in float32),
    # where the CPU has avx512_bf16 (else float32 with a warning). Food-kitchen, one thread: a
    # ce step 1.3x faster (220 -> 171 ms CPU); on a trained model's vectors the loss within
    # 1e-5 relative, the gradients within 0.3% of float32's. Off: float32 is the reference.
    ce_bf16: bool = False
    # The cheaper CPU kernels of agent/models/dropout.py (dropout mask from raw random bits)
    # and the text adapter's fused LayerNorm+Linear backward: the same training, faster (README,
    # training speed), but a seeded run draws other dropout masks than with it off, the setting
    # of every study measured before the defaults changed (those study files pin it off).
    fast_kernels: bool = True
    # sasrec-text: frozen text vectors -> PCA whitening (text_whiten) -> adapter (mlp:
    # LayerNorm, Linear(d, width), GELU, Linear(width, hidden); linear: LayerNorm, Linear)
    text_adapter: Literal["linear", "mlp"] = "mlp"
    text_adapter_width: int = 512
    text_whiten: bool = True
    knn_recency_decay: float = 0.8
    device: str = "cpu"
    # 1: on a shared CPU box two intra-op threads spin against other jobs (10x slower when
    # the cores are busy, measured); 0 = torch default (all cores)
    threads: int = 1
    # >1: data-parallel training on Ray Train (agent/compute/train.py), this many workers, each
    # with train.threads threads (gloo on CPU, NCCL with train.device=cuda); 1 = this process.
    workers: int = Field(default=1, ge=1)


class EvalSettings(BaseModel):
    protocol: Literal["sampled-999", "sampled-100", "full"] = "sampled-999"
    split: Literal["valid", "test"] = "test"
    users: int = 0  # 0 = all users of the split; N = seeded sample
    bootstrap: int = 1000
    ks: list[int] = Field(default_factory=lambda: [1, 5, 10])
    # Early stopping (valid_fn): the cheaper sampled protocol on the valid split.
    valid_protocol: Literal["sampled-999", "sampled-100"] = "sampled-100"
    batch_users: int = 256  # users per model.score call (full protocol: fewer, by candidates)
    candidates_dir: Path | None = None  # default: <work_dir>/candidates


class LLMSettings(BaseModel):
    """The instruction LLM: in-process (``local``) or any OpenAI-compatible server (``openai``)."""

    backend: Literal["local", "openai"] = "local"
    # Name the server serves the base model under (vLLM --served-model-name).
    model: str = "smollm2-135m-instruct"
    model_dir: Path | None = None  # plain HF folder; default: <work_dir>/models/<model>
    # e.g. http://127.0.0.1:8011/v1; None = the local `llm serve` port. Several servers,
    # comma-separated: the Ray jobs spread their actors over them (``Settings.llm_urls``).
    url: str | None = None
    api_key: str = "local"
    adapters: dict[str, Path] = Field(default_factory=dict)  # LoRA name -> peft adapter folder
    max_tokens: int = 256
    timeout_s: float = 120.0
    retries: int = 3  # extra attempts on 5xx, 429, timeouts, connection errors
    retry_backoff_s: float = 0.5  # first wait between attempts; doubles each retry
    # Requests in flight per batch (the local backend: its batch size). SmolLM2-135M decoding on
    # one CPU thread: 17.5 ms per sequence-step at a batch of 8, 13.1 at 16, 9.9 at 32
    # (python -m benchmarks.bench_llm_batch).
    concurrency: int = 16
    # Local backend torch threads, per call; 0 = torch default. On a shared 2-core box use 1:
    # 2 threads while another process holds a core ran 7x slower (agent/llm/threads.py).
    threads: int = 0
    # `recbridge llm serve` (vLLM CPU in its own venv, see Makefile vllm-env).
    vllm_python: Path = PROJECT_ROOT / ".venv-vllm" / "bin" / "python"
    host: str = "127.0.0.1"
    port: int = 8011
    # float32 makes vLLM's greedy output match the local (fp32) backend token for token.
    dtype: Literal["float32", "bfloat16"] = "float32"
    # The local backend's weights: bfloat16 is faster on a CPU with avx512_bf16 (evaluations
    # of many users), float32 agrees with vLLM served in float32 token for token.
    local_dtype: Literal["float32", "bfloat16"] = "float32"
    max_model_len: int = 2048
    max_lora_rank: int = 8
    kv_cache_gb: int = 2
    ready_timeout_s: float = 300.0


class ComputeSettings(BaseModel):
    """Where the batch jobs (index, profile, score) run: this process or a Ray cluster."""

    engine: Literal["local", "ray"] = "local"
    # An existing cluster ("auto", "ray://head:10001"); None = start a local one for the job.
    address: str | None = None
    cpus: int | None = Field(default=None, ge=1)  # a started local cluster's CPUs; None = all
    object_store_mb: int = Field(default=512, ge=64)  # a started local cluster's object store
    workers: int = Field(default=2, ge=1)  # actors per stage (embedding, profiling, scoring)
    # Rows per Ray Data batch: the unit an actor works on, retried as a whole on failure.
    embed_batch: int = Field(default=512, ge=1)
    profile_batch: int = Field(default=4, ge=1)
    score_batch: int = Field(default=256, ge=1)
    # Attempts of a batch whose task or actor died (Ray Data's max_task_retries for actors).
    max_retries: int = Field(default=3, ge=0)
    out_dir: Path | None = None  # parquet outputs and job state; default <work_dir>/compute


class ProfileTemplates(BaseModel):
    """Prompt template file (in ``prompts/``) per profiling role; switch one for an experiment."""

    model_config = ConfigDict(extra="forbid")

    group: str = "profile_group.j2"  # LLM4CDSR "analyzer": one group of titles -> short summary
    domain: str = "profile_domain.j2"  # LLM4CDSR "summarizer": group summaries -> domain profile
    cross: str = "profile_cross.j2"  # domain profiles -> one cross-domain profile
    repair: str = "profile_repair.j2"  # the retry after an unparseable profile
    # profile.mode "grounded": the domain and cross levels given the history's facts (its
    # groups are summarised by the facts template, no LLM call).
    domain_grounded: str = "profile_domain_grounded.j2"
    cross_grounded: str = "profile_cross_grounded.j2"
    repair_grounded: str = "profile_repair_grounded.j2"
    facts: str = "profile_facts.j2"  # facts -> readable text, no LLM (fallback, "facts" mode)


class NextInterestSettings(BaseModel):
    """Next-interest profiles: what a shopper buys next in one domain, as short JSON lists
    (``prompts/profile_next.j2``; trained by ``finetune train --kind profile``, measured by
    ``recbridge profile-eval``)."""

    model_config = ConfigDict(extra="forbid")

    template: str = "profile_next.j2"
    history_items: int = Field(default=10, ge=1)  # most recent titles (all domains) shown
    title_chars: int = Field(default=60, ge=10)
    next_items: int = Field(default=3, ge=1)  # training answer: the next N items of the domain
    max_list_items: int = Field(default=4, ge=1)  # per list of the JSON (schema maxItems)
    phrase_chars: int = Field(default=40, ge=5)  # schema maxLength of each phrase
    max_tokens: int = Field(default=96, ge=8)
    constrained: bool = True  # send the JSON schema (xgrammar / vLLM structured outputs)
    adapter: str = "profile-next"  # the LoRA profile adapter's name (adapters_dir)


class ProfileSettings(BaseModel):
    """Hierarchical user profiles (LLM4CDSR): groups -> domain profiles -> cross-domain profile."""

    # "grounded": facts computed from the history (agent/profiles/facts.py) go into every
    # prompt, constrained decoding allows only their values and evidence ids, the checker
    # (agent/profiles/check.py) repairs, regenerates or falls back to the facts' text.
    # "free": the LLM4CDSR prompts alone (the LLM writes from titles). "facts": no LLM at all.
    mode: Literal["grounded", "free", "facts"] = "grounded"

    clusters: int = 10  # k-means over all item embeddings, as in the paper
    titles_per_group: int = 15  # the last N titles of a group go to the analyzer prompt
    # A domain history shorter than this is grouped in recency chunks instead of clusters.
    min_items_for_clusters: int = 8
    chunk_size: int = 8
    # Most recent groups kept per domain: bounds LLM calls per user (paper: every cluster).
    max_groups: int = 3
    group_max_tokens: int = 80
    profile_max_tokens: int = 256
    max_list_items: int = 4  # per list field of a profile (schema maxItems)
    summary_max_chars: int = 300  # schema maxLength: a small model otherwise loops in it
    phrase_max_chars: int = 40  # schema maxLength of each preference/dislike/theme
    # Grounded profiles: a one-sentence summary (schema maxLength) within fewer tokens; the
    # 135M model otherwise loops in it, and the lists are all enums of the facts.
    grounded_summary_chars: int = 160
    grounded_max_tokens: int = 160
    # Send the JSON schema for constrained decoding (vLLM structured outputs; xgrammar in the
    # local backend). Off: free text through repair, retry and the counted fallback.
    constrained: bool = True
    retry_on_parse_error: bool = True  # one repair retry before the counted fallback
    batch_users: int = 16  # users per batch (one per llm.concurrency); cached after each batch
    cache_dir: Path | None = None  # default: <work_dir>/profiles
    users_collection: str = "users"
    # A LoRA adapter (by name, see llm.adapters / <work_dir>/adapters) for every profiling
    # call, on both backends; None = the base model. Part of the profile cache key.
    adapter: str | None = None
    templates: ProfileTemplates = Field(default_factory=ProfileTemplates)
    next: NextInterestSettings = Field(default_factory=NextInterestSettings)


class RerankTemplates(BaseModel):
    """Prompt template file (in ``prompts/``) per reranker; switch one for an experiment."""

    model_config = ConfigDict(extra="forbid")

    listwise: str = "rerank_listwise.j2"
    verbalizer: str = "rerank_verbalizer.j2"


class RerankSettings(BaseModel):
    """LLM rerankers of retrieved candidates (agent/rerank/)."""

    model_config = ConfigDict(extra="forbid")

    top_n: int = Field(default=20, ge=1)  # retrieved candidates handed to the reranker
    # RankGPT back-to-front sliding window over lists longer than ``window`` (the verbalizer
    # caps it at 20 labels: the top_logprobs limit).
    window: int = Field(default=20, ge=2)
    step: int = Field(default=10, ge=1)
    shuffles: int = Field(default=0, ge=0)  # >0: LLMRank bootstrapping, ranks averaged
    use_profile: bool = True  # put the user's profile text in the prompt
    history_items: int = Field(default=10, ge=0)  # most recent history titles in the prompt
    title_chars: int = Field(default=70, ge=10)  # titles are cut to this in prompts
    # Prepend the template's worked example turn: SmolLM2-135M had 16.0 of 20 labels among its
    # top-20 first tokens with it, 12.4 without (verbalizer, 30 valid users).
    one_shot: bool = True
    listwise_labels: Literal["letters", "numbers"] = "letters"  # numbers for windows over 26
    constrained: bool = True  # listwise: send the JSON schema (labels as an enum)
    reason: bool = False  # listwise: ask for a one-sentence reason too (more tokens)
    max_tokens: int | None = None  # listwise answer budget; None = sized to the window
    adapter: str | None = None  # a LoRA adapter name from llm.adapters; None = base model
    # Score fusion (agent/rerank/fusion.py): final = w x retriever + (1 - w) x LLM, each
    # min-max normalised per list; None = the LLM's order alone. Choose w on valid users only.
    fusion_weight: float | None = Field(default=None, ge=0.0, le=1.0)
    # Evaluation: users per round of LLM requests; each finished round is cached (resume).
    batch_users: int = Field(default=16, ge=1)
    templates: RerankTemplates = Field(default_factory=RerankTemplates)


class FinetuneSettings(BaseModel):
    """LoRA training of the reranker and profile adapters (``recbridge finetune``, finetune/)."""

    model_config = ConfigDict(extra="forbid")

    out_dir: Path | None = None  # default: <work_dir>/finetune (data, runs; adapters beside)
    # Training data, from train rows only. random: LlamaRec (prefix, next item, 19 uniform
    # negatives of its domain); hard: the top 20 of a retriever that never saw the target,
    # over its whole domain; hard-sampled: over the target + hard_negatives uniform negatives
    # (the test protocol's lists, finetune/build.py).
    recipe: Literal["random", "hard", "hard-sampled"] = "random"
    hard_negatives: int = Field(default=999, ge=19)
    # hard recipes: shuffle the retriever's top list (LlamaRec trains on shuffled lists) or
    # keep its order, the order the rerankers show at inference
    shuffle_candidates: bool = True
    kind: Literal["verbalizer", "listwise"] = "verbalizer"
    max_examples: int = Field(default=2000, ge=1)  # a seeded sample of train rows, one each
    per_user: int = Field(default=1, ge=1)  # random recipe: prefixes drawn per sampled row
    candidates: int = Field(default=20, ge=2, le=20)  # labels A..T
    retriever: str = "sasrec-id"  # hard recipe: retrained with each train row's last item out
    # The prompt the adapter learns (saved in its card; rerankers using it get the same).
    one_shot: bool = False  # the adapter learns the format: no worked example turn
    use_profile: bool = False
    title_chars: int = Field(default=50, ge=10)  # shorter titles: a shorter, cheaper prompt
    # LoRA (peft). Small-model practice: r 8-16, alpha 2r, all linear layers.
    r: int = Field(default=16, ge=1)
    alpha: int = Field(default=32, ge=1)
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(
        default_factory=lambda: [
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ]
    )
    # LoRA on layers >= this one only (0 = all): the backward pass then stops there, which on
    # a CPU is most of a step's cost (benchmarks/bench_finetune.py).
    first_layer: int = Field(default=0, ge=0)
    lr: float = Field(default=1e-3, gt=0)
    warmup_steps: int = Field(default=10, ge=0)
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    batch_size: int = Field(default=4, ge=1)  # examples per forward pass
    grad_accum: int = Field(default=2, ge=1)  # forward passes per optimizer step
    epochs: int = Field(default=1, ge=1)
    max_steps: int = Field(default=0, ge=0)  # 0 = epochs x examples / (batch x accum)
    max_len: int = Field(default=1024, ge=64)  # tokens; longer prompts are dropped, counted
    # Verbalizer: FIRST's pairwise (RankNet) term over the label logits, added to the CE.
    pairwise_weight: float = Field(default=0.0, ge=0.0)
    # bfloat16 autocast (the adapter is saved and served in fp32). On this CPU (avx512_bf16,
    # no AMX) it measured no faster than fp32: 11.4 vs 11.7 s per step of 4 examples
    # (benchmarks/bench_finetune.py); LoRA on the top layers only (first_layer) is what pays.
    bf16: bool = False
    checkpoint_every: int = Field(default=5, ge=1)  # optimizer steps between resumable saves
    eval_every: int = Field(default=20, ge=1)  # optimizer steps between valid NDCG@10 checks
    valid_users: int = Field(default=32, ge=1)  # fixed seeded sample of valid users
    patience: int = Field(default=0, ge=0)  # valid checks without a gain; 0 = run all steps
    device: str = "cpu"  # or cuda
    threads: int = 1  # torch threads (1: robust on a shared 2-core box); 0 = torch default


class RankerSettings(BaseModel):
    """The learned ranker (LightGBM LambdaRank over per-candidate features, agent/rerank/ranker.py;
    trained by ``recbridge ranker train``, finetune/ranker.py)."""

    model_config = ConfigDict(extra="forbid")

    # The trained ranker the ``ranker`` reranker serves; None: <work_dir>/rankers/<name>.
    path: Path | None = None
    name: str = "default"
    # The retriever whose top N the ranker learns to reorder; training groups come from the
    # same model retrained with each train row's last item held out.
    retriever: str = "sasrec-hybrid"
    # The retrieved list it learns to reorder (and reorders when served). Valid NDCG@10 over
    # the 960 valid users: 0.3206 at 20, 0.3269 at 50 (the retriever's order: 0.2999).
    top_n: int = Field(default=50, ge=2)
    train_rows: int = Field(default=0, ge=0)  # seeded train rows to draw groups from; 0 = all
    negatives: int = Field(default=999, ge=19)  # the test protocol's uniform negatives
    # Other trained retrievers whose scores of the list are features (an ensemble); each is
    # retrained with the train rows' last items held out for the training groups. Valid
    # NDCG@10 at top 50: 0.3269 without, 0.337 with sasrec-id's scores.
    extra_retrievers: list[str] = Field(default_factory=lambda: ["sasrec-id"])
    # LLM item states (``recbridge llm states``) as features: a backbone name, or None.
    llm_states: str | None = None
    # The correction head the ``head`` reranker serves; None: <work_dir>/heads/<llm_states>.
    head_path: Path | None = None
    # Settings tried, each with early stopping on the valid users; the best valid NDCG@10 wins.
    num_leaves: list[int] = Field(default_factory=lambda: [15, 63])
    min_data_in_leaf: list[int] = Field(default_factory=lambda: [50, 200])
    learning_rate: float = Field(default=0.05, gt=0.0)
    rounds: int = Field(default=600, ge=1)
    early_stopping: int = Field(default=50, ge=1)
    threads: int = Field(default=0, ge=0)  # LightGBM threads when training; 0 = all cores


class ServeSettings(BaseModel):
    """``recbridge serve``: the HTTP API over one long-lived service (agent/api/)."""

    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"  # loopback by default: expose it on purpose
    port: int = Field(default=8080, ge=0, le=65535)
    # Pipelines listed by GET /v1/models: "retriever[+reranker[-noprofile]]".
    pipelines: list[str] = Field(
        default_factory=lambda: ["text-knn", "text-knn+listwise", "sasrec-id+listwise"]
    )
    default_pipeline: str | None = None  # None: the first of ``pipelines``
    train_missing: bool = False  # train a retriever that has no checkpoint (else: start fails)
    api_keys: list[str] = Field(default_factory=list)  # bearer keys; none (and no file) = open
    api_keys_file: Path | None = None  # one key a line, '#' comments; read at start
    max_body_bytes: int = Field(default=262_144, ge=1024)
    max_history: int = Field(default=200, ge=1)  # items in one request's history
    max_candidates: int = Field(default=100, ge=1)  # candidates / documents in one request
    max_top_k: int = Field(default=100, ge=1)
    max_concurrency: int = Field(default=16, ge=1)  # requests in flight; more get 429
    retry_after_s: int = Field(default=1, ge=1)
    llm_timeout_s: float | None = None  # per LLM request inside the API; None = llm.timeout_s
    graceful_timeout_s: float = Field(default=30.0, ge=0)  # shutdown waits for requests in flight


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="RECBRIDGE_", env_nested_delimiter="__", extra="forbid"
    )

    seed: int = 42
    work_dir: Path = PROJECT_ROOT / "runs"
    log_level: str = "INFO"
    data: DataSettings = Field(default_factory=DataSettings)
    embedding: EmbeddingSettings = Field(default_factory=EmbeddingSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    train: TrainSettings = Field(default_factory=TrainSettings)
    eval: EvalSettings = Field(default_factory=EvalSettings)
    llm: LLMSettings = Field(default_factory=LLMSettings)
    profile: ProfileSettings = Field(default_factory=ProfileSettings)
    methods: MethodSettings = Field(default_factory=MethodSettings)
    rerank: RerankSettings = Field(default_factory=RerankSettings)
    finetune: FinetuneSettings = Field(default_factory=FinetuneSettings)
    ranker: RankerSettings = Field(default_factory=RankerSettings)
    serve: ServeSettings = Field(default_factory=ServeSettings)
    compute: ComputeSettings = Field(default_factory=ComputeSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # init (file merged with CLI overrides by load_settings) is passed explicitly, so env
        # must sit between them: load_settings handles that order itself.
        return (init_settings, env_settings)

    @property
    def embedding_cache_dir(self) -> Path:
        return self.embedding.cache_dir or self.work_dir / "embeddings"

    @property
    def store_path(self) -> Path:
        return self.store.path or self.work_dir / "chroma"

    @property
    def llm_model_dir(self) -> Path:
        return self.llm.model_dir or self.work_dir / "models" / self.llm.model

    @property
    def profile_cache_dir(self) -> Path:
        return self.profile.cache_dir or self.work_dir / "profiles"

    @property
    def finetune_dir(self) -> Path:
        return self.finetune.out_dir or self.work_dir / "finetune"

    @property
    def ranker_dir(self) -> Path:
        return self.ranker.path or self.work_dir / "rankers" / self.ranker.name

    @property
    def head_dir(self) -> Path:
        return self.ranker.head_path or self.work_dir / "heads" / (
            self.ranker.llm_states or "smollm2"
        )

    @property
    def adapters_dir(self) -> Path:
        """Where trained adapters go; every folder here with an adapter_card.json is served."""
        return self.work_dir / "adapters"

    @property
    def llm_urls(self) -> list[str]:
        """Every server ``llm.url`` lists (comma-separated), else the local `llm serve` port."""
        urls = [u.strip() for u in (self.llm.url or "").split(",") if u.strip()]
        return urls or [f"http://{self.llm.host}:{self.llm.port}/v1"]

    @property
    def llm_url(self) -> str:
        """The first server (a single-process client talks to one)."""
        return self.llm_urls[0]

    @property
    def compute_dir(self) -> Path:
        return self.compute.out_dir or self.work_dir / "compute"


def _read_config_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file {path}: not found")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".toml":
            data: Any = tomllib.loads(text)
        else:
            data = yaml.safe_load(text) or {}
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"config file {path}: cannot parse: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: top level must be a mapping")
    return data


def _set_dotted(target: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = target
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {dotted}: {key} is not a section")
        node = child
    node[keys[-1]] = value


def parse_override(item: str) -> tuple[str, Any]:
    """``section.key=value``; the value is read as YAML so numbers and lists keep their type."""
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected section.key=value")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _env_values() -> dict[str, Any]:
    """What the environment sets, as a nested dict (pydantic-settings parses it for us)."""

    class _EnvOnly(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            return (env_settings,)

    return _EnvOnly().model_dump(exclude_unset=True)


def load_settings(
    config_file: Path | None = None,
    overrides: dict[str, Any] | None = None,
    set_items: list[str] | None = None,
) -> Settings:
    """Build the settings: defaults < file < env < CLI (``overrides`` and ``--set`` items)."""
    merged: dict[str, Any] = {}
    file_path = config_file or (
        Path(os.environ["RECBRIDGE_CONFIG"]) if os.environ.get("RECBRIDGE_CONFIG") else None
    )
    try:
        if file_path is not None:
            merged = _read_config_file(file_path)
        merged = _deep_merge(merged, _env_values())
        cli: dict[str, Any] = {}
        for dotted, value in (overrides or {}).items():
            if value is not None:
                _set_dotted(cli, dotted, value)
        for item in set_items or []:
            _set_dotted(cli, *parse_override(item))
        merged = _deep_merge(merged, cli)
        return Settings(**merged)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        source = f" (file {file_path})" if file_path else ""
        raise ConfigError(f"invalid settings{source}: {problems}") from None
