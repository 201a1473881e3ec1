"""The page at ``/`` in a real headless Chromium against the real ``recbridge serve``
(``api_server``: local SmolLM2, bearer key required): the key entered once, chat by user id and
by history with the answer streamed item by item, follow-up turns, a profile tree with its
evidence linked to the history, two pipelines side by side, and an API error shown as the API
words it. Screenshots go to test-artifacts/browser/ (the README's come from here).

The tests run in file order on one browser session: the first enters the key, the page keeps it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from agent.data.schema import Dataset
from tests.integration.api_fixtures import ApiServer
from tests.integration.browser_fixtures import ARTIFACTS

pytestmark = pytest.mark.integration

LLM_WAIT_S = 600.0  # a profile or an LLM rerank on a loaded 2-core box
PIPELINE = "sasrec-id+listwise"


def _by() -> Any:
    from selenium.webdriver.common.by import By

    return By


def wait(driver: Any, until: Callable[[Any], Any], timeout: float = 60.0) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(until)


def find(driver: Any, testid: str, root: Any = None) -> Any:
    return (root or driver).find_element(_by().CSS_SELECTOR, f'[data-testid="{testid}"]')


def find_all(driver: Any, testid: str, root: Any = None) -> list[Any]:
    return list((root or driver).find_elements(_by().CSS_SELECTOR, f'[data-testid="{testid}"]'))


def shown(driver: Any, testid: str) -> list[Any]:
    """The elements with ``testid``, once there are some; fails at once when the page shows an
    error instead."""

    def ready(d: Any) -> list[Any] | None:
        error = find(d, "error")
        if error.is_displayed():
            raise AssertionError(f"the page shows an error: {error.text}")
        return find_all(d, testid) or None

    return list(wait(driver, ready, LLM_WAIT_S))


def visible(driver: Any, testid: str) -> Any:
    return wait(driver, lambda d: next((e for e in find_all(d, testid) if e.is_displayed()), None))


def select(driver: Any, testid: str, value: str) -> None:
    from selenium.webdriver.support.ui import Select

    Select(find(driver, testid)).select_by_value(value)


def fill_who(panel: Any, *, user: str | None = None, history: list[str] | None = None) -> None:
    if user is not None:
        box = find(panel, "who-user", panel)
        box.clear()
        box.send_keys(user)
    if history is not None:
        box = find(panel, "who-history", panel)
        box.clear()
        box.send_keys("\n".join(history))


def shot(driver: Any, name: str) -> None:
    driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))


def tab(driver: Any, name: str) -> Any:
    find(driver, f"tab-{name}").click()
    return driver.find_element(_by().ID, f"tab-{name}")


def last_answer(driver: Any, count: int) -> Any:
    """The ``count``-th finished assistant turn (streaming done)."""

    def ready(d: Any) -> Any:
        done = d.find_elements(_by().CSS_SELECTOR, '[data-testid="turn-assistant"].done')
        error = find(d, "error")
        if error.is_displayed():
            raise AssertionError(f"the page shows an error: {error.text}")
        return done[count - 1] if len(done) >= count else None

    return wait(driver, ready, LLM_WAIT_S)


def item_rows(answer: Any) -> list[dict[str, str]]:
    return [
        {
            "id": row.get_attribute("data-item-id"),
            "title": find(row, "item-title", row).text,
            "score": find(row, "item-score", row).text,
            "retrieval": find(row, "retrieval-rank", row).text,
            "rank": find(row, "final-rank", row).text,
            "reason": find(row, "item-reason", row).text,
        }
        for row in find_all(answer, "item", answer)
    ]


def test_the_served_page_is_there(api_server: ApiServer) -> None:
    """The page and its assets are served without a key (the page asks for one)."""
    page = httpx.get(api_server.url + "/", timeout=30)
    assert page.status_code == 200 and "RecBridge" in page.text
    for asset in re.findall(r'(?:src|href)="(/static/[^"]+)"', page.text):
        assert httpx.get(api_server.url + asset, timeout=30).status_code == 200, asset


@pytest.fixture(scope="module")
def page(browser: Any, api_server: ApiServer) -> Any:
    browser.get(api_server.url + "/")
    return browser


def test_the_page_asks_for_the_key_once_then_lists_the_pipelines(
    page: Any, api_server: ApiServer
) -> None:
    error = visible(page, "error")
    assert "401" in error.text and "API key" in error.text  # the API's words
    assert api_server.key is not None
    find(page, "api-key").send_keys(api_server.key)
    find(page, "key-save").click()
    wait(page, lambda d: d.find_element(_by().TAG_NAME, "body").get_attribute("data-loaded"))
    options = [
        o.get_attribute("value")
        for o in find(page, "chat-pipeline").find_elements(_by().TAG_NAME, "option")
    ]
    assert PIPELINE in options and "popularity" in options
    assert not find(page, "error").is_displayed()
    page.refresh()  # the key is kept: no second prompt
    wait(page, lambda d: d.find_element(_by().TAG_NAME, "body").get_attribute("data-loaded"))
    assert not find(page, "error").is_displayed()


def test_chat_by_user_streams_ranked_items_and_follows_up(page: Any, slice_data: Dataset) -> None:
    panel = tab(page, "chat")
    select(page, "chat-pipeline", PIPELINE)
    fill_who(panel, user="t1")
    find(page, "chat-send").click()
    answer = last_answer(page, 1)
    rows = item_rows(answer)
    assert len(rows) == 10
    assert [r["rank"] for r in rows] == [str(i) for i in range(1, 11)]
    for row in rows:
        assert row["id"] in slice_data.items and row["title"] and row["reason"]
        assert int(row["retrieval"]) >= 1 and float(row["score"]) >= 0.0
    # the reranked top 5 (rerank.top_n) is a permutation of the retrieved top 5
    assert sorted(int(r["retrieval"]) for r in rows[:5]) == [1, 2, 3, 4, 5]
    assert answer.get_attribute("data-first-item-ms")  # items arrived through the stream
    assert "tokens" in find(answer, "turn-cost", answer).text
    shot(page, "chat")

    # follow-up 1: exclude the first item from the answer
    first = rows[0]["id"]
    find(answer, "exclude", answer).click()
    again = item_rows(last_answer(page, 2))
    assert first not in [r["id"] for r in again] and len(again) == 10

    # follow-up 2: switch the domain
    domain = slice_data.items[first].domain
    other = next(d for d in slice_data.domains if d != domain)
    find(page, f"switch-{other}").click()
    switched = last_answer(page, 3)
    assert all(slice_data.items[r["id"]].domain == other for r in item_rows(switched))
    assert other in find(switched, "turn-status", switched).text


def test_chat_by_history_shows_how_titles_were_read(page: Any, slice_data: Dataset) -> None:
    panel = tab(page, "chat")
    find(page, "chat-reset").click()
    ids = list(slice_data.iter_split("test"))[1].history[:2]
    title = slice_data.items[ids[1]].title
    panel.find_element(_by().CSS_SELECTOR, "input[type=radio][value=history]").click()
    fill_who(panel, history=[ids[0], title])
    select(page, "chat-pipeline", "popularity")
    find(page, "chat-send").click()
    answer = last_answer(page, 1)
    resolved = find(answer, "resolved", answer).text
    assert ids[1] in resolved and "title" in resolved
    assert len(item_rows(answer)) == 10


def test_profile_tree_with_a_notice_while_it_is_generated(page: Any, slice_data: Dataset) -> None:
    panel = tab(page, "profile")
    user = list(slice_data.iter_split("test"))[2]
    fill_who(panel, user=user.user_id)
    find(page, "profile-show").click()
    notice = visible(page, "profile-notice")
    assert "Generating" in notice.text  # not cached: the LLM writes it now
    shown(page, "domain-profile")
    assert not find(page, "profile-notice").is_displayed()
    domains = {e.get_attribute("data-domain") for e in find_all(page, "domain-profile")}
    assert domains == {slice_data.items[i].domain for i in user.history}
    assert find(page, "cross-profile").text.strip()
    history_ids = {e.get_attribute("data-item-id") for e in find_all(page, "history-item")}
    links = find_all(page, "evidence-link")
    assert links and all(a.get_attribute("data-item-id") in history_ids for a in links)
    links[0].click()
    target = links[0].get_attribute("data-item-id")
    lit = page.find_element(_by().CSS_SELECTOR, ".history-items li.hl")
    assert lit.get_attribute("data-item-id") == target
    page.execute_script("window.scrollTo(0, 0)")
    shot(page, "profile")

    # asked again, the profile is cached: the notice says it is read, not generated
    find(page, "profile-show").click()
    shown(page, "domain-profile")
    assert find(page, "profile-notice").get_attribute("data-state") == "cached"


def test_compare_two_pipelines_side_by_side(page: Any) -> None:
    panel = tab(page, "compare")
    fill_who(panel, user="t1")
    select(page, "left-pipeline", "sasrec-id+listwise")
    select(page, "right-pipeline", "popularity")
    find(page, "compare-run").click()

    def both(d: Any) -> Any:
        if find(d, "error").is_displayed():
            raise AssertionError(find(d, "error").text)
        left, right = find(d, "compare-left"), find(d, "compare-right")
        return (
            (left, right)
            if find_all(left, "item", left) and find_all(right, "item", right)
            else None
        )

    left, right = wait(page, both, LLM_WAIT_S)
    assert "sasrec-id+listwise" in left.text and "popularity" in right.text
    left_ids = [e.get_attribute("data-item-id") for e in find_all(left, "item", left)]
    right_ids = [e.get_attribute("data-item-id") for e in find_all(right, "item", right)]
    only = len(set(left_ids) - set(right_ids))
    assert len(find_all(left, "only-here", left)) == only
    assert "tokens" in find(left, "side-cost", left).text
    assert "0 tokens" in find(right, "side-cost", right).text  # no LLM on that side
    shot(page, "compare")


def test_an_unknown_user_shows_the_apis_error(page: Any) -> None:
    panel = tab(page, "chat")
    find(page, "chat-reset").click()
    panel.find_element(_by().CSS_SELECTOR, "input[type=radio][value=user]").click()
    fill_who(panel, user="nobody-42")
    find(page, "chat-send").click()
    error = visible(page, "error")
    assert "404" in error.text
    assert "nobody-42" in find(page, "error-message").text
    assert "user" in find(page, "error-param").text
    shot(page, "error")
