"""`dr bench run` against an OpenAI-compatible server on loopback: judged results, kill and resume."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections import Counter

from support.cli import DR
from support.openai_server import Rendezvous, Reply, scripted_server
from support.policies import call


def deep_search_suite(path, n):
    rows = [
        {
            "id": f"q{i}",
            "question": f"What is the code of item {i}?",
            "type": "deep_search",
            "answer": f"code {i}",
        }
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def answering_policy(delay_s=0.0, wrong=()):
    def policy(body):
        found = re.search(r"item (\d+)", body["messages"][1]["content"])
        assert found is not None
        item = found.group(1)
        text = f"Answer: code {int(item) + 100 if int(item) in wrong else item}"
        return Reply(
            content=None,
            tool_calls=[call("answer", text=text)],
            delay_s=delay_s,
            prompt_tokens=50,
            completion_tokens=10,
        )

    return policy


def bench_cmd(suite, out, url, *more) -> list[str]:
    """`dr bench run` over `suite` into `out` against the model server at `url`, then `more` flags."""
    return [*DR, "bench", "run", "--suite", str(suite), "-o", str(out), "--base-url", url, *map(str, more)]


def questions(server) -> Counter:
    return Counter(body["messages"][1]["content"] for body in server.requests)


def test_run_judges_exact_answers_and_summarizes(tmp_path, drb_index):
    suite = deep_search_suite(tmp_path / "suite.jsonl", 6)
    with scripted_server(answering_policy(wrong={4, 5})) as srv:
        result = subprocess.run(
            bench_cmd(suite, tmp_path / "run", srv.url, "--index", drb_index), capture_output=True
        )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["n"] == 6 and summary["score"]["mean"] == 4 / 6
    assert summary["tokens"]["mean"] == 60 and summary["stop_reasons"] == {"answered": 6}
    judgments = [json.loads(line) for line in (tmp_path / "run" / "judgments.jsonl").read_text().splitlines()]
    assert {j["task_id"]: j["score"] for j in judgments} == {
        f"q{i}": (0.0 if i in (4, 5) else 1.0) for i in range(6)
    }
    assert all(j["mode"] == "exact" and j["judge"] == "deterministic" for j in judgments)
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["n"] == 6


def test_a_killed_run_resumes_without_rerunning_finished_tasks(tmp_path, drb_index):
    suite = deep_search_suite(tmp_path / "suite.jsonl", 8)
    run = tmp_path / "run"
    partial = run / "trajectories.jsonl.partial"
    with scripted_server(answering_policy(delay_s=0.3)) as srv:
        cmd = bench_cmd(suite, run, srv.url, "--index", drb_index, "--concurrency", "1")
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if partial.exists() and partial.read_bytes().count(b"\n") >= 3:
                break
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        finished = {
            json.loads(line)["task_id"] for line in partial.read_bytes().splitlines() if line.endswith(b"}")
        }
        assert 3 <= len(finished) < 8
        assert not (run / "trajectories.jsonl").exists()  # nothing was committed: it was killed

        resumed = subprocess.run([*cmd, "--resume"], capture_output=True)
        assert resumed.returncode == 0, resumed.stderr
        asked = questions(srv)
    for task_id in finished:
        assert asked[f"What is the code of item {task_id[1:]}?"] == 1, task_id  # never run twice
    trajectories = [
        json.loads(line)["task_id"] for line in (run / "trajectories.jsonl").read_text().splitlines()
    ]
    judgments = [json.loads(line)["task_id"] for line in (run / "judgments.jsonl").read_text().splitlines()]
    assert sorted(trajectories) == sorted(judgments) == [f"q{i}" for i in range(8)]
    assert json.loads(resumed.stdout)["score"]["mean"] == 1.0


def test_research_tasks_need_a_judge_model_and_are_scored_by_it(tmp_path, drb_index):
    suite = tmp_path / "research.jsonl"
    checklist = [{"id": "a", "text": "covers A"}, {"id": "b", "text": "covers B"}]
    suite.write_text(
        "".join(
            json.dumps(
                {"id": f"r{i}", "question": f"Report on topic {i}", "checklist": checklist, "category": "cat"}
            )
            + "\n"
            for i in range(2)
        )
    )
    agent_policy = [Reply(content=None, tool_calls=[call("answer", text="A report about A.")])]
    judge_reply = Reply(
        content='{"verdicts": [{"id": "a", "verdict": "met"}, {"id": "b", "verdict": "not_met"}]}'
    )
    with scripted_server(agent_policy) as agent_srv, scripted_server([judge_reply]) as judge_srv:
        cmd = bench_cmd(suite, tmp_path / "run", agent_srv.url, "--index", drb_index)
        refused = subprocess.run(cmd, capture_output=True)
        assert refused.returncode == 2 and b"give a judge model" in refused.stderr
        result = subprocess.run(
            [*cmd, "--judge-base-url", judge_srv.url, "--judge-model", "judge"], capture_output=True
        )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["score"]["mean"] == 0.5 and summary["categories"] == {"cat": {"n": 2, "mean": 0.5}}
    assert len(judge_srv.requests) == 2 and all(b["model"] == "judge" for b in judge_srv.requests)


def test_every_run_records_what_decides_its_score_and_comparisons_warn_when_it_differs(tmp_path, drb_index):
    suite = deep_search_suite(tmp_path / "suite.jsonl", 3)
    runs = {}
    with scripted_server(answering_policy()) as srv:
        base = [*DR, "bench", "run", "--suite", str(suite), "--base-url", srv.url, "--index", str(drb_index)]
        for name, extra in (
            ("a", []),
            ("b", ["--model", "other"]),
            ("c", ["--max-steps", "7", "--tool-mode", "text"]),
        ):
            result = subprocess.run([*base, "-o", str(tmp_path / name), *extra], capture_output=True)
            assert result.returncode == 0, result.stderr
            runs[name] = json.loads((tmp_path / name / "summary.json").read_text())["fingerprint"]
    a = runs["a"]
    assert {"model", "chat_template", "system_prompt", "tools", "tool_mode", "agent", "search", "index",
            "judge", "judge_prompts", "digest"} <= set(a)  # fmt: skip
    assert a["search"] == "LocalBackend" and a["judge"] == "deterministic" and a["tool_mode"] == "auto"
    # another model alone is what a comparison is for: same digest, no warning
    assert runs["b"]["model"] == "other" and runs["b"]["digest"] == a["digest"]
    same = subprocess.run(
        [*DR, "bench", "compare", str(tmp_path / "a"), str(tmp_path / "b")], capture_output=True
    )
    assert same.returncode == 0 and b"not set up alike" not in same.stderr
    assert "setup_differences" not in json.loads(same.stdout)
    # other agent budgets and tool mode: both commands say so, naming the entries
    assert runs["c"]["digest"] != a["digest"]
    for command in ("compare", "report"):
        result = subprocess.run(
            [*DR, "bench", command, str(tmp_path / "a"), str(tmp_path / "c")], capture_output=True
        )
        assert result.returncode == 0, result.stderr
        stderr = result.stderr.decode()
        assert "not set up alike" in stderr and "agent: " in stderr and "tool_mode: " in stderr
        assert "index: " not in stderr and "judge: " not in stderr


def test_resume_over_a_torn_summary_finishes_and_writes_it_whole(tmp_path, drb_index):
    suite = deep_search_suite(tmp_path / "suite.jsonl", 2)
    run = tmp_path / "run"
    with scripted_server(answering_policy()) as srv:
        cmd = bench_cmd(suite, run, srv.url, "--index", drb_index)
        assert subprocess.run(cmd, capture_output=True).returncode == 0
        (run / "summary.json").write_text('{"n": 2, "fingerprint": {"mod')  # the disk filled up mid-write
        resumed = subprocess.run([*cmd, "--resume"], capture_output=True)
        assert len(srv.requests) == 2  # the runs were in place: none ran again
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["n"] == 2 and summary["fingerprint"]["search"] == "LocalBackend"


def test_resume_leaves_a_finished_run_alone_and_refuses_or_sets_aside_a_run_of_another_setup(
    tmp_path, drb_index
):
    suite = deep_search_suite(tmp_path / "suite.jsonl", 3)
    run = tmp_path / "run"
    with scripted_server(answering_policy()) as srv:
        cmd = bench_cmd(suite, run, srv.url, "--index", drb_index)
        first = subprocess.run(cmd, capture_output=True)
        assert first.returncode == 0, first.stderr
        # the same setup, finished: nothing runs, and the summary is printed again
        again = subprocess.run([*cmd, "--resume"], capture_output=True)
        assert again.returncode == 0 and b"nothing to run" in again.stderr
        assert len(srv.requests) == 3 and json.loads(again.stdout) == json.loads(first.stdout)
        # another agent budget, or other tasks: continuing would mix two setups in one score
        for more, named in (
            (["--max-steps", "7"], b"agent: max_steps"),
            (["--limit", "2"], b"tasks: 3 then, 2 now"),
        ):
            refused = subprocess.run([*cmd, *more, "--resume"], capture_output=True)
            assert refused.returncode == 2 and b"holds a run of another setup" in refused.stderr
            assert named in refused.stderr and b"Traceback" not in refused.stderr
        assert len(srv.requests) == 3
        aside = subprocess.run(
            [*cmd, "--max-steps", "7", "--resume", "--on-change", "set-aside"], capture_output=True
        )
        assert aside.returncode == 0, aside.stderr
        assert len(srv.requests) == 6  # every task ran again under the new setup
    stale = tmp_path / "run.stale-1"
    assert json.loads((stale / "summary.json").read_text()) == json.loads(first.stdout)  # kept, not deleted
    fresh = json.loads((run / "summary.json").read_text())
    assert fresh["n"] == 3 and fresh["fingerprint"]["agent_settings"]["max_steps"] == 7


def test_concurrency_beyond_the_clients_default_cap_keeps_that_many_requests_in_flight(tmp_path, drb_index):
    # the client's own request cap defaulted to 8 and silently held --concurrency 16 to 8 requests
    suite = deep_search_suite(tmp_path / "suite.jsonl", 12)
    meet = Rendezvous(12)
    answer = answering_policy()

    def policy(body):
        meet.wait()
        return answer(body)

    with scripted_server(policy) as srv:
        cmd = bench_cmd(suite, tmp_path / "run", srv.url, "--index", drb_index, "--concurrency", "12")
        result = subprocess.run(cmd, capture_output=True)
        assert result.returncode == 0, result.stderr
        assert srv.max_in_flight == 12
    # a cap the user set (a provider's rate limit, say) is kept, and named
    with scripted_server(answering_policy(delay_s=0.05)) as srv:
        result = subprocess.run(
            bench_cmd(suite, tmp_path / "capped", srv.url, "--index", drb_index, "--concurrency", "12"),
            capture_output=True,
            env={**os.environ, "DR_LLM_CONCURRENCY": "3"},
        )
        assert result.returncode == 0, result.stderr
        assert srv.max_in_flight <= 3
    assert b"12 calls at once share 3 model requests at a time (environment variable DR_LLM_CONCURRENCY)" in (
        result.stderr
    )


def test_serve_refuses_an_endpoint_given_beside_it_and_names_a_server_that_dies(tmp_path, drb_index):
    suite = tmp_path / "suite.jsonl"
    suite.write_text(
        json.dumps({"id": "q", "question": "Where?", "type": "deep_search", "answer": "X"}) + "\n"
    )
    both = subprocess.run(
        [*DR, "bench", "run", "--suite", str(suite), "-o", str(tmp_path / "b"), "--serve", str(tmp_path),
         "--base-url", "http://127.0.0.1:9/v1", "--no-web"],
        capture_output=True, timeout=120,
    )  # fmt: skip
    assert both.returncode == 2 and b"--serve serves the model here" in both.stderr
    # a bad setting is found before a server starts
    unindexed = subprocess.run(
        [*DR, "bench", "run", "--suite", str(suite), "-o", str(tmp_path / "u"), "--serve", str(tmp_path),
         "--serve-engine", "transformers", "--no-web"],
        capture_output=True, timeout=120,
    )  # fmt: skip
    assert unindexed.returncode == 2 and b"needs an index folder" in unindexed.stderr
    assert not (tmp_path / "u" / "serve.log").exists()
    # a folder that holds no model: the server exits before it is ready, and the error names its log
    empty = tmp_path / "no-model"
    empty.mkdir()
    died = subprocess.run(
        [*DR, "bench", "run", "--suite", str(suite), "-o", str(tmp_path / "d"), "--serve", str(empty),
         "--serve-engine", "transformers", "--no-web", "--index", str(drb_index)],
        capture_output=True, timeout=300,
    )  # fmt: skip
    assert died.returncode == 3, died.stderr.decode()[-2000:]
    assert b"before it was ready" in died.stderr and str(tmp_path / "d" / "serve.log").encode() in died.stderr
    assert b"Traceback" not in died.stderr
