"""Training throughput and memory: plain Hugging Face, Hugging Face + Liger-Kernel, and dr train's path;
on the CPU, `dr train sft` in its configurations against TRL's SFTTrainer on a real model.

    python scripts/bench_train.py                         # one GPU: Qwen2.5-0.5B shape at 32K and 128K
    python scripts/bench_train.py --zero3-7b              # + the longest row of a 7B with ZeRO-3 offload
    python scripts/bench_train.py --device cpu --small    # a smoke run of every variant on the CPU
    python scripts/bench_train.py --device cpu --model smollm2-135m   # dr train sft vs TRL, this CPU

The --model run: the oracle-trajectory SFT examples of a 300-entity world (made here with dr data unless
--data is given), every configuration in its own process (--only picks some), interleaved over --rounds;
tokens/s over the steps after --warmup-steps (1 by default), peak RSS of the process. TRL (pip install
trl==1.16.0; a benchmark-only extra, not a dependency of dr) trains on the very token ids and loss mask
dr trains on (dr_train.chat), packed and padding-free, with the same rows per step, learning rate and
precision.

Every variant trains the same randomly initialized model (bf16 weights, AdamW, gradient checkpointing) on
one row of T tokens, in its own process so an out-of-memory is a table entry. "dr" is exactly what
`dr train sft` runs: dr_kernels.patch (packed attention, fused norms, RoPE, SwiGLU) and the fused linear
cross-entropy on the hidden states. Liger-Kernel is optional (pip install liger-kernel).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

from bench_out import emit

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
    from dr_train.backend import DeepSpeedSettings, OptimSettings
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


# TRL's rows: (name, bf16, gradient checkpointing)
TRL_CONFIGS = (
    ("TRL SFTTrainer, bf16, checkpointing", True, True),
    ("TRL SFTTrainer, fp32, checkpointing", False, True),
)


def dr_configs() -> list[tuple[str, list[str], bool]]:
    """(name, dr train sft flags, bf16) of each dr configuration; auto is named for what it is here."""
    from dr_train.recipes.common import Precision, resolve_precision

    auto = resolve_precision(Precision.auto)
    return [
        (f"dr, auto ({auto} here), kernels, checkpointing", [], auto == Precision.bf16),
        ("dr, bf16, --no-kernels", ["--precision", "bf16", "--no-kernels"], True),
        ("dr, bf16, --no-grad-ckpt", ["--precision", "bf16", "--no-grad-ckpt"], True),
        ("dr, fp32, kernels, checkpointing", ["--precision", "fp32"], False),
        ("dr, fp32, --no-kernels", ["--precision", "fp32", "--no-kernels"], False),
        ("dr, fp32, --no-grad-ckpt", ["--precision", "fp32", "--no-grad-ckpt"], False),
    ]


def sft_data(folder: Any) -> Any:
    """The oracle-trajectory SFT examples of a 300-entity world, made with dr's own commands."""
    from pathlib import Path

    folder = Path(folder)
    dr = [sys.executable, "-m", "dr_cli.main"]
    quiet: dict[str, Any] = {"stdout": subprocess.DEVNULL, "check": True}
    subprocess.run([*dr, "data", "world", "-o", folder / "world", "--entities", "300", "--tasks", "400",
                    "--max-hops", "2"], **quiet)  # fmt: skip
    subprocess.run([*dr, "data", "index", folder / "world" / "corpus.jsonl", "-i", folder / "index"], **quiet)
    train = folder / "world" / "train.jsonl"
    subprocess.run([*dr, "data", "trajectories", train, "--index", folder / "index", "--teacher", "oracle",
                    "-o", folder / "trajectories.jsonl"], **quiet)  # fmt: skip
    subprocess.run([*dr, "data", "sft", folder / "trajectories.jsonl", "-o", folder / "sft.jsonl"], **quiet)
    return folder / "sft.jsonl"


def timed_process(command: list[str], env: dict[str, str] | None = None) -> tuple[int, float, str]:
    """(exit code, peak RSS in GiB, stderr's tail) of one child process, its own peak alone (wait4)."""
    import os
    import tempfile

    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        tail = err.read().decode(errors="replace")[-600:]
    return proc.returncode, usage.ru_maxrss / 2**20, tail


def run_dr(flags: list[str], args: argparse.Namespace, data: Any, out: Any) -> dict[str, Any]:
    import shutil
    from pathlib import Path

    out = Path(out)
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "dr_cli.main", "train", "sft", str(data), "--model", args.model,
               "-o", str(out), "--max-len", str(args.max_len), "--tokens-per-step", str(args.tokens_per_step),
               "--max-steps", str(args.steps), "--lr", "1e-5", "--warmup", "0", "--seed", "0",
               *flags]  # fmt: skip
    code, peak, tail = timed_process(command)
    metrics_file = out / "metrics.jsonl"
    metrics = [json.loads(line) for line in metrics_file.read_text().splitlines()] if code == 0 else []
    shutil.rmtree(out, ignore_errors=True)  # the trained model: 0.5 GB a run for SmolLM2
    if code != 0:
        return {"error": tail.strip().splitlines()[-1][:100] if tail.strip() else f"exit {code}"}
    later = metrics[args.warmup_steps :]  # the first steps warm up
    tokens = [m["tokens"] for m in later]  # each step's own
    seconds = sum(t / m["tokens_per_s"] for t, m in zip(tokens, later, strict=True))
    return {"tokens_per_s": round(sum(tokens) / seconds, 1), "peak_gib": round(peak, 2)}


def run_trl(bf16: bool, ckpt: bool, args: argparse.Namespace, data: Any, out: Any) -> dict[str, Any]:
    import os

    rows = max(1, args.tokens_per_step // args.max_len)
    spec = {"trl": True, "bf16": bf16, "ckpt": ckpt, "model": args.model, "data": str(data), "out": str(out),
            "max_len": args.max_len, "rows": rows, "steps": args.steps,
            "warmup": args.warmup_steps}  # fmt: skip
    env = dict(os.environ)
    if args.trl_path:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (args.trl_path, env.get("PYTHONPATH")) if p)
    result_file = f"{out}.json"
    code, peak, tail = timed_process(
        [sys.executable, __file__, "--child", json.dumps({**spec, "result": result_file})], env
    )
    if code != 0:
        last = tail.strip().splitlines()[-1] if tail.strip() else f"exit {code}"
        return {"error": "trl not installed" if "No module named 'trl'" in tail else last[:100]}
    with open(result_file) as fh:
        result = json.load(fh)
    return {**result, "peak_gib": round(peak, 2)}


def measure_trl(spec: dict[str, Any]) -> dict[str, Any]:
    """Runs in a child process: TRL's SFTTrainer on dr's token ids and loss mask."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from dr_core.models import resolve
    from dr_core.records import Example
    from dr_train.chat import IGNORE, tokenize_example

    folder = resolve(spec["model"])
    tokenizer = AutoTokenizer.from_pretrained(folder)
    rows = []
    with open(spec["data"]) as fh:
        for line in fh:
            tokenized = tokenize_example(tokenizer, Example.model_validate_json(line))
            if len(tokenized.input_ids) <= spec["max_len"]:  # dr's --long drop
                rows.append({"input_ids": tokenized.input_ids,
                             "completion_mask": [int(x != IGNORE) for x in tokenized.labels]})  # fmt: skip
    import pyarrow

    # a fingerprint of our own: hashing the table fails on this dill and pyarrow (MonthDayNano)
    dataset = Dataset(pyarrow.Table.from_pylist(rows), fingerprint="bench-train")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    steps: list[tuple[float, int]] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, *_: Any, **__: Any) -> None:
            self.started = time.perf_counter()

        def on_step_end(self, *_: Any, **__: Any) -> None:
            steps.append((time.perf_counter() - self.started, counted[-1] if counted else 0))

    counted: list[int] = []

    class Counting(SFTTrainer):
        def training_step(self, model: Any, inputs: Any, *rest: Any, **kwargs: Any) -> Any:
            counted.append(int(inputs["input_ids"].numel()))
            return super().training_step(model, inputs, *rest, **kwargs)

    config = SFTConfig(
        output_dir=spec["out"], max_length=spec["max_len"], packing=True, padding_free=True,
        completion_only_loss=True, per_device_train_batch_size=spec["rows"], gradient_accumulation_steps=1,
        gradient_checkpointing=spec["ckpt"], gradient_checkpointing_kwargs={"use_reentrant": False},
        bf16=spec["bf16"], use_cpu=True, max_steps=spec["steps"], learning_rate=1e-5, warmup_steps=0,
        lr_scheduler_type="cosine", weight_decay=0.0, max_grad_norm=1.0, logging_steps=1, report_to=[],
        save_strategy="no", seed=0, dataloader_num_workers=0,
    )  # fmt: skip
    trainer = Counting(
        model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
        callbacks=[Timer()],
    )  # fmt: skip
    trainer.train()
    later = steps[spec["warmup"] :]
    return {"tokens_per_s": round(sum(t for _, t in later) / sum(s for s, _ in later), 1)}


def run_models(args: argparse.Namespace) -> None:
    """dr train sft's configurations and TRL's SFTTrainer on one real model, interleaved over rounds."""
    import platform
    import statistics
    import tempfile
    from pathlib import Path

    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    data = Path(args.data) if args.data else sft_data(work / "data")
    # how each runs: ("dr", bf16, flags) or ("trl", bf16, checkpointing)
    configs: list[tuple[str, Any]] = [(name, ("dr", bf16, flags)) for name, flags, bf16 in dr_configs()]
    if not args.no_trl:
        configs += [(name, ("trl", bf16, ckpt)) for name, bf16, ckpt in TRL_CONFIGS]
    if args.only:
        configs = [(name, how) for name, how in configs if any(part in name for part in args.only)]
    results: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in configs}
    for round_ in range(args.rounds):
        for index, (name, how) in enumerate(configs):
            out = work / f"run-{round_}-{index}"
            result = (
                run_dr(how[2], args, data, out)
                if how[0] == "dr"
                else run_trl(how[1], how[2], args, data, out)
            )
            results[name].append(result)
            print(round_, name, result, file=sys.stderr, flush=True)

    def median(name: str, key: str) -> float | None:
        values = [r[key] for r in results.get(name, []) if key in r]
        return statistics.median(values) if values else None

    trl = {True: median(TRL_CONFIGS[0][0], "tokens_per_s"), False: median(TRL_CONFIGS[1][0], "tokens_per_s")}
    lines = [
        f"Device: {platform.machine()} CPU, {os.cpu_count()} cores; model {args.model}; {args.steps} steps "
        f"of "
        f"{args.tokens_per_step // args.max_len} row(s) of up to {args.max_len} tokens (one example per row: "
        f"they do not pack two to a row); tokens/s over steps {args.warmup_steps + 1}-{args.steps}, "
        f"median of {args.rounds} round(s); peak RSS of the whole process.",
        "",
        "| configuration | tokens/s | peak RSS GiB | vs TRL, same precision |",
        "|---|---:|---:|---:|",
    ]
    for name, how in configs:
        errors = [r["error"] for r in results[name] if "error" in r]
        speed, peak = median(name, "tokens_per_s"), median(name, "peak_gib")
        if speed is None:
            lines.append(f"| {name} | {errors[0] if errors else '-'} | | |")
            continue
        base = trl[how[1]]
        ratio = f"{speed / base:.2f}×" if base and how[0] == "dr" else ""
        lines.append(f"| {name} | {speed:.0f} | {peak:.2f} | {ratio} |")
    text = "\n".join(lines) + "\n"
    sys.stdout.write(text)
    if args.markdown:
        Path(args.markdown).write_text(text)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


def child(spec: dict[str, Any]) -> dict[str, Any]:
    if spec.get("trl"):
        result = measure_trl(spec)
        with open(spec["result"], "w") as fh:
            json.dump(result, fh)
        return result
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
    parser.add_argument("--model", default=None, help="A real model (a folder or smollm2-135m): dr vs TRL.")
    parser.add_argument("--data", default=None, help="SFT examples for --model (default: made here).")
    parser.add_argument("--max-len", type=int, default=4096)
    parser.add_argument("--tokens-per-step", type=int, default=8192)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-trl", action="store_true")
    parser.add_argument(
        "--warmup-steps", type=int, default=1, help="--model: steps left out of tokens/s (at least 1)."
    )
    parser.add_argument(
        "--only", action="append", default=None, help="--model: the configurations naming this (repeatable)."
    )
    parser.add_argument(
        "--trl-path", default=None, help="A folder to import TRL from (pip install --target)."
    )
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.model and not 1 <= args.warmup_steps < args.steps:
        parser.error(f"--warmup-steps {args.warmup_steps}: at least 1 and fewer than --steps {args.steps}")
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    if args.model:
        run_models(args)
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
    emit("\n".join(lines) + "\n", args.markdown, args.json, collected)


if __name__ == "__main__":
    main()
