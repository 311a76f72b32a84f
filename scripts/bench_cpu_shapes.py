"""What a new sequence length costs PyTorch's CPU kernels, and what rounding lengths to a multiple saves.

    python scripts/bench_cpu_shapes.py [--passes 5] [--lengths 20] [--multiple 64]

PyTorch's CPU kernels for bf16 (oneDNN's matmuls, the brgemm micro-kernels of the flash attention) are
compiled for a shape on first use and kept in a cache. Training on packed rows meets a new row length and
new document lengths nearly every step. For each op (bf16 causal SDPA with SmolLM2-135M's 9 heads of 64;
a pair of bf16-autocast linears of its MLP, 576 -> 1536 -> 576; forward + backward) this runs --passes
passes of --lengths fresh random lengths (300-3,000 tokens), as raw lengths and rounded up to --multiple,
each in a fresh process. It reports the seconds of the first and the last pass and what the heap holds
after each (glibc's in-use bytes), as a markdown table on stdout. Linux with glibc only.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from typing import Any


def child(op: str, multiple: int, passes: int, count: int) -> dict[str, Any]:
    import ctypes
    import random
    import time

    import torch
    import torch.nn.functional as F

    libc = ctypes.CDLL("libc.so.6")

    fields = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()

    class Mallinfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in fields]

    libc.mallinfo2.restype = Mallinfo2

    def heap_mib() -> float:
        return libc.mallinfo2().uordblks / 2**20

    torch.manual_seed(0)
    draw = random.Random(0)
    w1 = torch.randn(1536, 576, requires_grad=True)
    w2 = torch.randn(576, 1536, requires_grad=True)

    def run(length: int) -> float:
        n = -(-length // multiple) * multiple
        if op == "sdpa":
            q, k, v = (torch.randn(1, 9, n, 64, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
            started = time.perf_counter()
            F.scaled_dot_product_attention(q, k, v, is_causal=True)[:, :, :length].sum().backward()
        else:
            x = torch.randn(n, 576, requires_grad=True)
            started = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                y = F.linear(F.linear(x, w1), w2)
            y[:length].float().sum().backward()
        return time.perf_counter() - started

    run(64)  # libraries loaded, thread pool up
    before = heap_mib()
    seconds, heap = [], []
    for _ in range(passes):
        lengths = [draw.randint(300, 3000) for _ in range(count)]
        seconds.append(round(sum(run(n) for n in lengths), 3))
        heap.append(round(heap_mib() - before, 1))
    return {"op": op, "multiple": multiple, "seconds": seconds, "heap_mib": heap}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--passes", type=int, default=5)
    parser.add_argument("--lengths", type=int, default=20, help="fresh random lengths per pass")
    parser.add_argument("--multiple", type=int, default=64)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.passes < 2 or args.lengths < 1 or args.multiple < 1:
        parser.error("--passes must be at least 2, --lengths and --multiple at least 1")
    if args.child:
        print(json.dumps(child(**json.loads(args.child))))
        return
    rows = []
    for op in ("sdpa", "linear"):
        for multiple in (1, args.multiple):
            spec = {"op": op, "multiple": multiple, "passes": args.passes, "count": args.lengths}
            done = subprocess.run(
                [sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True
            )
            if done.returncode:
                sys.exit(f"{op} ×{multiple} failed:\n{done.stderr[-2000:]}")
            rows.append(json.loads(done.stdout.splitlines()[-1]))
            print(rows[-1], file=sys.stderr, flush=True)
    names = {"sdpa": "bf16 causal SDPA, 9 × 64 heads", "linear": "bf16 linears 576 → 1536 → 576"}
    out = [
        f"{args.passes} passes of {args.lengths} fresh random lengths (300-3,000 tokens), forward + "
        "backward; heap: glibc in-use MiB added since the start",
        "",
        "| op | lengths | pass 1 s | last pass s | heap after pass 1 | heap after last pass |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        rounding = "as drawn" if row["multiple"] == 1 else f"rounded up to ×{row['multiple']}"
        out.append(
            f"| {names[row['op']]} | {rounding} | {row['seconds'][0]} | {row['seconds'][-1]} | "
            f"{row['heap_mib'][0]} | {row['heap_mib'][-1]} |"
        )
    sys.stdout.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
