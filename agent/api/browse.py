"""Read-only lookups for the page (and any client): the data's users with their histories, item
references resolved to items, and whether a profile is cached (a miss costs LLM calls: the page
says so while it waits)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from agent.api.schemas import Text
from agent.pipeline.profile_source import history_user
from agent.service import RecBridgeService
from agent.service.errors import TooLarge
from agent.service.queries import Resolved

MAX_USERS = 500


class ItemRef(BaseModel):
    item_id: str
    title: str
    domain: str


class UserSummary(BaseModel):
    user_id: str
    split: str
    history_len: int
    domains: list[str]  # of the history, in order of first appearance


class UserList(BaseModel):
    object: str = "list"
    domains: list[str]  # every domain of the data
    data: list[UserSummary]


class UserCard(BaseModel):
    user_id: str
    split: str
    domains: list[str]
    history: list[ItemRef]  # oldest first, as the service reads it (at most serve.max_history)
    profiled: bool  # a profile for the served settings is cached: /v1/profiles answers at once


class ResolveRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    refs: list[Text] = Field(min_length=1, description="Item ids or titles, oldest first.")


class ResolveResponse(BaseModel):
    items: list[ItemRef]
    resolved: list[Resolved]  # how each title became an item (ids are taken as they are)
    profiled: bool  # the profile of this history is cached


def browse_router(service: RecBridgeService) -> APIRouter:
    router = APIRouter(tags=["rest"])

    def ref(item_id: str) -> ItemRef:
        item = service.data.items[item_id]
        return ItemRef(item_id=item_id, title=item.title, domain=item.domain)

    def profiled(history: list[str], user_id: str | None) -> bool:
        user = history_user(history, user_id)
        return user.user_id in service.profiles.profiler.cached_users([user])

    @router.get("/v1/users", response_model=UserList)
    async def users(
        split: Annotated[Literal["train", "valid", "test"], Query()] = "test",
        limit: Annotated[int, Query(ge=1, le=MAX_USERS)] = 50,
    ) -> UserList:
        """The first ``limit`` users of a split (for a picker), with their history's domains."""
        out: list[UserSummary] = []
        for user in service.data.iter_split(split):
            history = user.history
            domains = list(dict.fromkeys(service.data.items[i].domain for i in history))
            out.append(
                UserSummary(
                    user_id=user.user_id,
                    split=user.split,
                    history_len=len(history),
                    domains=domains,
                )
            )
            if len(out) >= limit:
                break
        return UserList(domains=service.domains, data=out)

    @router.get("/v1/users/{user_id}", response_model=UserCard)
    async def user(user_id: str) -> UserCard:
        """A user's history (titles, domains) and whether the profile is cached."""
        found = service.find_user(user_id, "user_id")
        history = list(found.history)[-service.settings.serve.max_history :]
        return UserCard(
            user_id=found.user_id,
            split=found.split,
            domains=list(dict.fromkeys(service.data.items[i].domain for i in history)),
            history=[ref(i) for i in history],
            profiled=profiled(history, found.user_id),
        )

    @router.post("/v1/items/resolve", response_model=ResolveResponse)
    async def resolve(body: ResolveRequest) -> ResolveResponse:
        """Item ids or titles -> items, as every request reads them (ids as they are, titles
        exactly, else the nearest title)."""
        limit = service.settings.serve.max_history
        if len(body.refs) > limit:
            raise TooLarge(f"refs: {len(body.refs)} items, at most {limit} allowed", "refs")
        ids, resolved = await service.aresolve(body.refs, "refs")
        return ResolveResponse(
            items=[ref(i) for i in ids], resolved=resolved, profiled=profiled(ids, None)
        )

    return router
