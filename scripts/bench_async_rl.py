"""Asynchronous RL against synchronous: `dr train rl --max-staleness K`, same seeds, same tasks, same steps.

    python scripts/bench_async_rl.py                        # SmolLM2-135M-Instruct; K = 0, 1, 2 sharing the
                                                            # cores, K = 0, 1 with engine and trainer pinned
    python scripts/bench_async_rl.py --policy taught        # the test suite's tiny taught world instead
    python scripts/bench_async_rl.py --ks 0,1 --no-pinned --steps 4 --markdown --json out.json

The policy researches world questions (`dr data world`, 1-2 hops, indexed with `dr data index`) through vLLM
(the CPU build here), the agent under the main job's budgets (8 model calls, 384 tokens a call, 3 search
results). GRPO as the main job runs it (lr 2e-5, temperature 1), with --train-flat-groups so that every step
updates: SmolLM2 untaught scores about 0, and a step without an update would have nothing to overlap.
`--policy taught`: the tiny model of the test suite that learnt two world tasks' oracle trajectories (right
about half of the time), run as its tests run it (6 model calls, 8000 tokens, lr 5e-5, temperature 0.9).

Shared: `dr train rl` starts its own engine, and the engine and the trainer share every core. Pinned: the
engine runs on core 0 (`VLLM_CPU_OMP_THREADS_BIND=0`) and the trainer on core 1 (`taskset -c 1`, one torch
thread), which stands in for separate hardware. Reported per run: wall time; medians over the steps after the
first of the trainer's wait for rollouts (rollout_s), the update, the sync, and the engine's idle time (no
request in flight); reward per step; tokens by version lag; groups dropped as too stale.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DR = [sys.executable, "-m", "dr_cli.main"]


def dr(*args: object, env: dict[str, str] | None = None) -> None:
    subprocess.run([*DR, *map(str, args)], check=True, capture_output=True, env=env)


def world(root: Path, policy: str, seed: int) -> tuple[Path, Path, Path]:
    """(policy folder, tasks, index) for the benchmark."""
    if policy == "taught":
        sys.path.insert(0, str(ROOT / "tests"))
        from support.taught import taught_world

        tasks = taught_world(root, model="tiny:qwen2-h64", unsure=True)
        return root / "sft", tasks, root / "index"
    from dr_core.models import resolve

    dr("data", "world", "-o", root / "world", "--entities", "120", "--tasks", "150", "--max-hops", "2",
       "--report-tasks", "0", "--seed", seed)  # fmt: skip
    dr("data", "index", root / "world" / "corpus.jsonl", "-i", root / "index")
    return Path(resolve(policy)), root / "world" / "train.jsonl", root / "index"


def train_args(
    args: argparse.Namespace, model: Path, tasks: Path, index: Path, out: Path, k: int
) -> list[str]:
    # the taught world: as its tests run it (the agent's budgets it was taught under, lr 5e-5)
    taught = args.policy == "taught"
    return [
        "train", "rl", str(tasks), "--model", str(model), "--index", str(index), "-o", str(out),
        "--steps", str(args.steps), "--tasks-per-step", str(args.tasks_per_step), "--group", str(args.group),
        "--max-steps", "6" if taught else "8", "--max-tokens", "8000" if taught else str(args.agent_tokens),
        "--concurrency", str(args.concurrency), "--lr", "5e-5" if taught else "2e-5",
        "--temperature", "0.9" if taught else "1.0", "--seed", str(args.seed), "--train-flat-groups",
        "--engine", "vllm", "--max-staleness", str(k),
    ]  # fmt: skip


def pinned_engine(model: Path, folder: Path, log: Path):
    """A vLLM engine on core 0, started from the policy as the trainer's sync writes it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dr_core.serving import managed
    from dr_train.rl.engines import write_engine_weights

    weights = write_engine_weights(
        AutoModelForCausalLM.from_pretrained(model, dtype="float32"),
        AutoTokenizer.from_pretrained(model),
        folder,
    )
    server, _ = managed(
        str(weights), "vllm", log, what="the pinned engine", env={"VLLM_SERVER_DEV_MODE": "1"},
        served_model_name="policy", dtype="float32", cpu_threads=1,
    )  # fmt: skip
    return server.__enter__()


def one_run(
    args: argparse.Namespace, model: Path, tasks: Path, index: Path, root: Path, k: int, pinned: bool
):
    name = f"k{k}-{'pinned' if pinned else 'shared'}"
    out = root / name
    command = [*DR, *train_args(args, model, tasks, index, out, k)]
    env = dict(os.environ)
    if args.policy != "taught":  # the main job's agent
        env.update(DR_AGENT_MAX_OUTPUT_TOKENS="384", DR_SEARCH_TOP_K="3")
    server = None
    if pinned:
        server = pinned_engine(model, root / f"{name}-weights", root / f"{name}-engine.log")
        command = ["taskset", "-c", "1", *command, "--rollout-url", server.url]
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    started = time.perf_counter()
    try:
        result = subprocess.run(command, capture_output=True, env=env)
    finally:
        if server is not None:
            server.stop()
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{name} failed:\n{result.stderr.decode()[-3000:]}")
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    later = metrics[1:] or metrics

    def median(key: str) -> float | None:
        values = [m[key] for m in later if m.get(key) is not None]
        return round(statistics.median(values), 1) if values else None

    lags: dict[str, int] = {}
    for m in metrics:
        for lag, count in (m.get("staleness") or {}).items():
            lags[lag] = lags.get(lag, 0) + count
    row = {
        "run": name,
        "k": k,
        "pinned": pinned,
        "steps": len(metrics),
        "wall_s": round(wall, 1),
        "step_s": median("step_s"),
        "rollout_s": median("rollout_s"),
        "update_s": median("update_s"),
        "sync_s": median("sync_s"),
        "engine_idle_s": median("engine_idle_s"),
        "rewards": [m["reward_mean"] for m in metrics],
        "staleness": lags,
        "stale_groups": sum(m.get("stale_groups", 0) for m in metrics),
    }
    print(json.dumps(row), file=sys.stderr, flush=True)
    shutil.rmtree(out, ignore_errors=True)  # checkpoints: not needed once measured
    return row


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--policy", default="smollm2-135m", help="A named model, a folder, or taught.")
    parser.add_argument("--ks", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1, 2])
    parser.add_argument("--pinned-ks", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1])
    parser.add_argument("--no-pinned", action="store_true")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--tasks-per-step", type=int, default=2)
    parser.add_argument("--group", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--agent-tokens", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model, tasks, index = world(root, args.policy, args.seed)
        plan = [(k, False) for k in args.ks] + ([] if args.no_pinned else [(k, True) for k in args.pinned_ks])
        for k, pinned in plan:
            rows.append(one_run(args, model, tasks, index, root, k, pinned))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    if args.markdown:
        print("| run | wall s | step s | wait for rollouts s | update s | sync s | engine idle s "
              "| reward per step | tokens by lag | stale groups |")  # fmt: skip
        print("|---|---:|---:|---:|---:|---:|---:|---|---|---:|")
        for r in rows:
            rewards = ", ".join("–" if x is None else f"{x:.2f}" for x in r["rewards"])
            lags = ", ".join(f"{lag}: {n}" for lag, n in sorted(r["staleness"].items())) or "–"
            cells = [r["run"], r["wall_s"], r["step_s"], r["rollout_s"], r["update_s"], r["sync_s"],
                     r["engine_idle_s"], rewards, lags, r["stale_groups"]]  # fmt: skip
            print("| " + " | ".join(str(c) for c in cells) + " |")


if __name__ == "__main__":
    main()
