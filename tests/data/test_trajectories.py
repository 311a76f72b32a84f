"""Teacher trajectories: the oracle solves every world task through the real agent loop; error
reflection with an endpoint teacher; hints scrubbed from what is kept."""

from __future__ import annotations

import json
import re
import subprocess

from dr_agent.agent import ResearchAgent
from dr_agent.index import LocalIndex
from dr_agent.search import LocalBackend
from dr_core.llm import LLMClient, LLMConfig
from dr_core.records import Task
from dr_data.trajectories import SELF_CHECK, Rejection, collect, scrub
from dr_judge.judge import ChecklistJudge
from support.cli import DR
from support.openai_server import Reply, scripted_server
from support.policies import call


def test_the_oracle_solves_every_world_task_through_the_real_agent_loop(tmp_path):
    world = tmp_path / "w"
    assert (
        subprocess.run(
            [*DR, "data", "world", "-o", str(world), "--entities", "500", "--tasks", "200"]
        ).returncode
        == 0
    )
    assert (
        subprocess.run(
            [*DR, "data", "index", str(world / "corpus.jsonl"), "-i", str(world / "index")]
        ).returncode
        == 0
    )
    out = tmp_path / "traj.jsonl"
    for split in ("train", "test"):
        cmd = [
            *DR,
            "data",
            "trajectories",
            str(world / f"{split}.jsonl"),
            "--index",
            str(world / "index"),
            "-o",
            str(out),
        ]
        result = subprocess.run([*cmd, "--resume"], capture_output=True)
        assert result.returncode == 0, result.stderr
    tasks = {
        t["id"]: t
        for s in ("train", "test")
        for t in map(json.loads, (world / f"{s}.jsonl").read_text().splitlines())
    }
    kept = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(t["task_id"] for t in kept) == sorted(tasks)
    judge = ChecklistJudge(None)
    for trajectory in kept:
        task = Task.model_validate(tasks[trajectory["task_id"]])
        assert trajectory["model"] == "oracle" and trajectory["stop_reason"] == "answered"
        names = [c["name"] for m in trajectory["messages"] for c in m.get("tool_calls", [])]
        assert names[0] == "plan" and "search" in names and "open" in names and names[-1] == "answer"
        assert all(c["opened"] for c in trajectory["citations"])
        assert judge.judge(task, trajectory["final"], trajectory["id"]).score == 1.0
        # a multi-hop task takes a search and an open per hop
        assert names.count("open") == len(task.meta["hops"])
        # after each article it opened, the teacher quotes the sentence it uses, word for word
        pages = [m["content"] for m in trajectory["messages"] if m["role"] == "tool"]
        quotes = [
            re.search(r'The article says: "(.+?)" ', m["content"] or "")
            for m in trajectory["messages"]
            if m["role"] == "assistant"
        ]
        found = [q.group(1) for q in quotes if q]
        assert len(found) == len(task.meta["hops"])
        assert all(any(q in page for page in pages if page.startswith("# [")) for q in found)
        assert task.answer in found[-1]


def test_a_wrong_attempt_is_retried_with_reflection_and_the_hint_is_scrubbed(tmp_path, drb_index):
    task = Task(id="q", question="Who founded Velmora?", type="deep_search", answer="Ada Quist")

    def teacher(body):
        tool_texts = [m.get("content") or "" for m in body["messages"] if m["role"] == "tool"]
        if not tool_texts:
            return Reply(content=None, tool_calls=[call("answer", text="Answer: Bo Lind")])
        if "does not hold up" in tool_texts[-1]:
            return Reply(
                content="The judge said my answer was wrong. Re-checking the founder.",
                tool_calls=[call("answer", text="Answer: Ada Quist")],
            )
        return Reply(content=None, tool_calls=[call("answer", text="Answer: Bo Lind")])

    with scripted_server(teacher) as srv:
        llm = LLMClient(LLMConfig(base_url=srv.url, model="teacher", backoff_s=0.01))
        agent = ResearchAgent(llm, LocalBackend(LocalIndex(drb_index)))
        outcome = collect(agent, ChecklistJudge(None), task, Rejection(samples=1, reflections=3))
        hint_seen = [m["content"] for m in srv.requests[1]["messages"] if m["role"] == "tool"][-1]
    assert "does not hold up: does not match the reference answer" in hint_seen
    [kept] = outcome.kept
    assert kept.final == "Answer: Ada Quist" and kept.meta["reflections"] == 1
    texts = [m.content or "" for m in kept.messages]
    assert SELF_CHECK in texts and not any("does not hold up" in t or "reference answer" in t for t in texts)
    reflection = [m.content for m in kept.messages if m.role == "assistant" and m.content]
    assert reflection == ["Re-checking the founder."]  # "The judge said ..." is scrubbed


def test_tasks_never_solved_are_rejected_after_the_reflections(tmp_path, drb_index):
    task = Task(id="q", question="Who founded Velmora?", type="deep_search", answer="Ada Quist")
    with scripted_server([Reply(content=None, tool_calls=[call("answer", text="Answer: Bo Lind")])]) as srv:
        agent = ResearchAgent(
            LLMClient(LLMConfig(base_url=srv.url, model="t")), LocalBackend(LocalIndex(drb_index))
        )
        outcome = collect(agent, ChecklistJudge(None), task, Rejection(samples=2, reflections=2))
    assert outcome.kept == [] and outcome.correct == 0
    assert len(srv.requests) == 2 * 3  # each sample: the attempt and two reflections


def test_shortest_correct_sample_is_kept(drb_index):
    task = Task(id="q", question="Who founded Velmora?", type="deep_search", answer="Ada Quist")
    script = [
        Reply(content=None, tool_calls=[call("search", queries=["Velmora"])]),
        Reply(content=None, tool_calls=[call("answer", text="Answer: Ada Quist")]),
        Reply(content=None, tool_calls=[call("answer", text="Answer: Ada Quist")]),
    ]
    with scripted_server(script) as srv:
        agent = ResearchAgent(
            LLMClient(LLMConfig(base_url=srv.url, model="t")), LocalBackend(LocalIndex(drb_index))
        )
        outcome = collect(agent, ChecklistJudge(None), task, Rejection(samples=2))
        everything = collect(agent, ChecklistJudge(None), task, Rejection(samples=2, keep="all"))
    assert outcome.correct == 2 and [t.steps for t in outcome.kept] == [1]
    assert len(everything.kept) == 2


def test_scrub_leaves_clean_trajectories_alone(drb_index):
    from dr_core.records import Message, Trajectory

    trajectory = Trajectory(
        messages=[Message(role="user", content="q"), Message(role="assistant", content="Plain.")]
    )
    assert scrub(trajectory, set()) == trajectory


def test_resume_keeps_every_sample_of_a_task_and_redoes_a_task_cut_short(tmp_path):
    world = tmp_path / "w"
    run = lambda *a: subprocess.run([*DR, *map(str, a)], capture_output=True)  # noqa: E731
    assert run("data", "world", "-o", world, "--entities", "150", "--tasks", "30").returncode == 0
    assert run("data", "index", world / "corpus.jsonl", "-i", world / "index").returncode == 0
    out = tmp_path / "ka.jsonl"
    cmd = ["data", "trajectories", world / "train.jsonl", "--index", world / "index", "--samples", "3"]
    assert run(*cmd, "--keep", "all", "-o", out).returncode == 0
    written = out.read_bytes().splitlines()
    tasks = {json.loads(line)["task_id"] for line in written}
    assert len(written) == 3 * len(tasks)  # the oracle is right every time: three samples per task
    result = run(*cmd, "--keep", "all", "-o", out, "--resume")
    assert result.returncode == 0, result.stderr
    assert out.read_bytes().splitlines() == written
    # a run killed after the first of a task's three samples: that task is done again, whole
    out.unlink()
    (tmp_path / "ka.jsonl.partial").write_bytes(b"\n".join(written[:4]) + b"\n")
    result = run(*cmd, "--keep", "all", "-o", out, "--resume")
    assert result.returncode == 0, result.stderr
    samples = lambda lines: sorted(  # noqa: E731 - (task, sample) of each record; wall_s differs per run
        (json.loads(line)["task_id"], json.loads(line)["meta"]["sample"]) for line in lines
    )
    assert samples(out.read_bytes().splitlines()) == samples(written)
    assert out.read_bytes().splitlines()[:3] == written[:3]  # the first task's records were carried over


def test_the_oracle_writes_the_same_trajectories_on_four_threads_as_on_one(tmp_path):
    world = tmp_path / "w"
    run = lambda *a: subprocess.run([*DR, *map(str, a)], capture_output=True)  # noqa: E731
    assert run("data", "world", "-o", world, "--entities", "150", "--tasks", "30").returncode == 0
    assert run("data", "index", world / "corpus.jsonl", "-i", world / "index").returncode == 0
    got = {}
    for concurrency in (1, 4):
        out = tmp_path / f"c{concurrency}.jsonl"
        cmd = ["data", "trajectories", world / "train.jsonl", "--index", world / "index", "-o", out]
        assert run(*cmd, "--concurrency", concurrency).returncode == 0
        got[concurrency] = [
            (t["task_id"], t["messages"]) for t in map(json.loads, out.read_bytes().splitlines())
        ]
    assert got[1] == got[4] and len(got[1]) > 10
