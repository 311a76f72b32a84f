"""A judge measured against the world's true verdicts: the examples it trains on are the very requests
`dr judge score --batch 1 --no-checks` sends; an item it cannot rule on is an abstention, never a silent 0
or 1; `dr judge agree` counts abstentions apart; a model folder trained for another prompt warns."""

from __future__ import annotations

import contextlib
import json
import random
from pathlib import Path

import pytest

from dr_core.llm import LLMClient, LLMConfig
from dr_core.models import PROMPT_FILE
from dr_core.records import Task
from dr_data.judge_data import examples, oracle_report, perturb, reports
from dr_data.report_tasks import sample_report_tasks
from dr_data.world import build_world
from dr_judge.build import make_judge
from dr_judge.judge import PROMPT_DIGEST, ChecklistJudge, JudgeConfig, judge_reply
from support import must
from support.cli import dr, dr_world
from support.openai_server import Reply, scripted_server


@pytest.fixture(scope="module")
def task() -> Task:
    return next(iter(sample_report_tasks(build_world(seed=2, n_entities=400), 1, test_share=0.2)))


def rule_server(task: Task, text: str):
    """A judge that answers each one-item request with the rule's verdict, as a perfect trained judge."""
    from dr_data.judge_data import true_verdict

    by_id = {item.id: item for item in task.checklist}

    def reply(body):
        user = body["messages"][-1]["content"]
        ids = [part.split("]", 1)[0] for part in user.split("\n- [")[1:]]
        return Reply(content=judge_reply([(i, true_verdict(by_id[i], text), "evidence") for i in ids]))

    return reply


@pytest.mark.parametrize("per_call", [0, 1, 5])
def test_judge_examples_are_the_requests_the_judge_sends(task, per_call):
    report = next(r for r in reports(task, 1, random.Random(0)) if r.meta["perturbation"] != "none")
    made = [example for example, _ in examples(task, report, per_call)]
    with scripted_server(rule_server(task, report.text)) as srv:
        judge = ChecklistJudge(
            LLMClient(LLMConfig(base_url=srv.url, model="judge")), JudgeConfig(batch=per_call, checks=False)
        )
        judgment = judge.judge(task, report.text, report.id)
    assert len(srv.requests) == len(made) == -(-len(task.checklist) // (per_call or len(task.checklist)))
    truth = ChecklistJudge(None).judge(task, report.text, report.id)
    for example, request in zip(made, srv.requests, strict=True):
        sent = [(m["role"], m["content"]) for m in request["messages"]]
        assert sent == [(m.role, m.content) for m in example.messages[:2]]
        reply = json.loads(must(example.messages[2].content))["verdicts"]
        assert [v["id"] for v in reply] == example.meta["items"]
        assert [v["verdict"] for v in reply] == example.meta["verdicts"]
    assert [v.verdict for v in judgment.verdicts] == [v.verdict for v in truth.verdicts]
    assert judgment.score == truth.score and not any(v.deterministic for v in judgment.verdicts)


def test_a_reply_cut_off_at_max_tokens_is_an_abstention_and_the_report_has_no_score(task):
    cut = Reply(content='{"verdicts":[{"id":"fact1","verd', finish_reason="length")
    with scripted_server([cut]) as srv:
        judge = ChecklistJudge(
            LLMClient(LLMConfig(base_url=srv.url, model="judge")),
            JudgeConfig(checks=False, max_output_tokens=16),
        )
        judgment = judge.judge(task, oracle_report(task), "r")
    assert {v.verdict for v in judgment.verdicts} == {"abstain"}
    assert judgment.score is None and "max_tokens 16" in judgment.verdicts[0].rationale
    assert len(srv.requests) == 1  # not sent back: the same limit would cut it again


def test_a_response_cut_for_grading_turns_unfound_items_into_abstentions(task):
    text = oracle_report(task) + " " + "filler " * 300

    def all_not_met(body):
        user = body["messages"][-1]["content"]
        ids = [part.split("]", 1)[0] for part in user.split("- [")[1:]]
        return Reply(content=judge_reply([(i, "not_met", "absent") for i in ids]))

    with scripted_server(all_not_met) as srv:
        judge = ChecklistJudge(
            LLMClient(LLMConfig(base_url=srv.url, model="judge")),
            JudgeConfig(checks=False, max_response_chars=1000),
        )
        judgment = judge.judge(task, text, "r")
    assert {v.verdict for v in judgment.verdicts} == {"abstain"} and judgment.score is None
    assert "cut at 1000 characters" in judgment.verdicts[0].rationale


def test_a_fatal_flaw_found_scores_zero_even_beside_abstentions(task):
    text = perturb(task, "fabricate_citation", random.Random(0))
    assert text is not None

    def reply(body):
        user = body["messages"][-1]["content"]
        ids = [part.split("]", 1)[0] for part in user.split("- [")[1:]]
        if ids == ["fatal"]:
            return Reply(content=judge_reply([("fatal", "met", "made up")]))
        return Reply(content='{"verdicts":[{"id":"', finish_reason="length")

    with scripted_server(reply) as srv:
        judge = ChecklistJudge(
            LLMClient(LLMConfig(base_url=srv.url, model="judge")), JudgeConfig(checks=False, batch=1)
        )
        judgment = judge.judge(task, text, "r")
    assert judgment.score == 0.0 and judgment.fatal
    assert sum(v.verdict == "abstain" for v in judgment.verdicts) == len(task.checklist) - 1


def test_agree_measures_a_judge_against_true_verdicts_with_abstentions_apart(tmp_path, task):
    made = list(reports(task, 4, random.Random(3)))
    (tmp_path / "tasks.jsonl").write_text(task.model_dump_json() + "\n")
    (tmp_path / "reports.jsonl").write_text("".join(r.model_dump_json() + "\n" for r in made))
    truth = tmp_path / "truth.jsonl"
    result = dr("judge", "score", tmp_path / "reports.jsonl", "-t", tmp_path / "tasks.jsonl", "-o", truth)
    assert result.returncode == 0, result.stderr
    # a judge that errs on one item of the oracle's report and abstains on one of another
    rows = [json.loads(line) for line in truth.read_text().splitlines()]
    assert [r["meta"]["perturbation"] for r in rows] == [r.meta["perturbation"] for r in made]
    predicted = [dict(r, verdicts=[dict(v) for v in r["verdicts"]]) for r in rows]
    predicted[0]["verdicts"][0]["verdict"] = "not_met"
    predicted[0]["score"] = 0.9
    predicted[1]["verdicts"][0]["verdict"] = "abstain"
    predicted[1]["score"] = None
    (tmp_path / "pred.jsonl").write_text("".join(json.dumps(r) + "\n" for r in predicted))
    result = dr(
        "judge", "agree", tmp_path / "pred.jsonl", truth, "--pred-key", "target_id", "--label-key",
        "target_id", "-t", tmp_path / "tasks.jsonl", "--resamples", "200",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    items = sum(len(r["verdicts"]) for r in rows)
    stats = out["verdicts"]
    assert stats["items"] == items and stats["abstained"] == 1
    assert stats["accuracy"]["value"] == pytest.approx((items - 2) / (items - 1))
    assert stats["scored_responses"] == len(rows) - 1
    assert stats["score_abs_error"]["value"] == pytest.approx(0.1 / (len(rows) - 1))
    assert out["by_group"]["none"]["accuracy"]["value"] < 1.0
    assert out["by_item_category"]["fact"]["abstained"] == 1
    low, high = stats["accuracy"]["ci95"]
    assert low <= stats["accuracy"]["value"] <= high


def test_a_judge_folder_trained_for_another_prompt_warns_naming_both(tmp_path, caplog):
    folder = tmp_path / "judge-model"
    folder.mkdir()
    (folder / PROMPT_FILE).write_text(json.dumps({"prompt_digests": ["0123456789ab"]}))
    with scripted_server([Reply()], root=str(folder)) as srv, caplog.at_level("WARNING", logger="dr"):
        make_judge(srv.url, "served-name")
    assert "0123456789ab" in caplog.text and PROMPT_DIGEST in caplog.text
    caplog.clear()
    (folder / PROMPT_FILE).write_text(json.dumps({"prompt_digests": [PROMPT_DIGEST]}))
    with caplog.at_level("WARNING", logger="dr"):
        make_judge("http://127.0.0.1:9/v1", str(folder))  # the model named by its folder
    assert "trained for checklist prompt" not in caplog.text


def test_sft_on_judge_examples_records_the_prompt_version_in_the_model_folder(tmp_path):
    world = tmp_path / "w"
    dr_world(world, 400, 5, 6)
    data = tmp_path / "judge.jsonl"
    result = dr("data", "judge", world / "reports-train.jsonl", "--limit", "16", "-o", data)
    assert result.returncode == 0, result.stderr
    out = tmp_path / "judge-model"
    result = dr(
        "train", "sft", data, "-o", out, "--max-len", "4096", "--max-steps", "1", "--vocab-size", "300",
        timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    recorded = json.loads((out / PROMPT_FILE).read_text())
    assert recorded["prompt_digests"] == [PROMPT_DIGEST]


def test_judge_data_and_agree_refuse_what_they_cannot_use_with_one_line(tmp_path):
    world = tmp_path / "w"
    dr_world(world, 400, 5, 0)
    result = dr("data", "judge", world / "train.jsonl", "-o", tmp_path / "j.jsonl")
    assert result.returncode == 2 and b"no world report tasks" in result.stderr
    assert b"Traceback" not in result.stderr and not (tmp_path / "j.jsonl").exists()
    (tmp_path / "a.jsonl").write_text('{"target_id": "x", "score": 1.0}\n')
    (tmp_path / "b.jsonl").write_text('{"target_id": "y", "score": 1.0}\n')
    result = dr("judge", "agree", tmp_path / "a.jsonl", tmp_path / "b.jsonl", "--pred-key", "target_id",
                "--label-key", "target_id")  # fmt: skip
    assert (
        result.returncode == 2 and b"no target_id of" in result.stderr and b"Traceback" not in result.stderr
    )


@pytest.mark.slow
def test_judge_serve_serves_a_judge_folder_for_the_run_and_stops_it_after(task, tmp_path):
    from support.tiny_model import tiny_qwen2

    model = tiny_qwen2(tmp_path / "judge-model")
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text(task.model_dump_json() + "\n")
    written = list(reports(task, 1, random.Random(0)))
    responses = tmp_path / "reports.jsonl"
    responses.write_text("".join(r.model_dump_json() + "\n" for r in written))
    out = tmp_path / "judged.jsonl"
    score = ["judge", "score", responses, "--tasks", tasks, "--no-checks", "-o", out]
    both = dr(*score, "--judge-serve", model, "--judge-base-url", "http://127.0.0.1:9/v1")
    assert both.returncode == 2 and b"--judge-serve serves the judge here" in both.stderr
    # the random model's replies run into the token limit: every item is an abstention that names it,
    # which only a judge that answered can give
    result = dr(*score, "--judge-serve", model, env={"DR_JUDGE_MAX_OUTPUT_TOKENS": "16"})
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    judgments = [json.loads(line) for line in out.read_text().splitlines()]
    assert [j["target_id"] for j in judgments] == [r.id for r in written]
    verdicts = [v for j in judgments for v in j["verdicts"]]
    assert verdicts and all(v["verdict"] == "abstain" and "max_tokens 16" in v["rationale"] for v in verdicts)
    assert (tmp_path / "judged.jsonl.judge-serve.log").stat().st_size > 0  # the server's own output
    # nothing of the server is left running
    assert not [line for line in processes() if str(model) in line]


def processes() -> list[str]:
    """The command line of every process still running."""
    lines = []
    for path in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):  # it ended meanwhile
            lines.append(path.read_bytes().replace(b"\0", b" ").decode(errors="replace"))
    return lines
