"""Benchmark dr_kernels against PyTorch and Liger-Kernel, forward + backward, time and peak memory.

    python scripts/bench_kernels.py                 # on a GPU: the shapes of Qwen2.5-32B (docs/benchmarks.md)
    python scripts/bench_kernels.py --markdown out.md
    python scripts/bench_kernels.py --device cpu --small   # a smoke run of every case on the CPU

Each case runs in its own process, so one implementation running out of memory (PyTorch's cross-entropy
at 128K tokens) is a table entry, not the end of the run, and peak memory is measured from a clean start.
Liger-Kernel is optional (pip install liger-kernel); without it its column says so.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from typing import Any

from bench_out import emit

IMPLEMENTATIONS = ("torch", "liger", "dr")


def cases(small: bool, gpu_check: bool = False) -> list[dict[str, Any]]:
    if gpu_check:
        # the GPU check's set (scripts/gpu_check.sh): the fused loss at three lengths and the norm
        return [
            {"op": "linear_ce", "tokens": t, "hidden": 5120, "vocab": 152064} for t in (8192, 32768, 131072)
        ] + [{"op": "rms_norm", "tokens": 131072, "hidden": 5120}]
    if small:
        return [
            {"op": "linear_ce", "tokens": 256, "hidden": 64, "vocab": 1000},
            {"op": "rms_norm", "tokens": 512, "hidden": 128},
            {"op": "rope", "tokens": 256, "heads": 8, "kv_heads": 2, "head_dim": 32},
            {"op": "swiglu", "tokens": 256, "intermediate": 512},
        ]
    return [
        # Qwen2.5-32B: hidden 5120, vocabulary 152064, 40 heads (8 kv) of 128, intermediate 27648
        {"op": "linear_ce", "tokens": 32768, "hidden": 5120, "vocab": 152064},
        {"op": "linear_ce", "tokens": 131072, "hidden": 5120, "vocab": 152064},
        {"op": "rms_norm", "tokens": 131072, "hidden": 5120},
        {"op": "rope", "tokens": 32768, "heads": 40, "kv_heads": 8, "head_dim": 128},
        {"op": "swiglu", "tokens": 32768, "intermediate": 27648},
    ]


def _inputs(case: dict[str, Any], device: str, dtype: Any) -> dict[str, Any]:
    import torch

    torch.manual_seed(0)
    t = case["tokens"]

    def make(*shape: int, scale: float = 1.0) -> Any:
        return (torch.randn(*shape, device=device, dtype=torch.float32) * scale).to(dtype).requires_grad_()

    if case["op"] == "linear_ce":
        labels = torch.randint(0, case["vocab"], (t,), device=device)
        return {
            "h": make(t, case["hidden"]),
            "w": make(case["vocab"], case["hidden"], scale=0.02),
            "y": labels,
        }
    if case["op"] == "rms_norm":
        return {"x": make(t, case["hidden"]), "w": make(case["hidden"])}
    if case["op"] == "rope":
        d = case["head_dim"]
        q = torch.randn(1, t, case["heads"], d, device=device).to(dtype).transpose(1, 2).requires_grad_()
        k = torch.randn(1, t, case["kv_heads"], d, device=device).to(dtype).transpose(1, 2).requires_grad_()
        positions = torch.arange(t, device=device)[None]
        inv_freq = 1.0 / (1e6 ** (torch.arange(0, d, 2, device=device).float() / d))
        return {"q": q, "k": k, "pos": positions, "inv": inv_freq}
    return {"g": make(t, case["intermediate"]), "u": make(t, case["intermediate"])}


def _step(case: dict[str, Any], impl: str, x: dict[str, Any]) -> Any:
    """One forward + backward of `impl` on the case's inputs."""
    import torch

    op = case["op"]
    if op == "linear_ce":
        if impl == "torch":
            loss = torch.nn.functional.cross_entropy((x["h"] @ x["w"].T).float(), x["y"])
        elif impl == "liger":
            from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

            loss = LigerFusedLinearCrossEntropyLoss()(x["w"], x["h"], x["y"])
        else:
            from dr_kernels import linear_cross_entropy

            loss = linear_cross_entropy(x["h"], x["w"], x["y"])
        loss.backward()
        return loss
    if op == "rms_norm":
        if impl == "torch":
            from dr_kernels.reference import rms_norm as fn

            y = fn(x["x"], x["w"], 1e-6)
        elif impl == "liger":
            from liger_kernel.ops.rms_norm import LigerRMSNormFunction

            y = LigerRMSNormFunction.apply(x["x"], x["w"], 1e-6, 0.0, "llama", False)
        else:
            from dr_kernels.ops.rms_norm import rms_norm

            y = rms_norm(x["x"], x["w"], 1e-6)
        y.backward(torch.ones_like(y))
        return y
    if op == "rope":
        if impl == "torch":
            from dr_kernels.reference import rope as rope_reference

            q, k = rope_reference(x["q"], x["k"], x["pos"], x["inv"])
        elif impl == "liger":
            from liger_kernel.ops.rope import LigerRopeFunction

            from dr_kernels.reference import rope_cos_sin

            cos, sin = rope_cos_sin(x["pos"], x["inv"], 1.0, x["q"].dtype)
            q, k = LigerRopeFunction.apply(x["q"], x["k"], cos, sin)
        else:
            from dr_kernels.ops.rope import rope

            q, k = rope(x["q"], x["k"], x["pos"], x["inv"])
        (q.sum() + k.sum()).backward()
        return q
    if impl == "torch":
        from dr_kernels.reference import swiglu as swiglu_reference

        y = swiglu_reference(x["g"], x["u"])
    elif impl == "liger":
        from liger_kernel.ops.swiglu import LigerSiLUMulFunction

        y = LigerSiLUMulFunction.apply(x["g"], x["u"])
    else:
        from dr_kernels.ops.swiglu import swiglu

        y = swiglu(x["g"], x["u"])
    y.backward(torch.ones_like(y))
    return y


def measure(case: dict[str, Any], impl: str, device: str, repeats: int) -> dict[str, Any]:
    """Runs in a child process: median milliseconds and peak GiB of one forward + backward."""
    import torch

    if impl == "liger":
        try:
            import liger_kernel  # noqa: F401
        except ImportError:
            return {"error": "liger-kernel not installed"}
    dtype = torch.bfloat16
    cuda = device == "cuda"
    x = _inputs(case, device, dtype)
    try:
        _step(case, impl, x)  # warm-up: compilation and autotuning
        for v in x.values():
            if isinstance(v, torch.Tensor) and v.grad is not None:
                v.grad = None
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        times = []
        for _ in range(repeats):
            for v in x.values():
                if isinstance(v, torch.Tensor):
                    v.grad = None
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            _step(case, impl, x)
            if cuda:
                torch.cuda.synchronize()
            times.append((time.perf_counter() - start) * 1000)
    except torch.OutOfMemoryError:
        return {"error": "out of memory"}
    times.sort()
    result = {"ms": round(times[len(times) // 2], 3)}
    if cuda:
        result["peak_gib"] = round((torch.cuda.max_memory_allocated() - base) / 2**30, 2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default=None, help="cuda (default when present) or cpu")
    parser.add_argument("--small", action="store_true", help="Small shapes (a smoke run).")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--markdown", default=None, help="Also write the table here.")
    parser.add_argument("--json", default=None, help="Also write every result here (a JSON list).")
    parser.add_argument(
        "--gpu-check",
        action="store_true",
        help="The GPU check's cases: FLCE at 8K/32K/128K, RMSNorm at 128K.",
    )
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        spec = json.loads(args.child)
        print(json.dumps(measure(spec["case"], spec["impl"], spec["device"], spec["repeats"])))
        return
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu" and not args.small:
        sys.exit("bench_kernels: the full shapes need a GPU; use --device cpu --small for a smoke run")
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    rows = []
    for case in cases(args.small, args.gpu_check):
        results: dict[str, dict[str, Any]] = {}
        for impl in IMPLEMENTATIONS:
            spec = json.dumps({"case": case, "impl": impl, "device": device, "repeats": args.repeats})
            proc = subprocess.run(
                [sys.executable, __file__, "--child", spec], capture_output=True, text=True, check=False
            )
            lines = proc.stdout.strip().splitlines()
            results[impl] = json.loads(lines[-1]) if proc.returncode == 0 and lines else {
                "error": (proc.stderr.strip().splitlines() or ["failed"])[-1][:80]
            }  # fmt: skip
            print(case, impl, results[impl], file=sys.stderr, flush=True)
        rows.append((case, results))
    table = [
        f"Device: {name}; bf16; forward + backward; median of {args.repeats}.",
        "",
        "| op | shape | PyTorch ms / GiB | Liger ms / GiB | dr_kernels ms / GiB | dr vs Liger |",
        "|---|---|---|---|---|---|",
    ]
    for case, results in rows:
        shape = ", ".join(f"{k}={v}" for k, v in case.items() if k != "op")
        cells = []
        for impl in IMPLEMENTATIONS:
            r = results[impl]
            cells.append(r["error"] if "error" in r else f"{r['ms']:.2f} / {r.get('peak_gib', '-')}")
        ratio = "-"
        if "ms" in results["liger"] and "ms" in results["dr"]:
            ratio = f"{results['liger']['ms'] / results['dr']['ms']:.2f}× faster"
        table.append(f"| {case['op']} | {shape} | {' | '.join(cells)} | {ratio} |")
    data = [{"case": case, "results": results} for case, results in rows]
    emit("\n".join(table) + "\n", args.markdown, args.json, data)


if __name__ == "__main__":
    main()
