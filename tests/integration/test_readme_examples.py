"""The README's HTTP API examples, run as written against the real ``recbridge serve``
(``api_server``), so that they cannot rot: the curl block of "Endpoints" through bash, every
example message of "Message format (chat)" as a chat turn, and the Python blocks of "Python:
the official `openai` client and LangChain". Only the address and the key are swapped for the
test server's.
"""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from agent.config import PROJECT_ROOT
from tests.integration.api_fixtures import ApiServer

pytestmark = pytest.mark.integration

README = PROJECT_ROOT / "README.md"
README_URL = "http://127.0.0.1:8080"
README_KEY = "k1"


def section(title: str) -> str:
    """The README's text from the heading ``title`` to the next heading of any level."""
    text = README.read_text(encoding="utf-8")
    start = text.index(f"\n### {title}\n")
    end = re.compile(r"\n#{2,3} ").search(text, start + 5)
    return text[start : end.start() if end else len(text)]


def blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def localized(code: str, server: ApiServer) -> str:
    assert server.key is not None
    return (
        code.replace(README_URL, server.url)
        .replace(f"Bearer {README_KEY}", f"Bearer {server.key}")
        .replace(f'api_key="{README_KEY}"', f'api_key="{server.key}"')
    )


def test_the_curl_examples_answer_200(api_server: ApiServer, tmp_path: Path) -> None:
    (code,) = blocks(section("Endpoints"), "bash")
    calls = len(re.findall(r"^curl ", code, flags=re.M))
    # Each curl prints its status on a line of its own after the body.
    prelude = 'curl() { command curl -w "\\nHTTP %{http_code}\\n" "$@"; }\n'
    script = tmp_path / "endpoints.sh"
    script.write_text(prelude + localized(code, api_server), encoding="utf-8")
    run = subprocess.run(
        ["bash", "-e", str(script)], capture_output=True, text=True, timeout=1200, check=False
    )
    assert run.returncode == 0, run.stderr[-2000:]
    codes = re.findall(r"^HTTP (\d{3})$", run.stdout, flags=re.M)
    assert len(codes) == calls and calls >= 8, run.stdout[-3000:]
    assert set(codes) == {"200"}, run.stdout[-3000:]
    assert '"exclude_unmatched"' in run.stdout  # the exclusion example says what it did not do


def test_the_message_format_examples_are_understood(api_server: ApiServer) -> None:
    text = section("Message format (chat)")
    examples = blocks(text, "text") + blocks(text, "json")
    assert len(examples) >= 3
    with api_server.client() as http:
        for message in examples:
            resp = http.post(
                "/v1/chat/completions",
                json={"model": "sasrec-id", "messages": [{"role": "user", "content": message}]},
            )
            assert resp.status_code == 200, (message, resp.text)
            assert resp.json()["recommendation"]["items"], message


@pytest.mark.parametrize("index", [0, 1])
def test_the_python_examples_run(api_server: ApiServer, index: int) -> None:
    code = blocks(section("Python: the official `openai` client and LangChain"), "python")[index]
    work = api_server.log_path.parent / "work"  # the server's settings (api_fixtures)
    env = {
        **os.environ,
        "RECBRIDGE_WORK_DIR": str(work),
        "RECBRIDGE_DATA__PATH": str(_server_setting(api_server, "data.path")),
        "RECBRIDGE_EMBEDDING__CACHE_DIR": str(_server_setting(api_server, "embedding.cache_dir")),
    }
    run = subprocess.run(
        [sys.executable, "-c", localized(code, api_server)],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
        cwd=PROJECT_ROOT,
        env=env,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip()


def _server_setting(server: ApiServer, key: str) -> str:
    """A ``--set key=value`` the server was started with (its command line)."""
    argv = [str(a) for a in server.proc.args]  # type: ignore[union-attr]
    for flag, value in itertools.pairwise(argv):
        if flag == "--set" and value.startswith(f"{key}="):
            return value.split("=", 1)[1]
    raise AssertionError(f"the server was not started with --set {key}=...")
