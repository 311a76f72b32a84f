"""`dr judge score` and `dr judge compare` as a user runs them."""

from __future__ import annotations

import json
import subprocess

from support.cli import DR
from support.openai_server import Rendezvous, Reply, scripted_server


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_score_reads_trajectories_reports_and_drb_lines_and_resumes(tmp_path):
    tasks = write(
        tmp_path / "tasks.jsonl",
        [
            {"id": "t1", "question": "Who founded Velmora?", "type": "deep_search", "answer": "Ada Quist"},
            {
                "id": "t2",
                "question": "Report on Velmora",
                "checklist": [{"id": "y", "text": "year", "check": {"type": "contains", "value": "1821"}}],
            },
        ],
    )
    responses = write(
        tmp_path / "responses.jsonl",
        [
            {
                "id": "traj-1",
                "task_id": "t1",
                "messages": [{"role": "user", "content": "q"}],
                "final": "Answer: Ada Quist",
            },
            {"id": "rep-2", "task_id": "t2", "text": "Founded in 1822."},
            {"id": "t2", "prompt": "Report on Velmora", "article": "Founded in 1821."},
        ],
    )
    out = tmp_path / "judgments.jsonl"
    result = subprocess.run(
        [*DR, "judge", "score", str(responses), "--tasks", str(tasks), "-o", str(out)], capture_output=True
    )
    assert result.returncode == 0, result.stderr
    scores = {j["target_id"]: j["score"] for j in map(json.loads, out.read_text().splitlines())}
    assert scores == {"traj-1": 1.0, "rep-2": 0.0, "t2": 1.0}
    again = subprocess.run(
        [*DR, "judge", "score", str(responses), "--tasks", str(tasks), "-o", str(out), "--resume"],
        capture_output=True,
    )
    assert again.returncode == 0 and len(out.read_text().splitlines()) == 3


def test_score_names_responses_whose_task_is_unknown(tmp_path):
    tasks = write(tmp_path / "tasks.jsonl", [{"id": "t1", "question": "q", "answer": "a"}])
    responses = write(tmp_path / "r.jsonl", [{"id": "r", "task_id": "t9", "text": "x"}])
    result = subprocess.run(
        [*DR, "judge", "score", str(responses), "--tasks", str(tasks)], capture_output=True
    )
    assert result.returncode == 2 and b"response r: task 't9' is not in" in result.stderr


def test_compare_writes_one_comparison_per_shared_task(tmp_path):
    tasks = write(
        tmp_path / "tasks.jsonl",
        [{"id": "t1", "question": "q1", "answer": "x"}, {"id": "t2", "question": "q2", "answer": "y"}],
    )
    a = write(
        tmp_path / "a.jsonl",
        [
            {"id": "a1", "task_id": "t1", "text": "good report"},
            {"id": "a2", "task_id": "t2", "text": "A two"},
        ],
    )
    b = write(tmp_path / "b.jsonl", [{"id": "b1", "task_id": "t1", "text": "weak report"}])

    def prefers_good(body):
        content = body["messages"][1]["content"]
        good_first = content.index("good report") < content.index("weak report")
        return Reply(content=json.dumps({"winner": "A" if good_first else "B", "rationale": "more complete"}))

    with scripted_server(prefers_good) as srv:
        cmd = [
            *DR,
            "judge",
            "compare",
            str(a),
            str(b),
            "--tasks",
            str(tasks),
            "--judge-base-url",
            srv.url,
            "--judge-model",
            "j",
        ]
        result = subprocess.run(cmd, capture_output=True)
    assert result.returncode == 0, result.stderr
    [comparison] = [json.loads(line) for line in result.stdout.splitlines()]
    assert (comparison["task_id"], comparison["winner"], comparison["orders"]) == ("t1", "a", ["a", "a"])
    assert comparison["a_id"] == "a1" and comparison["b_id"] == "b1" and comparison["judge"] == "j"


def test_drb_lines_whose_article_is_not_text_are_file_line_errors(tmp_path):
    tasks = write(tmp_path / "tasks.jsonl", [{"id": "1", "question": "q", "answer": "None"}])
    for n, (bad, message) in enumerate(
        [
            (
                {"id": 1, "prompt": "q", "article": None},
                "field 'article': expected the report's text, got null",
            ),
            (
                {"id": 1, "prompt": "q", "article": 12345},
                "field 'article': expected the report's text, got a number",
            ),
            ({"id": 1, "prompt": 7, "article": "x"}, "field 'prompt': expected text, got a number"),
        ]
    ):
        responses = write(tmp_path / f"r{n}.jsonl", [{"id": 1, "prompt": "q", "article": "fine"}, bad])
        result = subprocess.run(
            [*DR, "judge", "score", str(responses), "--tasks", str(tasks)], capture_output=True
        )
        assert result.returncode == 2, result.stderr
        assert f"{responses}:2: {message}".encode() in result.stderr


def test_score_judges_several_at_once_and_skip_sends_unjudgeable_responses_to_the_rejects(tmp_path):
    checklist = [{"id": "y", "text": "States the founding year"}]
    tasks = write(tmp_path / "tasks.jsonl", [{"id": f"t{i}", "question": f"Report {i}", "checklist": checklist}
                                             for i in range(10)])  # fmt: skip
    responses = write(
        tmp_path / "r.jsonl",
        [{"id": f"r{i}", "task_id": f"t{i}", "text": f"report number {i}"} for i in range(10)],
    )
    meet = Rendezvous(10)

    def judge(body):
        meet.wait()
        if "report number 3" in body["messages"][1]["content"]:
            return Reply(content="I think it is fine.")  # never the JSON asked for, even when sent back
        return Reply(content=json.dumps({"verdicts": [{"id": "y", "verdict": "met", "rationale": "r"}]}))

    out = tmp_path / "judgments.jsonl"
    cmd = [*DR, "judge", "score", str(responses), "--tasks", str(tasks), "-o", str(out), "--judge-model", "j"]
    with scripted_server(judge) as srv:
        strict = subprocess.run(
            [*cmd, "--judge-base-url", srv.url, "--concurrency", "10"], capture_output=True
        )
        assert srv.max_in_flight == 10  # beyond the client's default cap of 8
        assert strict.returncode == 3 and b"the judge model failed" in strict.stderr
        assert not out.exists()  # nothing half-judged stands as an output
        skipped = subprocess.run(
            [
                *cmd,
                "--judge-base-url",
                srv.url,
                "--on-error",
                "skip",
                "--rejects",
                str(tmp_path / "rej.jsonl"),
            ],
            capture_output=True,
        )
    assert skipped.returncode == 0, skipped.stderr
    assert [json.loads(line)["target_id"] for line in out.read_text().splitlines()] == [
        f"r{i}" for i in range(10) if i != 3
    ]
    [reject] = [json.loads(line) for line in (tmp_path / "rej.jsonl").read_text().splitlines()]
    assert reject["line"] == 4 and "response r3: the judge model failed" in reject["error"]
    assert "no usable reply after 3 tries" in reject["error"]
    assert b"9 responses judged; 1 refused by the judge model" in skipped.stderr
