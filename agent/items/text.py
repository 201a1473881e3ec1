"""The text an item is embedded as, rendered from a Jinja2 template in ``prompts/``.

The template's content hash is exposed so callers can tell when the text (and so every
cached embedding keyed by it) changes.
"""

from __future__ import annotations

import functools
import hashlib
import re
from pathlib import Path

import jinja2

from agent.config import PROJECT_ROOT, Settings
from agent.data.schema import Item

PROMPTS_DIR = PROJECT_ROOT / "prompts"
_SPACES = re.compile(r"\s+")


def cut(value: object, limit: int) -> str:
    """``value`` with whitespace collapsed, shortened to ``limit`` chars at a word boundary."""
    text = _SPACES.sub(" ", str(value)).strip()
    if len(text) <= limit:
        return text
    head = text[: limit + 1]
    # Prefer a word boundary, unless that would throw most of the budget away.
    space = head.rfind(" ")
    return (head[:space] if space > limit // 2 else text[:limit]).rstrip(" ,;:-") + "…"


class ItemTextRenderer:
    """Renders ``Item``s through one template; ``template_hash`` identifies its content."""

    def __init__(self, template: str = "item_text.j2", prompts_dir: Path = PROMPTS_DIR) -> None:
        path = prompts_dir / template
        if not path.is_file():
            raise FileNotFoundError(f"item text template not found: {path}")
        source = path.read_text(encoding="utf-8")
        env = jinja2.Environment(
            autoescape=False,  # plain text for an embedder, not HTML
            undefined=jinja2.StrictUndefined,
            keep_trailing_newline=False,
        )
        env.filters["cut"] = cut
        self.template_name = template
        self.template_hash = hashlib.sha256(source.encode("utf-8")).hexdigest()
        self._template = env.from_string(source)

    def item_text(self, item: Item) -> str:
        return _SPACES.sub(" ", self._template.render(item=item)).strip()

    def texts(self, items: list[Item]) -> list[str]:
        return [self.item_text(it) for it in items]


@functools.lru_cache(maxsize=8)
def _renderer(template: str, prompts_dir: Path) -> ItemTextRenderer:
    return ItemTextRenderer(template, prompts_dir)


def renderer_for(settings: Settings | None = None) -> ItemTextRenderer:
    """The renderer for ``settings.embedding.template`` (default template without settings)."""
    template = settings.embedding.template if settings is not None else "item_text.j2"
    return _renderer(template, PROMPTS_DIR)


def item_text(item: Item, settings: Settings | None = None) -> str:
    return renderer_for(settings).item_text(item)
