"""The page at ``/``: plain HTML, CSS and JavaScript shipped in the package (``static/``), over
the public API only. No build step, nothing fetched from the internet at run time."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).with_name("static")
PAGE_PATHS = ("/static/",)  # with "/" itself: served without a key (the page asks for one)


def mount_page(app: FastAPI) -> None:
    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        # no-cache: a page from an older server must not outlive an upgrade in the browser.
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
