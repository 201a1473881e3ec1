"""Prompt templates as files: load by name from ``prompts/``, render to chat messages.

A template file is Jinja2 (StrictUndefined: a missing variable is an error, not an empty
string) with a front matter in a leading Jinja comment and one block per chat role::

    {#---
    name: profile_group
    version: 1
    ---#}
    {% block system %}...{% endblock %}
    {% block user %}...{% endblock %}

Every render is traceable: ``TemplateRef`` carries name, version, file and the sha256 of the
file's bytes, and outputs record it (a prompt edit changes the hash, so caches keyed by it miss).
"""

from __future__ import annotations

import functools
import hashlib
import re
from pathlib import Path
from typing import Any

import jinja2
import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from agent.items.text import PROMPTS_DIR, cut
from agent.llm.types import ChatMessage, Role

_FRONT_MATTER = re.compile(r"\A\{#---\n(?P<meta>.*?)\n---#\}\n?", re.DOTALL)
_ROLES: tuple[Role, ...] = ("system", "user", "assistant")


class PromptError(ValueError):
    """A template that cannot be loaded or rendered; the message names the file."""


class TemplateRef(BaseModel):
    """Which template produced an output, down to its exact content."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    version: str
    file: str
    sha256: str


class _FrontMatter(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    version: str | int
    description: str = ""


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        autoescape=False,  # chat text, not HTML
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,  # block tags on their own lines leave no blank lines behind
        lstrip_blocks=True,
        keep_trailing_newline=False,
    )
    env.filters["cut"] = cut
    return env


class PromptTemplate:
    """One template file: ``render(**variables)`` -> chat messages in role order."""

    def __init__(self, path: Path) -> None:
        if not path.is_file():
            raise PromptError(f"prompt template not found: {path}")
        source = path.read_text(encoding="utf-8")
        match = _FRONT_MATTER.match(source)
        if match is None:
            raise PromptError(f"{path}: missing front matter ({{#--- name/version ---#}})")
        try:
            meta = _FrontMatter.model_validate(yaml.safe_load(match.group("meta")) or {})
        except (yaml.YAMLError, ValidationError) as exc:
            raise PromptError(f"{path}: bad front matter: {exc}") from None
        try:
            self._template = _environment().from_string(source)
        except jinja2.TemplateSyntaxError as exc:
            raise PromptError(f"{path}:{exc.lineno}: {exc.message}") from None
        self.roles = [r for r in _ROLES if r in self._template.blocks]
        if "user" not in self.roles:
            raise PromptError(f"{path}: needs a {{% block user %}}")
        self.path = path
        self.ref = TemplateRef(
            name=meta.name,
            version=str(meta.version),
            file=path.name,
            sha256=hashlib.sha256(source.encode("utf-8")).hexdigest(),
        )

    @property
    def name(self) -> str:
        return self.ref.name

    def render(self, **variables: Any) -> list[ChatMessage]:
        context = self._template.new_context(variables)
        messages: list[ChatMessage] = []
        for role in self.roles:
            try:
                text = "".join(self._template.blocks[role](context)).strip()
            except jinja2.UndefinedError as exc:
                raise PromptError(f"{self.path.name} [{role}]: {exc.message}") from None
            if text:
                messages.append(ChatMessage(role=role, content=text))
        return messages


@functools.lru_cache(maxsize=32)
def _load(path: Path, mtime_ns: int, size: int) -> PromptTemplate:
    return PromptTemplate(path)


def load_template(file: str, prompts_dir: Path = PROMPTS_DIR) -> PromptTemplate:
    """The template ``prompts_dir/file`` (cached; an edited file is read again)."""
    path = (prompts_dir / file).resolve()
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise PromptError(f"prompt template not found: {path}") from None
    return _load(path, stat.st_mtime_ns, stat.st_size)
