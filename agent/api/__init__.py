"""``recbridge serve``: the HTTP API (FastAPI) over one long-lived ``RecBridgeService``."""

from agent.api.app import create_app

__all__ = ["create_app"]
