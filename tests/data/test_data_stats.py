"""`dr data stats` on a small file."""

from __future__ import annotations

import json
import subprocess
import sys

from support.samples import distinct


def test_stats_counts_kinds_tokens_and_tool_calls(tmp_path):
    src = tmp_path / "mixed.jsonl"
    rows = [distinct(i) for i in range(3)] + [{"id": "p", "query": "q", "steps": [{"title": "a"}]}]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cmd = [sys.executable, "-m", "dr_cli.main", "data", "stats", str(src), "--plot", str(tmp_path / "s.png")]
    result = subprocess.run(cmd, capture_output=True)
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout)
    assert stats["records"] == 4 and stats["kinds"] == {"trajectory": 3, "plan": 1}
    assert stats["tool_calls"] == {"search": 3, "answer": 3}
    assert stats["calls_per_record"]["histogram"] == {"2": 3}
    assert stats["tokens"]["estimated"] is True and stats["tokens"]["total"] > 0
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"
