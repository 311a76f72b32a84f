"""Weight sync over NCCL (`dr train rl --weight-sync nccl`): the trainer's first rank broadcasts the policy
GPU to GPU into every rollout engine through vLLM's weight-transfer engine, instead of writing a folder for
the engines to reload (`--weight-sync disk`, the default and the only way on a CPU).

Per engine, the first sync opens an NCCL group of the trainer (rank 0) and the engine's workers: the trainer
asks the engine to join (`/init_weight_transfer_engine`, over HTTP) while it joins itself at a TCP rendezvous
on a free port of the address the engine reaches it by. Each sync then sends the parameter names, dtypes and
shapes (`/start_weight_update`, `/update_weights`) while it broadcasts the tensors, and finishes the update
(`/finish_weight_update`). The engine must be started with `--weight-transfer-config '{"backend": "nccl"}'`
(the engine the recipe starts for itself is: recipes.rl.ENGINE_FLAGS). `VLLMServers.sync` pauses and resumes
the engines around it, and `Sampler.sync` (dr_train.rl.sampling) checks a probe's log-probabilities
afterwards, as for the disk path.

An NCCL collective whose peers never arrive waits for ever; every step here runs under a timeout, and the
error names the engine and what to check.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlparse

import httpx
import torch
from vllm.distributed.weight_transfer.base import ParamMeta, WeightSource
from vllm.distributed.weight_transfer.clients import HTTPVLLMWeightSyncClient
from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerInitInfo, NCCLTrainerWeightTransferEngine

from dr_core.proc import free_port
from dr_train.rl.engines import EngineError


class PolicySource(WeightSource):
    """The policy's weights under its checkpoint names, as the engine's model loads them: the output layer
    named apart from the embeddings even when tied (the engine was started from an untied copy)."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def _named(self) -> list[tuple[str, torch.Tensor]]:
        return [(name, tensor.detach()) for name, tensor in self.model.state_dict().items()]

    def metadata(self) -> list[ParamMeta]:
        return [ParamMeta(name, t.dtype, tuple(t.shape)) for name, t in self._named()]

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        for name, tensor in self._named():
            yield name, tensor.contiguous()


class NcclSync:
    """One NCCL sender per engine URL, joined at the first `send()`."""

    def __init__(self, urls: list[str], model: Any, timeout_s: float = 300.0) -> None:
        self.urls = urls
        self.model = model
        self.timeout_s = timeout_s
        self.senders: dict[str, Any] = {}

    def send(self) -> None:
        """Broadcast the policy into every engine (joining each one's group the first time)."""
        for url in self.urls:
            sender = self.senders.get(url)
            if sender is None:
                sender = self.senders[url] = self._join(url)
            _within(self.timeout_s, sender.send_weights, url, "sending the weights")

    def _join(self, url: str) -> Any:
        try:
            response = httpx.get(f"{url}/get_world_size", params={"include_dp": "true"}, timeout=30.0)
            response.raise_for_status()
            workers = int(response.json()["world_size"])
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            raise EngineError(f"rollout engine {url}/get_world_size: {type(exc).__name__}: {exc}") from None
        address, port = reachable_address(url), free_port()
        info = NCCLTrainerInitInfo(master_address=address, master_port=port, world_size=workers + 1, rank=0)
        client = HTTPVLLMWeightSyncClient(url, timeout=self.timeout_s)
        joined: list[Any] = []

        def join() -> None:
            source = PolicySource(self.model)
            joined.append(NCCLTrainerWeightTransferEngine.trainer_init(info, client=client, source=source))

        _within(self.timeout_s, join, url, f"joining an NCCL group at {address}:{port}")
        return joined[0]

    def close(self) -> None:
        for sender in self.senders.values():
            sender.shutdown()
        self.senders = {}


def reachable_address(url: str) -> str:
    """This machine's address on the route to `url`'s host (loopback for a local engine)."""
    host = urlparse(url).hostname or "127.0.0.1"
    if host in ("127.0.0.1", "localhost", "::1"):
        return "127.0.0.1"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((host, 9))  # no packet is sent: this only picks the route
        return str(probe.getsockname()[0])


def _hang(url: str, doing: str, timeout_s: float) -> str:
    return (
        f"rollout engine {url}: {doing} did not finish within {timeout_s:.0f} s. NCCL waits silently when "
        "its peers cannot reach each other: check that the engine was started with --weight-transfer-config "
        '\'{"backend": "nccl"}\', that it reaches this machine at that address (NCCL_SOCKET_IFNAME names '
        "the interface NCCL uses), and set NCCL_CUMEM_ENABLE=0 on both sides when the trainer and the engine "
        "share a node; NCCL_DEBUG=INFO shows where it stopped"
    )


def _within(timeout_s: float, work: Callable[[], None], url: str, doing: str) -> None:
    """Run `work` in a thread; an EngineError naming the engine when it fails or has not returned after
    `timeout_s` (the thread is left behind: a hung NCCL call cannot be interrupted)."""
    failure: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=run, name="nccl-sync", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise EngineError(_hang(url, doing, timeout_s))
    if failure:
        exc = failure[0]
        if isinstance(exc, EngineError):
            raise exc
        raise EngineError(f"rollout engine {url}: {doing} failed: {type(exc).__name__}: {exc}")
