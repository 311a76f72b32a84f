"""`dr research` as a user runs it, against a scripted model server on loopback."""

from __future__ import annotations

import json
import os
import subprocess

from support.cli import DR
from support.openai_server import Rendezvous, Reply, scripted_server
from support.policies import call, researcher


def dr(*args, env=None, input=None):
    return subprocess.run(
        [*DR, *args], capture_output=True, env={**os.environ, **(env or {})}, input=input, timeout=120
    )


def test_one_question_prints_the_report_and_can_save_the_trajectory(drb_index, tmp_path):
    with scripted_server(researcher("人工智能 教育")) as srv:
        result = dr(
            "research",
            "AI in education?",
            "--base-url",
            srv.url,
            "--model",
            "m",
            "--index",
            str(drb_index),
            "--trajectory",
            str(tmp_path / "t.json"),
        )
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode() == "The answer is in \\cite{21}.\n"
    trajectory = json.loads((tmp_path / "t.json").read_text())
    assert trajectory["stop_reason"] == "answered" and trajectory["citations"][0]["opened"] is True


def test_events_stream_as_jsonl_on_stdout(drb_index):
    with scripted_server(researcher("人工智能 教育")) as srv:
        env = {"DR_LLM_BASE_URL": srv.url, "DR_SEARCH_INDEX": str(drb_index)}
        result = dr("research", "AI in education?", "--events", "-", env=env)
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert events[0]["type"] == "start" and events[-1]["type"] == "end"
    assert events[-1]["final"] == "The answer is in \\cite{21}."


def test_no_answer_is_an_error_exit(drb_index):
    with scripted_server([Reply(content="hmm")]) as srv:
        result = dr("research", "q", "--base-url", srv.url, "--index", str(drb_index), "--max-steps", "2")
    assert result.returncode == 1
    assert result.stdout == b""
    assert b"error: no answer (stopped on step_budget)" in result.stderr


def test_missing_index_is_a_config_error():
    result = dr("research", "q", env={"DR_SEARCH_INDEX": ""})
    assert result.returncode == 2
    assert b"search backend 'local' needs an index folder" in result.stderr


def research_tasks(tasks, out, url, index) -> list[str]:
    """`dr research` of every task in `tasks` into `out`, against the model server at `url`."""
    return ["research", "--tasks", str(tasks), "-o", str(out), "--base-url", url, "--index", str(index)]


def test_tasks_run_concurrently_and_resume_skips_finished_ones(drb_index, tmp_path):
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text(
        "".join(json.dumps({"id": f"t{i}", "question": f"question {i}"}) + "\n" for i in range(5))
    )
    out = tmp_path / "trajectories.jsonl"

    meet = Rendezvous(3)

    def policy(body):
        question = body["messages"][1]["content"]
        meet.wait()
        return Reply(content=None, tool_calls=[call("answer", text=f"answer to {question}")])

    with scripted_server(policy) as srv:
        args = research_tasks(tasks, out, srv.url, drb_index)
        first = dr(*args, "--concurrency", "3")
        assert first.returncode == 0, first.stderr
        assert srv.max_in_flight == 3
        done = [json.loads(line) for line in out.read_text().splitlines()]
        assert sorted(t["task_id"] for t in done) == [f"t{i}" for i in range(5)]
        assert all(t["final"] == f"answer to question {t['task_id'][1:]}" for t in done)
        # two more tasks: a resumed run does only those
        with tasks.open("a") as fh:
            fh.write(json.dumps({"id": "t5", "question": "question 5"}) + "\n")
            fh.write(json.dumps({"id": "t6", "question": "question 6"}) + "\n")
        before = len(srv.requests)
        second = dr(*args, "--resume")
        assert second.returncode == 0, second.stderr
        assert len(srv.requests) - before == 2
    assert sorted(json.loads(line)["task_id"] for line in out.read_text().splitlines()) == [
        f"t{i}" for i in range(7)
    ]


def test_failed_tasks_are_kept_aside_with_skip_and_rerun_on_resume(drb_index, tmp_path):
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text(
        json.dumps({"id": "ok", "question": "fine"})
        + "\n"
        + json.dumps({"id": "bad", "question": "boom"})
        + "\n"
    )
    out = tmp_path / "out.jsonl"

    def policy(body):
        if body["messages"][1]["content"] == "boom":
            return Reply(status=400, error_body='{"error": "the model crashed"}')
        return Reply(content=None, tool_calls=[call("answer", text="fine")])

    with scripted_server(policy) as srv:
        args = research_tasks(tasks, out, srv.url, drb_index)
        failed = dr(*args)
        assert failed.returncode == 3 and b"task bad:" in failed.stderr
        skipped = dr(*args, "--on-error", "skip", "--resume")
        assert skipped.returncode == 0, skipped.stderr
    assert [json.loads(line)["task_id"] for line in out.read_text().splitlines()] == ["ok"]
    rejects = [json.loads(line) for line in (tmp_path / "out.jsonl.rejects.jsonl").read_text().splitlines()]
    assert (
        len(rejects) == 1
        and "task bad" in rejects[0]["error"]
        and json.loads(rejects[0]["raw"])["id"] == "bad"
    )
    # the line the task was read from, as it was (not line 0 and a re-serialized record)
    assert rejects[0]["file"] == str(tasks) and rejects[0]["line"] == 2
    assert rejects[0]["raw"] == tasks.read_text().splitlines()[1]
