"""Where a `dr train sft` step's time goes on this machine, beside what its matmuls could do at best.

    python scripts/profile_train.py --model smollm2-135m        # auto: bf16 on a CPU with AMX, else fp32
    python scripts/profile_train.py --model smollm2-135m --precision fp32 --markdown profile.md
    python scripts/profile_train.py --model smollm2-135m --top 20   # also the 20 ops of most own time

One training step as the trainer runs it on the CPU (dr_kernels patched, gradient checkpointing that
keeps attention, fused AdamW, the fused linear cross-entropy on the learnt tokens), on one
packed row of --tokens tokens (real SFT examples with --data, else random ids), under torch.profiler
after --warmup steps. Every op's own CPU time goes to one part: matmuls, attention, the loss (everything
inside dr_kernels.linear_cross_entropy but its matmuls), RoPE, norms, SwiGLU and the other elementwise
work, dtype casts, the optimizer, and the data path (the row made into tensors). The roofline: torch's own
matmul throughput on this machine for each of the model's weight shapes at --tokens rows, fp32 and bf16,
and the time a step's matmul FLOPs (forward, the recompute of checkpointing, and backward; the output
layer on the learnt tokens) would take at that speed.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections import defaultdict
from typing import Any

from bench_out import emit

# aten ops by part (own time); ops named in none fall under "other"
PARTS = {
    "matmul": ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear", "mkldnn", "aten::_mm"),
    "attention": ("scaled_dot_product", "flash_attention", "_efficient_attention", "aten::_softmax"),
    "cast": ("aten::to", "aten::_to_copy", "aten::copy_"),
    "optimizer": ("Optimizer.step", "aten::_fused_adam", "aten::_foreach", "aten::addcdiv", "aten::lerp",
                  "aten::sqrt"),
    "elementwise": ("aten::mul", "aten::add", "aten::sub", "aten::div", "aten::neg", "aten::cat", "aten::pow",
                    "aten::rsqrt", "aten::mean", "aten::silu", "aten::sigmoid", "aten::cos", "aten::sin",
                    "aten::exp", "aten::sum", "aten::fill_", "aten::zero_", "aten::empty", "aten::where",
                    "aten::clone", "aten::contiguous", "aten::slice", "aten::view", "aten::transpose"),
}  # fmt: skip


def part_of(name: str) -> str:
    for part, prefixes in PARTS.items():
        if any(name.startswith(p) or p in name for p in prefixes):
            return part
    return "other"


def row_from(args: argparse.Namespace, tokenizer: Any) -> Any:
    """One packed row of about args.tokens tokens: real examples one after another, or random ids."""
    from dr_train.pack import Row

    row = Row()
    if args.data:
        from dr_core.records import Example
        from dr_train.chat import tokenize_example

        with open(args.data) as fh:
            for line in fh:
                tokenized = tokenize_example(tokenizer, Example.model_validate_json(line))
                room = args.tokens - len(row.input_ids)
                if room <= 0:
                    break
                ids, labels = tokenized.input_ids[:room], tokenized.labels[:room]
                doc = len(set(row.doc_ids))
                row.input_ids += ids
                row.labels += labels
                row.position_ids += list(range(len(ids)))
                row.doc_ids += [doc] * len(ids)
        return row
    import torch

    drawn = torch.randint(0, tokenizer.vocab_size, (args.tokens,), generator=torch.Generator().manual_seed(0))
    row.input_ids = row.labels = drawn.tolist()
    row.position_ids, row.doc_ids = list(range(args.tokens)), [0] * args.tokens
    return row


def roofline(model: Any, tokens: int, learnt: int, dtype: Any, recompute: bool) -> tuple[float, float]:
    """(seconds the step's matmuls take at this machine's measured speed, that speed in GFLOP/s).

    Each layer's matmuls run forward, again when checkpointing recomputes the layer, and twice backward
    (inputs and weights); the output layer runs three times on the `learnt` tokens alone."""
    import torch

    shapes: dict[tuple[int, int, int], int] = defaultdict(int)  # (rows, in, out): matmuls of that shape
    layer_passes = 4 if recompute else 3
    for module in model.model.modules():
        if isinstance(module, torch.nn.Linear):
            shapes[(tokens, module.in_features, module.out_features)] += layer_passes
    head = model.get_output_embeddings().weight
    if learnt:
        shapes[(learnt, head.shape[1], head.shape[0])] += 3
    total_seconds = 0.0
    total_flops = 0.0
    for (m, k, n), count in shapes.items():
        a = torch.randn(m, k, dtype=dtype)
        b = torch.randn(k, n, dtype=dtype)
        torch.mm(a, b)
        runs = 3
        started = time.perf_counter()
        for _ in range(runs):
            torch.mm(a, b)
        seconds = (time.perf_counter() - started) / runs
        total_seconds += seconds * count
        total_flops += 2 * m * k * n * count
    return total_seconds, total_flops / total_seconds / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument(
        "--data", default=None, help="SFT examples to fill the row with (default: random ids)."
    )
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--warmup", type=int, default=3, help="Steps run before the measured one.")
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    parser.add_argument("--no-kernels", action="store_true")
    parser.add_argument("--no-grad-ckpt", action="store_true")
    parser.add_argument("--markdown", default=None)
    parser.add_argument("--top", type=int, default=0, help="Also list the N ops of most own CPU time.")
    args = parser.parse_args()

    import torch
    from torch.profiler import ProfilerActivity, profile, record_function
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dr_core.models import resolve
    from dr_train.chat import IGNORE
    from dr_train.cpu import checkpoint_kwargs
    from dr_train.recipes.common import Precision, resolve_precision
    from dr_train.rows import row_tensors, token_losses

    folder = resolve(args.model)
    precision = resolve_precision(Precision(args.precision))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="sdpa")
    kernels = not args.no_kernels
    if kernels:
        from dr_kernels import patch

        patch(model)
    if not args.no_grad_ckpt:
        model.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs=checkpoint_kwargs(torch.device("cpu"))
        )
    model.config.use_cache = False
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)  # the trainer's, on the CPU
    row = row_from(args, tokenizer)
    bf16 = precision == Precision.bf16

    def step() -> None:
        with record_function("dr.data"):
            batch = row_tensors(row, torch.device("cpu"))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = token_losses(model, batch, kernels=kernels, zero3=False) / len(row.input_ids)
        loss.backward()
        with record_function("dr.optimizer"):
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        step()
    started = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    wall = time.perf_counter() - started
    started = time.perf_counter()
    step()
    plain = time.perf_counter() - started  # the same step without the profiler's overhead

    own: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        own[part_of(event.key)] += event.self_cpu_time_total / 1e6
    # the ranges we marked: their children's time is already counted by op above; report them on their own
    marked = {e.key: e.cpu_time_total / 1e6 for e in prof.key_averages() if e.key.startswith("dr.")}
    total = sum(own.values())
    dtype = torch.bfloat16 if bf16 else torch.float32
    # the kernels' loss runs the output layer on the learnt tokens alone, plain Hugging Face on every token
    learnt = sum(1 for x in row.labels[1:] if x != IGNORE) if kernels else len(row.input_ids)
    floor, gflops = roofline(model, len(row.input_ids), learnt, dtype, not args.no_grad_ckpt)
    threads = torch.get_num_threads()
    lines = [
        f"Device: {platform.machine()} CPU, {os.cpu_count()} cores ({threads} torch threads); {args.model}; "
        f"one "
        f"row of {len(row.input_ids)} tokens; {precision}; kernels {'on' if kernels else 'off'}; "
        f"checkpointing {'off' if args.no_grad_ckpt else 'on'}. Step: {plain:.1f} s "
        f"({len(row.input_ids) / plain:.0f} tokens/s); {wall:.1f} s under the profiler.",
        "",
        "| part | own CPU s | share |",
        "|---|---:|---:|",
    ]
    for part, seconds in sorted(own.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {part} | {seconds:.2f} | {seconds / total:.0%} |")
    lines += [
        "",
        f"Marked ranges (inclusive): data path {marked.get('dr.data', 0):.3f} s, "
        f"optimizer (clip + AdamW) {marked.get('dr.optimizer', 0):.2f} s.",
        f"Roofline: torch.mm on this machine runs the model's weight shapes at {gflops:.0f} GFLOP/s in "
        f"{str(dtype).removeprefix('torch.')}; the step's matmuls (forward, "
        f"{'' if args.no_grad_ckpt else 'recompute, '}backward; the output layer on {learnt} tokens) would "
        f"take {floor:.1f} s at that speed, {floor / plain:.0%} of the measured step.",
    ]
    if args.top:
        events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[: args.top]
        lines += ["", "| op | part | calls | own CPU s |", "|---|---|---:|---:|"]
        lines += [
            f"| {e.key} | {part_of(e.key)} | {e.count} | {e.self_cpu_time_total / 1e6:.2f} |" for e in events
        ]
    emit("\n".join(lines) + "\n", args.markdown)


if __name__ == "__main__":
    main()
