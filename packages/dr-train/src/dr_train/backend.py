"""The optimizer side of training, one interface over the plain loop and DeepSpeed.

A trainer asks its backend (`TrainBackend`) for `module` (the model to run forward), `backward(loss)` once
per micro-batch, `step(lr)` once per optimizer step (clipping, the update, zeroed gradients; returns the
gradient norm), `autocast()` around the forward pass, and `save(folder)` / `load(folder)` for the optimizer
state. It never asks which backend it holds. (DeepSpeed's own `engine` is DeepSpeed's word, kept inside
`DeepSpeedBackend`.)

- `PlainBackend`: the model on one device, torch's AdamW, `optimizer.pt` in each checkpoint.
- `DeepSpeedBackend`: DeepSpeed's engine (ZeRO 0-3, offload, Ulysses groups), its sharded state under
  `deepspeed/` in each checkpoint. DeepSpeed counts micro-batches itself, so every rank must run the same
  number of them per step (`lockstep`).

The DeepSpeed config is built from a typed `DeepSpeedSettings` (a ZeRO preset or the user's JSON, to which
the fields this trainer owns are added when absent).
"""

from __future__ import annotations

import json
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from dr_core.errors import InputError


@dataclass(frozen=True)
class OptimSettings:
    """AdamW and gradient clipping, the same for either backend."""

    lr: float
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    clip: float = 1.0


@dataclass(frozen=True)
class DeepSpeedSettings:
    """What the user asked of DeepSpeed: a ZeRO stage preset (with `offload`), or a JSON config file."""

    zero: int | None = None
    offload: bool = False
    config_file: str | None = None

    @property
    def wanted(self) -> bool:
        return self.zero is not None or self.config_file is not None

    def config(
        self, optim: OptimSettings, micro_steps: int, world: int, bf16: bool, force_batch: bool = False
    ) -> dict[str, Any]:
        """The DeepSpeed JSON: the preset or file, with the batch shape, clipping and precision filled in
        where the file leaves them out (`force_batch`: the batch shape is the trainer's, whatever the file
        says)."""
        if self.config_file:
            try:
                config = json.loads(Path(self.config_file).read_text())
            except (OSError, ValueError) as exc:
                raise InputError(f"--deepspeed {self.config_file}: {exc}") from None
            if not isinstance(config, dict):
                raise InputError(f"--deepspeed {self.config_file}: expected a JSON object")
        else:
            config = self._preset(optim)
        if force_batch:
            config["train_micro_batch_size_per_gpu"] = 1
            config["gradient_accumulation_steps"] = micro_steps
        config.setdefault("train_micro_batch_size_per_gpu", 1)
        config.setdefault("gradient_accumulation_steps", micro_steps)
        config["train_batch_size"] = (
            config["train_micro_batch_size_per_gpu"] * config["gradient_accumulation_steps"] * world
        )
        config.setdefault("gradient_clipping", optim.clip)
        if bf16:
            config.setdefault("bf16", {"enabled": True})
        config.setdefault("steps_per_print", 10**9)
        config.setdefault("wall_clock_breakdown", False)
        return config

    def _preset(self, optim: OptimSettings) -> dict[str, Any]:
        stage = 0 if self.zero is None else self.zero
        if stage not in (0, 1, 2, 3):
            raise InputError(f"--zero {self.zero}: choose 0, 1, 2 or 3")
        section: dict[str, Any] = {
            "stage": stage,
            "overlap_comm": stage > 0,
            "contiguous_gradients": stage > 0,
        }
        if self.offload:
            if stage < 2:
                raise InputError("--offload needs --zero 2 or 3")
            section["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
            if stage == 3:
                section["offload_param"] = {"device": "cpu", "pin_memory": True}
        if stage == 3:
            # so a checkpoint's weights can be written as one Hugging Face folder
            section["stage3_gather_16bit_weights_on_model_save"] = True
        config: dict[str, Any] = {"zero_optimization": section}
        if self.offload:
            # ZeRO-Offload steps on the CPU with DeepSpeed's own Adam, built from this section
            config["optimizer"] = {
                "type": "AdamW",
                "params": {"lr": optim.lr, "betas": list(optim.betas), "weight_decay": optim.weight_decay},
            }
        return config


class TrainBackend(Protocol):
    module: Any
    sharded: bool  # the optimizer state is DeepSpeed's, one shard per rank
    lockstep: bool  # every rank runs the same number of micro-batches per step
    zero3: bool  # the parameters are partitioned (gather before reading a whole weight)

    def autocast(self) -> AbstractContextManager[Any]: ...

    def backward(self, loss: Any) -> None: ...

    def step(self, lr: float | None = None) -> float: ...

    def model_state(self) -> dict[str, Any] | None: ...

    def save(self, folder: Path) -> None: ...

    def load(self, folder: Path) -> None: ...


class PlainBackend:
    """The model on one device with torch's AdamW; bf16 by autocast."""

    sharded = False
    lockstep = False
    zero3 = False

    def __init__(
        self, module: Any, optim: OptimSettings, device: Any, bf16: bool = False, extra: Any = None
    ) -> None:
        module.to(device)
        params = list(module.parameters())
        if extra is not None:  # a part trained beside the model (PPO's value head)
            extra.to(device)
            params += list(extra.parameters())
        self.module = module
        self.device = device
        self.bf16 = bf16
        self.optim = optim
        self.params = params
        # PyTorch's fused AdamW on the CPU: one pass over each parameter rather than five (GPUs keep the
        # default)
        self.optimizer = torch.optim.AdamW(
            params,
            lr=optim.lr,
            betas=optim.betas,
            weight_decay=optim.weight_decay,
            fused=True if torch.device(device).type == "cpu" else None,
        )

    def autocast(self) -> AbstractContextManager[Any]:
        if self.bf16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    def backward(self, loss: Any) -> None:
        loss.backward()

    def step(self, lr: float | None = None) -> float:
        if lr is not None:
            for group in self.optimizer.param_groups:
                group["lr"] = lr
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.optim.clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def model_state(self) -> dict[str, Any] | None:
        return None  # the module's own state dict

    def save(self, folder: Path) -> None:
        torch.save(self.optimizer.state_dict(), folder / "optimizer.pt")

    def load(self, folder: Path) -> None:
        self.optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=False))


class DeepSpeedBackend:
    """DeepSpeed's engine. `backward` counts a micro-batch; the step after the last of them updates."""

    sharded = True
    lockstep = True

    def __init__(
        self,
        module: Any,
        optim: OptimSettings,
        settings: DeepSpeedSettings,
        micro_steps: int,
        world: int,
        bf16: bool = False,
        extra: Any = None,
        mpu: Any = None,
        allow_zero3: bool = True,
        force_batch: bool = False,
    ) -> None:
        from dr_train.distributed import require_deepspeed

        deepspeed = require_deepspeed()
        ds_config = settings.config(optim, micro_steps, world, bf16, force_batch)
        self.zero3 = ds_config.get("zero_optimization", {}).get("stage", 0) == 3
        if self.zero3 and not allow_zero3:
            raise InputError(
                "dr train rl generates its rollouts with the whole policy on every rank, which ZeRO-3 "
                "splits up: use --zero 0, 1 or 2"
            )
        # a part trained beside the model goes into the engine with it (its state saved with the shards)
        trained = module if extra is None else torch.nn.ModuleDict({"policy": module, "value": extra})
        optimizer = None
        if "optimizer" not in ds_config:
            optimizer = torch.optim.AdamW(
                trained.parameters(), lr=optim.lr, betas=optim.betas, weight_decay=optim.weight_decay
            )
        self.engine, self.optimizer, _, _ = deepspeed.initialize(
            model=trained, optimizer=optimizer, config=ds_config, mpu=mpu
        )
        self.module = module
        self._micro = 0  # micro-batches since the last update

    def autocast(self) -> AbstractContextManager[Any]:
        return nullcontext()  # DeepSpeed's bf16 section casts the weights itself

    def backward(self, loss: Any) -> None:
        self.engine.backward(loss, scale_wrt_gas=False)
        self._micro += 1
        if self._micro < self.engine.gradient_accumulation_steps():
            # DeepSpeed counts micro-batches in step(); the one at the boundary (in `step`) updates
            self.engine.step()

    def step(self, lr: float | None = None) -> float:
        if lr is not None:
            for group in self.engine.optimizer.param_groups:
                group["lr"] = lr
        self.engine.step()
        self._micro = 0
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else float("nan")

    def model_state(self) -> dict[str, Any] | None:
        """The whole model's weights for a Hugging Face folder (ZeRO-3 gathers them; every rank calls)."""
        if self.zero3:
            return self.engine._zero3_consolidated_16bit_state_dict()
        return None

    def save(self, folder: Path) -> None:
        self.engine.save_checkpoint(str(folder / "deepspeed"), tag="state")

    def load(self, folder: Path) -> None:
        self.engine.load_checkpoint(str(folder / "deepspeed"), load_module_strict=False)


def make_backend(
    module: Any,
    optim: OptimSettings,
    deepspeed: DeepSpeedSettings,
    *,
    device: Any,
    micro_steps: int = 1,
    world: int = 1,
    bf16: bool = False,
    extra: Any = None,
    mpu: Any = None,
    rollouts: bool = False,
) -> TrainBackend:
    """The backend the settings ask for. `rollouts`: the model also generates (RL), so it stays whole on
    every rank (no ZeRO-3) and the batch shape is the trainer's own."""
    if deepspeed.wanted:
        return DeepSpeedBackend(
            module, optim, deepspeed, micro_steps, world, bf16, extra, mpu, not rollouts, rollouts
        )
    return PlainBackend(module, optim, device, bf16, extra)
