"""`dr serve`: launch an inference engine (vLLM, else transformers serve) and, beside it, the research API."""

from __future__ import annotations

import signal
import sys
import time
from typing import TYPE_CHECKING, Annotated, Any

import typer

from dr_core.server import ManagedServer, ServerError

if TYPE_CHECKING:
    from dr_serve.config import ServeConfig

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


ModelArgument = Annotated[
    str | None,
    typer.Argument(help="A Hugging Face folder, a hub name, or a model a package ships (smollm2-135m)."),
]
ExtraArgument = Annotated[
    list[str] | None, typer.Argument(help="After --: flags passed to the engine untouched.")
]

app = typer.Typer(
    add_completion=False,
    help="Serve a model with vLLM (or transformers serve), and the research API beside it.",
)


def serve(flags: dict[str, Any]) -> None:
    """`dr serve`: its settings (flags over [serve] and DR_SERVE_*), then the engine, the research API, or
    both, under one supervisor."""
    from dr_core.config import resolve
    from dr_core.errors import InputError
    from dr_core.log import logger
    from dr_core.serving import EngineSpec, engine_command, engine_env, fallback_reason, model_config
    from dr_serve.config import ServeConfig

    config = resolve(ServeConfig, "serve", {**flags, "extra": flags.get("extra") or None})
    api_key = config.api_key
    if config.api_key_file is not None:
        if api_key:
            raise InputError("give the research API's key once: --api-key or --api-key-file")
        try:
            api_key = (config.api_key_file.read_text().splitlines() or [""])[0].strip()
        except OSError as exc:
            raise InputError(f"--api-key-file {config.api_key_file}: {exc.strerror}") from None
        if not api_key:
            raise InputError(f"--api-key-file {config.api_key_file}: the file is empty")
    api_port, api_host = config.api_port, config.api_host
    if config.engine == "none":
        if api_port is None:
            raise InputError("--engine none serves only the research API: give --api-port")
        require_free_port(api_host, api_port, "--api-port")
        run_api(api_host, api_port, api_key, config)
        return
    if not config.model:
        raise InputError("give the MODEL to serve (a Hugging Face folder or hub name)")
    from dr_core.models import resolve as resolve_model

    # a model a package ships (smollm2-135m): its converted folder
    spec = EngineSpec.model_validate(
        {**config.model_dump(include=set(EngineSpec.model_fields)), "model": resolve_model(config.model)}
    )
    chosen, argv, served = engine_command(spec)
    env = engine_env(spec, chosen)
    if config.dry_run:
        import shlex

        sys.stdout.write(shlex.join([*(f"{k}={v}" for k, v in env.items()), *argv]) + "\n")
        return
    host, port = spec.host, spec.port
    require_free_port(host, port, "--port")
    if api_port is not None:
        require_free_port(api_host, api_port, "--api-port")
    if spec.engine == "auto" and chosen != "vllm":
        logger.info("serving with transformers serve: %s", fallback_reason(model_config(spec.model)))
    logger.info("starting %s: %s", chosen, " ".join(argv))
    supervisor = Supervisor()
    supervisor.start(
        ManagedServer(argv, port, name=chosen, host=host, env=env, timeout_s=config.health_timeout)
    )
    engine_url = f"http://{host}:{port}"
    logger.info("%s is serving %s at %s/v1", chosen, served, engine_url)
    if api_port is not None:
        # the research API alone (`--engine none`) in a process of its own, with the same settings
        api = [sys.executable, "-m", "dr_serve", "--engine", "none", "--api-port", str(api_port)]
        api += ["--api-host", api_host, "--base-url", f"{engine_url}/v1"]
        for flag, value in (
            ("--runs-dir", config.runs_dir),
            ("--index", config.index),
            ("--search", config.search),
        ):
            if value is not None:
                api += [flag, str(value)]
        if config.max_concurrent is not None:
            api += ["--max-concurrent", str(config.max_concurrent)]
        # the key travels by environment, not argv, so `ps` does not show it
        api_env = {"DR_LLM_MODEL": served}
        if api_key:
            api_env["DR_API_API_KEY"] = api_key
        supervisor.start(
            ManagedServer(api, api_port, name="the research API", host=api_host, env=api_env, timeout_s=60)
        )
        logger.info("research API at http://%s:%d/v1/research", api_host, api_port)
    raise typer.Exit(supervisor.run())


def _register() -> None:
    from dr_core.config_cli import config_command
    from dr_serve.config import ServeConfig

    config_command(
        app, "serve", ServeConfig, serve, arguments={"model": ModelArgument, "extra": ExtraArgument}
    )


_register()


def run_api(host: str, port: int, api_key: str | None, settings: ServeConfig) -> None:
    """The research API on host:port over the endpoint at --base-url, its model the [llm] settings' (a
    `dr serve` that starts an engine passes the name it serves as DR_LLM_MODEL)."""
    import uvicorn

    from dr_agent.build import build_agent
    from dr_core.config import resolve
    from dr_serve.api import ApiConfig, create_app

    flags = {"api_key": api_key, "max_concurrent": settings.max_concurrent, "runs_dir": settings.runs_dir}
    config = resolve(ApiConfig, "api", flags)

    # built before listening, so wrong settings fail now rather than at the first request
    agent = build_agent(
        llm={"base_url": settings.base_url},
        search={"backend": settings.search, "index": settings.index},
    )
    uvicorn.run(create_app(agent, config), host=host, port=port, log_level="warning")
