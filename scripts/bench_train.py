"""Training throughput and memory: plain Hugging Face, Hugging Face + Liger-Kernel, and dr train's path.

    python scripts/bench_train.py                         # one GPU: Qwen2.5-0.5B shape at 32K and 128K
    python scripts/bench_train.py --zero3-7b              # + the longest row of a 7B with ZeRO-3 offload
    python scripts/bench_train.py --device cpu --small    # a smoke run of every variant on the CPU

Every variant trains the same randomly initialized model (bf16 weights, AdamW, gradient checkpointing) on
one row of T tokens, in its own process so an out-of-memory is a table entry. "dr" is exactly what
`dr train sft` runs: dr_kernels.patch (packed attention, fused norms, RoPE, SwiGLU) and the fused linear
cross-entropy on the hidden states. Liger-Kernel is optional (pip install liger-kernel).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from typing import Any

VARIANTS = ("hf", "liger", "dr")


def build(shape: str, device: str, attention: str) -> Any:
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    from dr_train.model import TINY

    torch.manual_seed(0)
    config = Qwen2Config(num_key_value_heads=2, max_position_embeddings=262144, **TINY[shape])
    config.rope_parameters = {"rope_type": "default", "rope_theta": 1e6}
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16, attn_implementation=attention)
    return model.to(device)


def measure(variant: str, tokens: int, shape: str, device: str, steps: int) -> dict[str, Any]:
    """Runs in a child process: tokens/s and peak GiB of training steps on one row of `tokens`."""
    import torch

    from dr_train.pack import Row
    from dr_train.rows import row_tensors, token_losses

    cuda = device == "cuda"
    attention = "sdpa" if tokens <= 32768 else "flex_attention"
    if variant == "liger":
        try:
            from liger_kernel.transformers import _apply_liger_kernel_to_instance
        except ImportError:
            return {"error": "liger-kernel not installed"}
    model = build(shape, device, attention if variant != "dr" else "sdpa")
    if variant == "liger":
        _apply_liger_kernel_to_instance(model=model)
    if variant == "dr":
        from dr_kernels import patch

        patch(model)
    checkpointing(model)
    model.config.use_cache = False
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (tokens,), generator=generator).tolist()
    row = Row()
    row.input_ids, row.labels = ids, ids
    row.position_ids, row.doc_ids = list(range(tokens)), [0] * tokens
    batch = row_tensors(row, torch.device(device))

    def step() -> None:
        if variant == "dr":
            loss = token_losses(model, batch, kernels=True, zero3=False) / tokens
        else:
            labels = batch["input_ids"]
            loss = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    try:
        step()  # warm-up: compilation, autotuning, optimizer state
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            step()
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    except torch.OutOfMemoryError:
        return {"error": "out of memory"}
    times.sort()
    tokens_per_s = tokens / times[len(times) // 2]
    result: dict[str, Any] = {"tokens_per_s": round(tokens_per_s, 1)}
    if cuda:
        from dr_train.trainer import PEAK_FLOPS

        result["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        peak = next((f for n, f in PEAK_FLOPS.items() if n in torch.cuda.get_device_name()), None)
        if peak:
            # 6 FLOPs per parameter and token, plus causal attention's 6·layers·T·hidden per token (the
            # recomputation of checkpointing not counted, as MFU is usually reported)
            c = model.config
            params = sum(p.numel() for p in model.parameters())
            per_token = 6 * params + 6 * c.num_hidden_layers * tokens * c.hidden_size
            result["mfu"] = round(tokens_per_s * per_token / peak, 4)
    return result


def measure_zero3(tokens: int, shape: str, steps: int) -> dict[str, Any]:
    """Runs in a child process: one rank of DeepSpeed ZeRO-3 with optimizer and parameter offload."""
    import os

    import torch

    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29511")
    import deepspeed

    from dr_kernels import patch
    from dr_train.engine import DeepSpeedSettings, OptimSettings
    from dr_train.pack import Row
    from dr_train.rows import row_tensors, token_losses

    deepspeed.init_distributed(dist_backend="nccl")
    optim = OptimSettings(lr=1e-5, betas=(0.9, 0.95), weight_decay=0.0, clip=1.0)
    config = DeepSpeedSettings(zero=3, offload=True).config(optim, micro_steps=1, world=1, bf16=True)
    with deepspeed.zero.Init(config_dict_or_path=config):
        model = build(shape, "cpu", "sdpa")
    patch(model)
    checkpointing(model, offload=True)
    model.config.use_cache = False
    engine, _, _, _ = deepspeed.initialize(model=model, config=config)
    ids = torch.randint(0, model.config.vocab_size, (tokens,)).tolist()
    row = Row()
    row.input_ids, row.labels = ids, ids
    row.position_ids, row.doc_ids = list(range(tokens)), [0] * tokens
    batch = row_tensors(row, torch.device("cuda"))
    try:
        times = []
        for _ in range(steps + 1):
            start = time.perf_counter()
            loss = token_losses(engine.module, batch, kernels=True, zero3=True) / tokens
            engine.backward(loss)
            engine.step()
            torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    except torch.OutOfMemoryError:
        return {"error": "out of memory"}
    times = sorted(times[1:])
    return {
        "tokens_per_s": round(tokens / times[len(times) // 2], 1),
        "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
    }


def checkpointing(model: Any, offload: bool = False) -> None:
    """Gradient checkpointing, as the trainer turns it on (transformers below 5.20 names it
    gradient_checkpointing_enable and has no activation offload)."""
    if hasattr(model, "activation_checkpointing_enable"):
        kwargs = {"offload": True} if offload else {}
        model.activation_checkpointing_enable(
            activation_checkpointing_kwargs={"use_reentrant": False}, **kwargs
        )
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def child(spec: dict[str, Any]) -> dict[str, Any]:
    if spec.get("zero3"):
        return measure_zero3(spec["tokens"], spec["shape"], spec["steps"])
    return measure(spec["variant"], spec["tokens"], spec["shape"], spec["device"], spec["steps"])


def run_child(spec: dict[str, Any]) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True, check=False
    )
    lines = proc.stdout.strip().splitlines()
    if proc.returncode == 0 and lines:
        return json.loads(lines[-1])
    tail = (proc.stderr.strip().splitlines() or ["failed"])[-1]
    return {"error": "out of memory" if "out of memory" in proc.stderr.lower() else tail[:80]}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default=None)
    parser.add_argument("--small", action="store_true", help="tiny:qwen2 at 256 and 512 tokens (smoke run)")
    parser.add_argument("--lengths", default=None, help="Comma-separated row lengths (default 32768,131072).")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--zero3-7b", action="store_true", help="Also find the longest row for Qwen2.5-7B.")
    parser.add_argument("--markdown", default=None)
    parser.add_argument("--json", default=None, help="Also write every result here (a JSON list).")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu" and not args.small:
        sys.exit("bench_train: the full sizes need a GPU; use --device cpu --small for a smoke run")
    shape = "qwen2" if args.small else "qwen2.5-0.5b"
    lengths = [int(x) for x in (args.lengths or ("256,512" if args.small else "32768,131072")).split(",")]
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    lines = [
        f"Device: {name}; model: {shape} shape, random init, bf16 weights, AdamW, gradient checkpointing; "
        f"one row per step; median of {args.steps} steps.",
        "",
        "| tokens | plain HF tok/s / GiB | HF + Liger tok/s / GiB | dr tok/s / GiB | dr vs Liger |",
        "|---:|---|---|---|---|",
    ]
    collected = []
    for tokens in lengths:
        results: dict[str, Any] = {}
        for variant in VARIANTS:
            spec = {
                "variant": variant,
                "tokens": tokens,
                "shape": shape,
                "device": device,
                "steps": args.steps,
            }
            results[variant] = run_child(spec)
            print(tokens, variant, results[variant], file=sys.stderr, flush=True)
        cells = [
            r["error"] if "error" in r else f"{r['tokens_per_s']:.0f} / {r.get('peak_gib', '-')}"
            for r in (results[v] for v in VARIANTS)
        ]
        ratio = "-"
        if "tokens_per_s" in results["liger"] and "tokens_per_s" in results["dr"]:
            ratio = f"{results['dr']['tokens_per_s'] / results['liger']['tokens_per_s']:.2f}×"
        lines.append(f"| {tokens} | {' | '.join(cells)} | {ratio} |")
        collected.append({"tokens": tokens, "shape": shape, "results": results})
    if args.zero3_7b:
        lines += ["", "Qwen2.5-7B shape, ZeRO-3 with optimizer and parameter offload, one GPU:", ""]
        for tokens in (262144, 196608, 131072, 98304, 65536, 32768):
            result = run_child({"zero3": True, "tokens": tokens, "shape": "qwen2.5-7b", "steps": 1})
            print("zero3-7b", tokens, result, file=sys.stderr, flush=True)
            if "error" not in result:
                lines.append(
                    f"- longest row that trains: {tokens} tokens ({result['tokens_per_s']:.0f} tokens/s, "
                    f"{result['peak_gib']} GiB peak)"
                )
                break
        else:
            lines.append("- not even 32768 tokens fit")
    text = "\n".join(lines) + "\n"
    sys.stdout.write(text)
    if args.markdown:
        with open(args.markdown, "w") as fh:
            fh.write(text)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(collected, fh)


if __name__ == "__main__":
    main()
