"""`dr data stats`: what a data file holds: counts by kind, token lengths, tool calls."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

import numpy as np

from dr_core.files import save_figure
from dr_data.sft import kind_of

# Without a tokenizer, tokens are estimated at this many characters each (agent context estimates agree).
CHARS_PER_TOKEN = 3.0


def text_of(obj: dict[str, Any]) -> str:
    if "messages" in obj:
        parts = []
        for m in obj["messages"]:
            parts.append(m.get("content") or "")
            parts.extend(str(c.get("arguments")) for c in m.get("tool_calls") or [])
        return "\n".join(parts)
    if "query" in obj:
        return obj["query"] + "\n" + "\n".join(s.get("title", "") for s in obj.get("steps") or [])
    return str(obj.get("text") or obj.get("article") or obj.get("question") or "")


def collect(records: Iterable[dict[str, Any]], tokenizer: Any = None) -> dict[str, Any]:
    kinds: Counter[str] = Counter()
    tools: Counter[str] = Counter()
    lengths: list[int] = []
    calls_per_record: list[int] = []
    stop_reasons: Counter[str] = Counter()
    for obj in records:
        try:
            kind = kind_of(obj)
        except ValueError:
            kind = "task" if "question" in obj else "other"
        kinds[kind] += 1
        text = text_of(obj)
        lengths.append(
            len(tokenizer.encode(text)) if tokenizer is not None else round(len(text) / CHARS_PER_TOKEN)
        )
        if "messages" in obj:
            n = 0
            for m in obj["messages"]:
                for call in m.get("tool_calls") or []:
                    tools[call.get("name", "?")] += 1
                    n += 1
            calls_per_record.append(n)
        if obj.get("stop_reason"):
            stop_reasons[obj["stop_reason"]] += 1
    out: dict[str, Any] = {"records": sum(kinds.values()), "kinds": dict(kinds), "tool_calls": dict(tools)}
    if lengths:
        array = np.asarray(lengths)
        out["tokens"] = {
            "total": int(array.sum()),
            "mean": float(array.mean()),
            "p50": float(np.percentile(array, 50)),
            "p90": float(np.percentile(array, 90)),
            "max": int(array.max()),
            "estimated": tokenizer is None,
        }
        edges = [0, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072, 1 << 62]
        counts, _ = np.histogram(array, bins=edges)
        out["token_histogram"] = {
            f"<{edges[i + 1]}" if i < len(edges) - 2 else f">={edges[i]}": int(c)
            for i, c in enumerate(counts)
            if c
        }
    if calls_per_record:
        out["calls_per_record"] = {
            "mean": float(np.mean(calls_per_record)),
            "max": int(max(calls_per_record)),
            "histogram": {str(k): v for k, v in sorted(Counter(calls_per_record).items())},
        }
    if stop_reasons:
        out["stop_reasons"] = dict(stop_reasons)
    out["_lengths"] = lengths
    return out


def plot(stats: dict[str, Any], path: Any) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    axes[0].hist(stats["_lengths"] or [0], bins=40, color="#4c72b0")
    axes[0].set_title(
        "tokens per record" + (" (estimated)" if stats.get("tokens", {}).get("estimated") else "")
    )
    axes[0].set_xlabel("tokens")
    names = list(stats["tool_calls"])
    axes[1].bar(names, [stats["tool_calls"][n] for n in names], color="#55a868")
    axes[1].set_title("tool calls")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)
