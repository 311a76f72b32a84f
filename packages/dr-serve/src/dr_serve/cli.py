"""`dr serve`: launch an inference engine (vLLM, else transformers serve) and, beside it, the research API."""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from dr_core.options import BaseUrl
from dr_core.server import ManagedServer, ServerError

HEALTH_POLL_S = 0.5


class Supervisor:
    """Servers (engine, API) whose lifetime is ours (`ManagedServer`s): SIGINT/SIGTERM are forwarded to them
    from the moment they start, when one exits the others are stopped, and they die with us even when we
    are killed outright (SIGKILL)."""

    def __init__(self) -> None:
        self.servers: list[ManagedServer] = []
        self.stopping = False
        signal.signal(signal.SIGINT, self._forward)
        signal.signal(signal.SIGTERM, self._forward)

    def _forward(self, signum: int, frame: Any) -> None:
        self.stopping = True
        for server in self.servers:
            if server.process is not None and server.running():
                server.process.send_signal(signum)

    def start(self, server: ManagedServer) -> None:
        """Start `server` and wait until it is healthy (or we are signalled); stop everything if it fails."""
        self.servers.append(server)
        server.start()
        try:
            server.wait_healthy(interrupted=lambda: self.stopping)
        except ServerError:
            self.stop()
            raise

    def run(self) -> int:
        """Wait until a server exits (or we are signalled); stop the rest; return the first exit code."""
        while not self.stopping and all(server.running() for server in self.servers):
            time.sleep(HEALTH_POLL_S)
        return self.stop()

    def stop(self) -> int:
        codes = [server.stop() for server in self.servers]
        return next((code for code in codes if code), 0)


def require_free_port(host: str, port: int, flag: str) -> None:
    """InputError when something already listens on `host:port`, before a server is started there."""
    from dr_core.errors import InputError
    from dr_core.proc import port_in_use

    if port_in_use(host, port):
        raise InputError(
            f"{flag} {port}: {host}:{port} is already in use; stop what listens there or pick another"
        )


def serve(
    model: Annotated[
        str | None,
        typer.Argument(help="A Hugging Face folder, a hub name, or a model a package ships (smollm2-135m)."),
    ] = None,
    engine: Annotated[
        str, typer.Option(help="auto (vLLM if installed), vllm, transformers, or none (API only).")
    ] = "auto",
    host: Annotated[str, typer.Option(help="Address the engine listens on.")] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(help="Port of the engine's OpenAI-compatible API.", min=1, max=65535)
    ] = 8000,
    tp: Annotated[
        int, typer.Option("--tp", "--tensor-parallel-size", help="Tensor-parallel GPUs (vLLM).", min=1)
    ] = 1,
    pp: Annotated[
        int, typer.Option("--pp", "--pipeline-parallel-size", help="Pipeline stages (vLLM).", min=1)
    ] = 1,
    max_model_len: Annotated[
        int | None,
        typer.Option(help="Context length (default: from the checkpoint, rope scaling included).", min=1),
    ] = None,
    served_model_name: Annotated[
        str | None, typer.Option(help="Model name clients use (default: folder name).")
    ] = None,
    tool_call_parser: Annotated[
        str | None,
        typer.Option(help="vLLM tool-call parser (default: by model family, e.g. hermes for Qwen)."),
    ] = None,
    rope_scaling: Annotated[
        str | None,
        typer.Option(help='Rope scaling JSON the checkpoint lacks, e.g. {"rope_type":"yarn","factor":4}.'),
    ] = None,
    dtype: Annotated[str, typer.Option(help="Weights dtype.")] = "auto",
    gpu_memory_utilization: Annotated[
        float | None, typer.Option(help="vLLM's GPU memory fraction.", min=0.01, max=1.0)
    ] = None,
    device: Annotated[str, typer.Option(help="transformers serve's device (auto, cpu, cuda:0).")] = "auto",
    kv_cache_gib: Annotated[
        int, typer.Option("--kv-cache-gib", help="vLLM on the CPU: KV-cache space in GiB.", min=1)
    ] = 2,
    cpu_threads: Annotated[
        int | None,
        typer.Option(
            "--cpu-threads", help="vLLM on the CPU: cores to compute on (default: vLLM's choice).", min=1
        ),
    ] = None,
    eager: Annotated[
        bool | None,
        typer.Option(
            "--eager/--no-eager",
            help="vLLM's --enforce-eager (default: on the CPU, where compiling first costs minutes).",
            show_default=False,
        ),
    ] = None,
    api_port: Annotated[
        int | None,
        typer.Option(help="Also serve the research API on this port.", show_default=False, min=1, max=65535),
    ] = None,
    api_host: Annotated[str, typer.Option(help="Address the research API listens on.")] = "127.0.0.1",
    api_key: Annotated[
        str | None,
        typer.Option(
            help="Bearer token the research API requires. Shown by `ps` to every user of the machine: "
            "prefer the DR_API_API_KEY variable or --api-key-file.",
            show_default=False,
        ),
    ] = None,
    api_key_file: Annotated[
        Path | None,
        typer.Option(
            help="Read the research API's bearer token from this file (its first line).", show_default=False
        ),
    ] = None,
    max_concurrent: Annotated[
        int | None,
        typer.Option(help="Research runs at once; more get 429 (default: 4).", show_default=False, min=1),
    ] = None,
    runs_dir: Annotated[Path | None, typer.Option(help="Keep finished research runs here.")] = None,
    base_url: BaseUrl = None,
    index: Annotated[Path | None, typer.Option(help="Search index for the research API's agent.")] = None,
    search: Annotated[
        str | None, typer.Option("--search", help="Search backend for the research API.")
    ] = None,
    health_timeout: Annotated[
        float, typer.Option(help="Seconds to wait for the engine to be ready.", min=1.0)
    ] = 900.0,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the engine command and exit.")] = False,
    extra: Annotated[
        list[str] | None, typer.Argument(help="After --: flags passed to the engine untouched.")
    ] = None,
) -> None:
    """Serve MODEL with vLLM (or transformers serve) on an OpenAI-compatible API, and optionally the research
    API beside it. Waits until the engine is healthy, forwards Ctrl-C and SIGTERM, exits with the engine.

    `--engine none --base-url URL --api-port P` serves only the research API, over a running endpoint.
    """
    from dr_core.errors import ConfigError, InputError
    from dr_core.log import logger
    from dr_core.serving import EngineSpec, engine_command, engine_env, fallback_reason, model_config

    if api_key_file is not None:
        if api_key:
            raise InputError("give the research API's key once: --api-key or --api-key-file")
        try:
            api_key = (api_key_file.read_text().splitlines() or [""])[0].strip()
        except OSError as exc:
            raise InputError(f"--api-key-file {api_key_file}: {exc.strerror}") from None
        if not api_key:
            raise InputError(f"--api-key-file {api_key_file}: the file is empty")
    if engine == "none":
        if api_port is None:
            raise InputError("--engine none serves only the research API: give --api-port")
        require_free_port(api_host, api_port, "--api-port")
        run_api(api_host, api_port, api_key, max_concurrent, runs_dir, base_url, None, index, search)
        return
    if model is None:
        raise InputError("give the MODEL to serve (a Hugging Face folder or hub name)")
    try:
        rope = json.loads(rope_scaling) if rope_scaling else None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--rope-scaling: not JSON ({exc})") from None
    from dr_core.models import resolve

    model = resolve(model)  # a model a package ships (smollm2-135m): its converted folder
    spec = EngineSpec(
        model=model,
        engine=engine,
        host=host,
        port=port,
        tensor_parallel_size=tp,
        pipeline_parallel_size=pp,
        max_model_len=max_model_len,
        served_model_name=served_model_name,
        tool_call_parser=tool_call_parser,
        rope_scaling=rope,
        dtype=dtype,
        gpu_memory_utilization=gpu_memory_utilization,
        device=device,
        kv_cache_gib=kv_cache_gib,
        cpu_threads=cpu_threads,
        eager=eager,
        extra=extra or [],
    )
    chosen, argv, served = engine_command(spec)
    env = engine_env(spec, chosen)
    if dry_run:
        import shlex

        sys.stdout.write(shlex.join([*(f"{k}={v}" for k, v in env.items()), *argv]) + "\n")
        return
    require_free_port(host, port, "--port")
    if api_port is not None:
        require_free_port(api_host, api_port, "--api-port")
    if engine == "auto" and chosen != "vllm":
        logger.info("serving with transformers serve: %s", fallback_reason(model_config(model)))
    logger.info("starting %s: %s", chosen, " ".join(argv))
    supervisor = Supervisor()
    supervisor.start(ManagedServer(argv, port, name=chosen, host=host, env=env, timeout_s=health_timeout))
    engine_url = f"http://{host}:{port}"
    logger.info("%s is serving %s at %s/v1", chosen, served, engine_url)
    if api_port is not None:
        api = [sys.executable, "-m", "dr_serve", "api", "--port", str(api_port)]
        api += ["--host", api_host, "--base-url", f"{engine_url}/v1"]
        for flag, value in (("--runs-dir", runs_dir), ("--index", index), ("--search", search)):
            if value is not None:
                api += [flag, str(value)]
        if max_concurrent is not None:
            api += ["--max-concurrent", str(max_concurrent)]
        # the key travels by environment, not argv, so `ps` does not show it
        api_env = {"DR_LLM_MODEL": served}
        if api_key:
            api_env["DR_API_API_KEY"] = api_key
        supervisor.start(
            ManagedServer(api, api_port, name="the research API", host=api_host, env=api_env, timeout_s=60)
        )
        logger.info("research API at http://%s:%d/v1/research", api_host, api_port)
    raise typer.Exit(supervisor.run())


def run_api(
    host: str,
    port: int,
    api_key: str | None,
    max_concurrent: int | None,
    runs_dir: Path | None,
    base_url: str | None,
    model: str | None,
    index: Path | None,
    search: str | None,
) -> None:
    import uvicorn

    from dr_agent.build import build_agent
    from dr_core.config import resolve
    from dr_serve.api import ApiConfig, create_app

    config = resolve(
        ApiConfig, "api", {"api_key": api_key, "max_concurrent": max_concurrent, "runs_dir": runs_dir}
    )

    # built before listening, so wrong settings fail now rather than at the first request
    agent = build_agent(
        llm={"base_url": base_url, "model": model}, search={"backend": search, "index": index}
    )
    uvicorn.run(create_app(agent, config), host=host, port=port, log_level="warning")
