"""The reward curves of RL runs: per step, the reward the policy trained on beside the rules' truth it never
saw (report tasks), their gap, and the flaw and fatal rates; as markdown and a PNG. Reward hacking shows as
the judge's reward rising while the truth does not."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dr_core.errors import InputError
from dr_core.files import save_figure

COLUMNS = (
    "step",
    "reward_mean",
    "reward_questions",
    "reward_judge",
    "reward_true",
    "reward_gap",
    "flaw_rate",
    "fatal_rate",
    "dropped",
    "report_words",
    "citations",
    "judge_s",
)


def load_steps(run: Path) -> list[dict[str, Any]]:
    """The records of an RL run's metrics.jsonl (`dr train rl -o RUN`); InputError naming a bad line."""
    path = run / "metrics.jsonl" if run.is_dir() else run
    if not path.is_file():
        raise InputError(f"{run}: no metrics.jsonl (is it a `dr train rl` output folder?)")
    steps = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}:{number}: not JSON ({exc.msg})") from None
        if not isinstance(record, dict) or "step" not in record:
            raise InputError(f"{path}:{number}: not an RL step record (no 'step')")
        steps.append({key: record.get(key) for key in COLUMNS})
    return steps


def markdown(runs: dict[str, list[dict[str, Any]]]) -> str:
    used = [c for c in COLUMNS if any(step.get(c) is not None for steps in runs.values() for step in steps)]
    lines = ["| run | " + " | ".join(used) + " |", "|---|" + "---:|" * len(used)]
    for name, steps in runs.items():
        for step in steps:
            cells = ["-" if step.get(c) is None else f"{step[c]:g}" for c in used]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(runs: dict[str, list[dict[str, Any]]], path: Path) -> None:
    """Per step: each run's reward from the judge (solid) and the truth (dashed), and the gap."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, steps in runs.items():
        xs = [s["step"] for s in steps]
        for key, style in (("reward_judge", "-"), ("reward_true", "--"), ("reward_mean", ":")):
            ys = [s.get(key) for s in steps]
            if any(y is not None for y in ys) and (
                key != "reward_mean" or all(s.get("reward_true") is None for s in steps)
            ):
                axes[0].plot(
                    xs,
                    [float("nan") if y is None else y for y in ys],
                    style,
                    marker="o",
                    label=f"{name}: {key}",
                )
        gaps = [s.get("reward_gap") for s in steps]
        if any(g is not None for g in gaps):
            axes[1].plot(xs, [float("nan") if g is None else g for g in gaps], marker="o", label=name)
    axes[0].set_xlabel("RL step")
    axes[0].set_ylabel("mean reward")
    axes[0].set_ylim(-0.02, 1.02)
    axes[0].legend(fontsize=8)
    axes[0].set_title("reward the policy trained on, and the rules' truth")
    axes[1].axhline(0, color="grey", linewidth=0.8)
    axes[1].set_xlabel("RL step")
    axes[1].set_ylabel("judge - truth")
    axes[1].set_title("gap")
    if axes[1].lines[1:]:
        axes[1].legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)
