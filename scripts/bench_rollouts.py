"""Rollout generation: vLLM against Hugging Face `generate`, same model, same prompts, in one run.

    python scripts/bench_rollouts.py                         # SmolLM2-135M-Instruct, concurrency 1 and 16
    python scripts/bench_rollouts.py --rl                    # also dr train rl step times, hf vs vllm
    python scripts/bench_rollouts.py --rl --no-generation    # only the RL step times
    python scripts/bench_rollouts.py --json out.json --markdown

Generation: every prompt is a research question in the model's chat template; both engines generate
exactly --max-tokens tokens per prompt (end-of-text ignored), `concurrency` requests at a time (vLLM: one
server with continuous batching; HF: `dr train rl`'s in-process policy, one `generate` per thread, as its
rollouts run). Reported: generated tokens per second of wall time.

--rl: the tiny taught world of the test suite (a head-size-64 model that researches two world tasks as the
oracle did and answers right about half of the time), `dr train rl` for --rl-steps steps of 2 tasks × 8
samples with --engine hf and with --engine vllm, at each --concurrency (rollouts in flight); reported: the
median RL step time and rollout time after the first step.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUESTIONS = [
    "Which river flows through the city where the founder of Korrin Works was born?",
    "Summarize what is known about the history of the Velmora bridge, with sources.",
    "Who employs Aldo Verin, and when was that company founded?",
    "Compare the populations of Ostrand and Quillby over the last century.",
]


def prompts(tokenizer, count: int) -> list[list[int]]:
    out = []
    for i in range(count):
        messages = [
            {
                "role": "system",
                "content": "You are a research agent. Plan, search, open sources, then answer.",
            },
            {"role": "user", "content": f"{QUESTIONS[i % len(QUESTIONS)]} (case {i})"},
        ]
        ids = tokenizer.apply_chat_template(
            messages, tokenize=True, add_generation_prompt=True, return_dict=False
        )
        out.append(list(ids["input_ids"] if hasattr(ids, "input_ids") else ids))
    return out


def bench_hf(model_dir: str, batch: list[list[int]], max_tokens: int, concurrency: int) -> float:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()

    def one(prompt: list[int]) -> int:
        with torch.no_grad():
            out = model.generate(
                input_ids=torch.tensor([prompt]),
                attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                max_new_tokens=max_tokens,
                min_new_tokens=max_tokens,
                do_sample=True,
                temperature=1.0,
                top_k=None,
                use_cache=True,
                pad_token_id=0,
            )
        return out.shape[1] - len(prompt)

    one(batch[0][:8])  # warm-up
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        tokens = sum(pool.map(one, batch))
    return tokens / (time.perf_counter() - started)


def bench_vllm(engines, batch: list[list[int]], max_tokens: int, concurrency: int) -> float:
    def one(prompt: list[int]) -> int:
        choice = engines.complete(prompt, max_tokens=max_tokens, temperature=1.0, ignore_eos=True, logprobs=0)
        return len(choice["token_ids"])

    one(batch[0][:8])
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        tokens = sum(pool.map(one, batch))
    return tokens / (time.perf_counter() - started)


def generation(args: argparse.Namespace) -> list[dict]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dr_core.models import resolve
    from dr_train.rl.engines import VLLMServers, write_engine_weights

    model_dir = resolve(args.model)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        served = write_engine_weights(
            AutoModelForCausalLM.from_pretrained(model_dir), tokenizer, Path(tmp) / "m"
        )
        started = time.perf_counter()
        engines = VLLMServers.start_local(str(served), Path(tmp) / "engine.log", dtype="float32")
        start_s = time.perf_counter() - started
        try:
            for concurrency in args.concurrency:
                batch = prompts(tokenizer, max(concurrency * args.per_slot, concurrency))
                vllm_tps = bench_vllm(engines, batch, args.max_tokens, concurrency)
                hf_tps = bench_hf(model_dir, batch, args.max_tokens, concurrency)
                row = {
                    "concurrency": concurrency,
                    "prompts": len(batch),
                    "max_tokens": args.max_tokens,
                    "vllm_tokens_per_s": round(vllm_tps, 1),
                    "hf_tokens_per_s": round(hf_tps, 1),
                    "ratio": round(vllm_tps / hf_tps, 2),
                    "vllm_start_s": round(start_s, 1),
                }
                print(json.dumps(row), file=sys.stderr)
                rows.append(row)
        finally:
            engines.close()
    return rows


def rl_steps(args: argparse.Namespace) -> list[dict]:
    sys.path.insert(0, str(ROOT / "tests"))
    from support.taught import taught_world

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tasks = taught_world(root, model="tiny:qwen2-h64", unsure=True)
        for engine, concurrency in [(e, c) for c in args.concurrency for e in ("hf", "vllm")]:
            out = root / f"rl-{engine}-{concurrency}"
            command = [
                sys.executable, "-m", "dr_cli.main", "train", "rl", str(tasks), "--model", str(root / "sft"),
                "--index", str(root / "index"), "-o", str(out), "--engine", engine,
                "--steps", str(args.rl_steps), "--tasks-per-step", "2", "--group", "8", "--max-steps", "6",
                "--max-tokens", "8000", "--concurrency", str(concurrency), "--temperature", "0.9",
                "--lr", "5e-5",
            ]  # fmt: skip
            started = time.perf_counter()
            subprocess.run(command, check=True, capture_output=True)
            wall = time.perf_counter() - started
            metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][1:]
            row = {
                "engine": engine,
                "concurrency": concurrency,
                "steps": args.rl_steps,
                "step_s_median": round(statistics.median(m["step_s"] for m in metrics), 2),
                "rollout_s_median": round(statistics.median(m["rollout_s"] for m in metrics), 2),
                "rollouts_per_step": metrics[0]["rollouts"],
                "wall_s": round(wall, 1),
            }
            print(json.dumps(row), file=sys.stderr)
            rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 16])
    parser.add_argument("--per-slot", type=int, default=2, help="Prompts per concurrent slot.")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--rl", action="store_true", help="Also time dr train rl steps, hf against vllm.")
    parser.add_argument("--rl-steps", type=int, default=4)
    parser.add_argument("--no-generation", action="store_true", help="Skip the generation comparison.")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    report = {"generation": [] if args.no_generation else generation(args)}
    if args.rl:
        report["rl"] = rl_steps(args)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    if args.markdown:
        if report["generation"]:
            print("| concurrency | prompts × tokens | vLLM tokens/s | HF generate tokens/s | vLLM / HF |")
            print("|---:|---:|---:|---:|---:|")
        for r in report["generation"]:
            print(f"| {r['concurrency']} | {r['prompts']} × {r['max_tokens']} | {r['vllm_tokens_per_s']} | "
                  f"{r['hf_tokens_per_s']} | {r['ratio']} |")  # fmt: skip
        if report.get("rl"):
            print(
                "\n| RL engine | concurrency | median step s | median rollout s | rollouts a step | wall s |"
            )
            print("|---|---:|---:|---:|---:|---:|")
        for r in report.get("rl", []):
            print(f"| {r['engine']} | {r['concurrency']} | {r['step_s_median']} | {r['rollout_s_median']} | "
                  f"{r['rollouts_per_step']} | {r['wall_s']} |")  # fmt: skip
    else:
        print(json.dumps(report))


if __name__ == "__main__":
    main()
