"""Summaries of bench runs: mean scores with bootstrap intervals, per-category breakdown, cost; as a rich
table, markdown, and PNG plots."""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from dr_core.errors import InputError
from dr_core.files import save_figure
from dr_core.jsonl import read_records
from dr_core.records import Judgment
from dr_judge.stats import mean_ci


def load_judgments(run: Path) -> list[Judgment]:
    path = run / "judgments.jsonl" if run.is_dir() else run
    if not path.exists():
        if run.is_dir() and any((run / name).exists() for name in STARTED):
            command = run / "command.txt"
            how = (
                f"resume it with: {command.read_text().strip()}"
                if command.is_file()
                else "run the same `dr bench run` command again with --resume"
            )
            raise InputError(f"{run}: the bench run was interrupted before it finished; {how}")
        raise InputError(f"{run}: no judgments.jsonl (is it a `dr bench run` folder?)")
    return list(read_records(str(path), Judgment))


# What a `dr bench run` that was stopped before its first commit leaves in its folder.
STARTED = ("judgments.jsonl.partial", "trajectories.jsonl.partial", "command.txt")


def load_fingerprint(run: Path) -> dict[str, Any] | None:
    """The fingerprint `dr bench run` recorded in the run's summary.json, if any."""
    import orjson

    path = run / "summary.json" if run.is_dir() else run.parent / "summary.json"
    if not path.is_file():
        return None
    try:
        return orjson.loads(path.read_bytes()).get("fingerprint")
    except orjson.JSONDecodeError:
        return None


def warn_if_setups_differ(runs: list[Path]) -> list[str]:
    """Warn (stderr) when runs differ in what decides a score besides the model; the lines said."""
    from dr_bench.fingerprint import differences
    from dr_core.log import logger

    lines = differences({str(run): load_fingerprint(run) for run in runs})
    for line in lines:
        logger.warning("these runs were not set up alike, so their scores may not compare: %s", line)
    return lines


def summarize(run: Path, seed: int = 0) -> dict[str, Any]:
    """Scores and costs of one run folder (or judgments file)."""
    judgments = load_judgments(run)
    summary: dict[str, Any] = {"run": str(run), "n": len(judgments)}
    fingerprint = load_fingerprint(run)
    if fingerprint is not None:
        summary["fingerprint"] = fingerprint
    if not judgments:
        return summary
    scores = [j.score for j in judgments if j.score is not None]
    summary["abstained"] = len(judgments) - len(scores)  # no score: the judge abstained on an item
    if scores:
        mean, low, high = mean_ci(scores, seed=seed)
        summary["score"] = {"mean": mean, "ci95": [low, high]}
    groups: dict[str, list[float]] = defaultdict(list)
    for j in judgments:
        if j.score is not None:
            groups[str(j.meta.get("category") or "uncategorized")].append(j.score)
    summary["categories"] = {
        name: {"n": len(values), "mean": sum(values) / len(values)} for name, values in sorted(groups.items())
    }
    for field in ("tool_calls", "steps", "tokens", "wall_s", "cost_usd"):
        values = [float(j.meta.get(field) or 0) for j in judgments]
        summary[field] = {"mean": sum(values) / len(values), "total": sum(values)}
    summary["stop_reasons"] = dict(Counter(str(j.meta.get("stop_reason")) for j in judgments))
    reports = [j for j in judgments if "flaws" in j.meta]
    if reports:
        summary["reports"] = report_rates(reports, seed)
    return summary


def report_rates(judgments: list[Judgment], seed: int = 0) -> dict[str, Any]:
    """Over judged reports: the shares with a flaw and with a fatal flaw (95% bootstrap intervals), the
    mean citation precision and citations per report."""

    def share(values: list[float]) -> dict[str, Any]:
        mean, low, high = mean_ci(values, seed=seed)
        return {"mean": mean, "ci95": [low, high]}

    out: dict[str, Any] = {
        "n": len(judgments),
        "flaw_rate": share([float(j.meta["flaws"] > 0) for j in judgments]),
        "fatal_rate": share([float(j.fatal) for j in judgments]),
        "citations": sum(float(j.meta.get("citations") or 0) for j in judgments) / len(judgments),
    }
    precisions = [
        float(j.meta["citation_precision"]) for j in judgments if j.meta.get("citation_precision") is not None
    ]
    if precisions:
        out["citation_precision"] = {"mean": sum(precisions) / len(precisions), "n": len(precisions)}
    return out


def interval(stat: dict[str, Any]) -> str:
    low, high = stat["ci95"]
    return f"{stat['mean']:.3f} ({low:.3f}-{high:.3f})"


def stops(summary: dict[str, Any]) -> str:
    """How the runs ended, most common first: 'answered 80, no_progress 12, step_budget 8'. A model that
    stopped making progress (no_progress) is counted apart from one that ran out of budget."""
    counts = sorted((summary.get("stop_reasons") or {}).items(), key=lambda kv: (-kv[1], kv[0]))
    return ", ".join(f"{reason} {n}" for reason, n in counts) or "-"


def markdown(summaries: list[dict[str, Any]]) -> str:
    lines = [
        "| run | n | score (95% CI) | tool calls | tokens | time (s) | cost (USD) | stops |",
        "|---|---:|---|---:|---:|---:|---:|---|",
    ]
    for s in summaries:
        if "score" not in s:
            lines.append(f"| {s['run']} | 0 | - | - | - | - | - | - |")
            continue
        low, high = s["score"]["ci95"]
        lines.append(
            f"| {s['run']} | {s['n']} | {s['score']['mean']:.3f} ({low:.3f}-{high:.3f}) | "
            f"{s['tool_calls']['mean']:.1f} | {s['tokens']['mean']:.0f} | {s['wall_s']['mean']:.1f} | "
            f"{s['cost_usd']['total']:.2f} | {stops(s)} |"
        )
    reported = [s for s in summaries if "reports" in s]
    if reported:
        lines += [
            "",
            "| run | reports | checklist score (95% CI) | flaw rate (95% CI) | fatal rate (95% CI) | "
            "citation precision | citations |",
            "|---|---:|---|---|---|---:|---:|",
        ]
        for s in reported:
            r = s["reports"]
            precision = r.get("citation_precision")
            shown = f"{precision['mean']:.3f}" if precision else "-"
            lines.append(
                f"| {s['run']} | {r['n']} | {interval(s['score']) if 'score' in s else '-'} | "
                f"{interval(r['flaw_rate'])} | {interval(r['fatal_rate'])} | "
                f"{shown} | {r['citations']:.1f} |"
            )
    return "\n".join(lines) + "\n"


def print_table(summaries: list[dict[str, Any]]) -> None:
    from rich.table import Table

    from dr_core.log import console

    table = Table(title="dr bench")
    for column in ("run", "n", "score", "95% CI", "tool calls", "tokens", "time (s)", "cost", "stops"):
        table.add_column(column, justify="left" if column == "run" else "right")
    for s in summaries:
        if "score" not in s:
            table.add_row(s["run"], "0", "-", "-", "-", "-", "-", "-", "-")
            continue
        low, high = s["score"]["ci95"]
        table.add_row(
            s["run"],
            str(s["n"]),
            f"{s['score']['mean']:.3f}",
            f"{low:.3f}-{high:.3f}",
            f"{s['tool_calls']['mean']:.1f}",
            f"{s['tokens']['mean']:.0f}",
            f"{s['wall_s']['mean']:.1f}",
            f"{s['cost_usd']['total']:.2f}",
            stops(s),
        )
    console().print(table)


def plot(summaries: list[dict[str, Any]], path: Path) -> None:
    """Mean score per run with its interval, and per category, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scored = [s for s in summaries if "score" in s]
    categories = sorted({c for s in scored for c in s["categories"]})
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [1, 2]})
    names = [Path(s["run"]).name for s in scored]
    means = [s["score"]["mean"] for s in scored]
    errors = [
        [m - s["score"]["ci95"][0] for m, s in zip(means, scored, strict=True)],
        [s["score"]["ci95"][1] - m for m, s in zip(means, scored, strict=True)],
    ]
    axes[0].bar(names, means, yerr=errors, capsize=4, color="#4c72b0")
    axes[0].set_ylim(0, 1)
    axes[0].set_ylabel("mean score (95% CI)")
    axes[0].set_title("overall")
    width = 0.8 / max(1, len(scored))
    for i, s in enumerate(scored):
        xs = [c + i * width for c in range(len(categories))]
        axes[1].bar(
            xs, [s["categories"].get(c, {}).get("mean", 0) for c in categories], width, label=names[i]
        )
    axes[1].set_xticks([c + width * (len(scored) - 1) / 2 for c in range(len(categories))])
    axes[1].set_xticklabels(categories, rotation=30, ha="right", fontsize=8)
    axes[1].set_ylim(0, 1)
    axes[1].set_title("by category")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)


def plot_ratings(ratings: list[dict[str, Any]], path: Path) -> None:
    """Elo ratings with their 95% intervals, one bar per system, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [Path(r["run"]).name for r in ratings]
    values = [r["elo"] for r in ratings]
    errors = [
        [v - r["ci95"][0] for v, r in zip(values, ratings, strict=True)],
        [r["ci95"][1] - v for v, r in zip(values, ratings, strict=True)],
    ]
    fig, axis = plt.subplots(figsize=(max(4, 1.5 * len(names)), 4))
    axis.errorbar(names, values, yerr=errors, fmt="o", capsize=5, color="#4c72b0")
    axis.axhline(1000, color="grey", linewidth=0.8, linestyle="--")
    axis.set_ylabel("Elo (Bradley-Terry, 95% CI)")
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)
