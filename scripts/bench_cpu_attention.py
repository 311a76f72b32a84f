"""CPU packed attention, forward + backward: dr_kernels' one autograd node against autograd on each window.

    python scripts/bench_cpu_attention.py [--repeats 7] [--threads N]

One layer of SmolLM2-135M's attention (9 query heads, 3 key/value heads of 64) on packed rows as CPU
training makes them: the documents' lengths, then a pad document up to a multiple of 64 tokens. Both
sides run PyTorch's CPU flash attention on the same windows (each document rounded up to 64 tokens); they
differ in the backward pass. `packed_attention` (dr_kernels) is one autograd node whose backward writes
each document's gradients into the row's. The other side is the same calls left to autograd, as
dr_kernels did before: each slice's backward zero-pads a whole row of gradient and they are summed. Both
run interleaved in one process, fp32 and bf16; medians of --repeats. Markdown on stdout.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from typing import Any

ROWS = {
    "one document of 2,553 tokens (the bench's rows)": [2553],
    "two documents, 2,050 + 2,046": [2050, 2046],
    "three documents, 1,200 + 900 + 1,500": [1200, 900, 1500],
}


def through_autograd(q: Any, k: Any, v: Any, cu: list[int]) -> Any:
    """dr_kernels' windows and flash attention calls, with autograd's backward of the slices and repeat."""
    import torch.nn.functional as F

    from dr_kernels.attention import _cpu_windows, _window

    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    out = q.new_empty(q.shape)
    for start, end, stop in _cpu_windows(tuple(cu)):
        qw, kw, vw = (_window(x, start, stop) for x in (q, k, v))
        out[:, :, start:end] = F.scaled_dot_product_attention(qw, kw, vw, is_causal=True)[:, :, : end - start]
    return out


def medians(q: Any, k: Any, v: Any, cu: Any, repeats: int) -> tuple[float, float]:
    """Median ms of forward + backward, autograd on each window and dr_kernels' node, run in turn."""
    import torch

    from dr_kernels.attention import packed_attention

    grad = torch.randn(q.shape, dtype=q.dtype)
    times: list[list[float]] = [[], []]
    for repeat in range(repeats + 1):
        for side in (0, 1):
            started = time.perf_counter()
            out = through_autograd(q, k, v, cu.tolist()) if side == 0 else packed_attention(q, k, v, cu)
            torch.autograd.grad(out, (q, k, v), grad)
            if repeat:  # the first round warms up
                times[side].append(time.perf_counter() - started)
    before, after = (statistics.median(t) * 1e3 for t in times)
    return before, after


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    args = parser.parse_args()

    import torch

    from dr_kernels.attention import cpu_length, cu_seqlens_of

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    lines = [
        f"Device: {platform.machine()} CPU, {torch.get_num_threads()} torch threads, torch "
        f"{torch.__version__}; one attention layer (9 / 3 heads of 64), forward + backward, median of "
        f"{args.repeats}.",
        "",
        "| row | dtype | autograd on each window, ms | one node (dr_kernels), ms | saved |",
        "|---|---|---:|---:|---:|",
    ]
    for name, docs in ROWS.items():
        total = cpu_length(sum(docs))
        lengths = docs + ([total - sum(docs)] if total > sum(docs) else [])  # the row's pad document
        cu = cu_seqlens_of(lengths)
        for dtype in (torch.float32, torch.bfloat16):
            # Hugging Face's layout: (1, tokens, heads, dim) seen as (1, heads, tokens, dim)
            q, k, v = (
                torch.randn(1, total, heads, 64, dtype=dtype).transpose(1, 2).requires_grad_()
                for heads in (9, 3, 3)
            )
            before, after = medians(q, k, v, cu, args.repeats)
            short = str(dtype).removeprefix("torch.")
            lines.append(f"| {name} | {short} | {before:.1f} | {after:.1f} | {1 - after / before:.1%} |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
