"""`dr serve`'s settings: the engine's (`dr_core.serving.EngineSpec`) and the research API's beside it.

Each field is one flag (`dr_core.config_cli`), also read from the config file's [serve] section and
DR_SERVE_* variables. Torch- and fastapi-free."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from dr_core.serving import EngineSpec


class ServeConfig(EngineSpec):
    """Serve MODEL with vLLM (or transformers serve) on an OpenAI-compatible API, and optionally the research
    API beside it. Waits until the engine is healthy, forwards Ctrl-C and SIGTERM, exits with the engine.

    `--engine none --base-url URL --api-port P` serves only the research API, over a running endpoint."""

    model: str = Field("", description="A Hugging Face folder, a hub name, or a model a package ships.")
    engine: Literal["auto", "vllm", "transformers", "none"] = Field(
        "auto",
        description="auto (vLLM if installed), vllm, transformers, or none (the research API only, over "
        "--base-url).",
    )
    api_port: int | None = Field(
        None, ge=1, le=65535, description="Also serve the research API on this port."
    )
    api_host: str = Field("127.0.0.1", description="Address the research API listens on.")
    api_key: str | None = Field(
        None,
        description="Bearer token the research API requires. Shown by `ps` to every user of the machine: "
        "prefer the DR_API_API_KEY variable or --api-key-file.",
    )
    api_key_file: Path | None = Field(
        None, description="Read the research API's bearer token from this file (its first line)."
    )
    max_concurrent: int | None = Field(
        None, ge=1, description="Research runs at once; more get 429 (default: 4)."
    )
    runs_dir: Path | None = Field(None, description="Keep finished research runs here.")
    base_url: str | None = Field(
        None,
        description="The research API's OpenAI-compatible endpoint, with --engine none (DR_LLM_BASE_URL).",
    )
    index: Path | None = Field(None, description="Search index for the research API's agent.")
    search: str | None = Field(None, description="Search backend for the research API.")
    health_timeout: float = Field(900.0, ge=1.0, description="Seconds to wait for the engine to be ready.")
    dry_run: bool = Field(False, description="Print the engine command and exit.")
