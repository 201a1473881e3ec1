"""The Chroma client of the settings: an embedded store or a ``chroma run`` server."""

from __future__ import annotations

import os
from urllib.parse import urlparse

import chromadb
from chromadb.api import ClientAPI
from chromadb.config import Settings as ChromaSettings

from agent.config import Settings


class StoreError(RuntimeError):
    """The vector store cannot be used; the message names the URL or path."""


def make_client(settings: Settings) -> ClientAPI:
    """``HttpClient`` when ``settings.store.url`` is set, else an embedded ``PersistentClient``."""
    os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
    chroma_settings = ChromaSettings(anonymized_telemetry=False)
    url = settings.store.url
    if url:
        parsed = urlparse(url if "://" in url else f"http://{url}")
        if not parsed.hostname:
            raise StoreError(f"store.url {url!r}: expected http(s)://host:port")
        ssl = parsed.scheme == "https"
        try:
            client = chromadb.HttpClient(
                host=parsed.hostname,
                port=parsed.port or (443 if ssl else 8000),
                ssl=ssl,
                settings=chroma_settings,
            )
            client.heartbeat()
        except Exception as exc:  # chromadb raises plain exceptions of several kinds here
            raise StoreError(f"cannot reach the Chroma server at {url}: {exc}") from exc
        return client
    path = settings.store_path
    path.mkdir(parents=True, exist_ok=True)
    return chromadb.PersistentClient(path=str(path), settings=chroma_settings)
