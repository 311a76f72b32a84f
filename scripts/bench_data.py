"""Throughput of dr-data's deterministic paths, one core: records per second for world generation,
reverse without a teacher, and sft formatting with all filters. Prints a markdown table.

    python scripts/bench_data.py            # what docs/benchmarks.md reports
    python scripts/bench_data.py --quick    # a smaller run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def rate(count: int, seconds: float) -> str:
    return f"{count / seconds:,.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from dr_core.records import Trajectory
    from dr_data.oracle import OracleTeacher
    from dr_data.reverse import as_report, reverse_without_teacher
    from dr_data.sft import FilterChain, NearDuplicates, to_example
    from dr_data.world import build_world, sample_tasks

    rows = []
    n_entities = 2000 if args.quick else 20000
    start = time.perf_counter()
    world = build_world(0, n_entities)
    tasks = list(sample_tasks(world, n_entities // 2))
    seconds = time.perf_counter() - start
    records = len(world.documents) + len(tasks)
    rows.append(("world (documents + tasks)", records, seconds))

    reports = [
        json.loads(line) for line in (ROOT / "data/deepresearch_bench/reports_claude-3-7-sonnet.jsonl").open()
    ]
    repeat = 10 if args.quick else 60
    start = time.perf_counter()
    for _ in range(repeat):
        for obj in reports:
            reverse_without_teacher(as_report(obj))
    rows.append(
        (
            "reverse --teacher none (DeepResearch Bench reports, ~20 KB each)",
            repeat * len(reports),
            time.perf_counter() - start,
        )
    )

    import tempfile

    from dr_agent.agent import ResearchAgent
    from dr_agent.index import LocalIndex, build_index
    from dr_agent.search import LocalBackend

    with tempfile.TemporaryDirectory() as tmp:
        small = build_world(1, 2000)
        small_tasks = list(sample_tasks(small, 1000))
        build_index(small.documents, Path(tmp) / "index")
        agent = ResearchAgent(OracleTeacher(small_tasks), LocalBackend(LocalIndex(Path(tmp) / "index")))
        start = time.perf_counter()
        trajectories = [agent.run(t.question, task_id=t.id) for t in small_tasks]
        rows.append(
            (
                "oracle trajectories (real agent loop and index)",
                len(trajectories),
                time.perf_counter() - start,
            )
        )
    dicts = [t.model_dump(mode="json") for t in trajectories] * (2 if args.quick else 5)
    for i, d in enumerate(dicts):
        d["id"] = f"{d['id']}-{i}"
    chain = FilterChain(dedup=NearDuplicates())
    start = time.perf_counter()
    for d in dicts:
        _, example = to_example(d)
        assert example is not None  # an oracle trajectory always makes an example
        chain.reason(example)
    rows.append(("sft (oracle trajectories, all filters)", len(dicts), time.perf_counter() - start))
    assert all(isinstance(t, Trajectory) for t in trajectories)

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"device: {platform.processor() or platform.machine()}, 1 thread, Python {platform.python_version()}"
    )
    print(f"peak RSS: {peak:.0f} MiB\n")
    print("| path | records | seconds | records/s |")
    print("|---|---:|---:|---:|")
    for name, count, seconds in rows:
        print(f"| {name} | {count:,} | {seconds:.2f} | {rate(count, seconds)} |")


if __name__ == "__main__":
    main()
