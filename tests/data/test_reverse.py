"""`dr data reverse`: deterministic on every shared report; teacher mode against a server on loopback."""

from __future__ import annotations

import json
import subprocess

import pytest

from dr_core.errors import LLMError
from dr_core.llm import LLMClient, LLMConfig
from dr_core.records import Report
from dr_data.reverse import language, outline, reverse_with_teacher
from support.cli import DR
from support.openai_server import Reply, scripted_server


def test_without_a_teacher_every_shared_report_gets_a_query_and_a_plan(tmp_path, drb_reports):
    out, examples = tmp_path / "plans.jsonl", tmp_path / "examples.jsonl"
    cmd = [*DR, "data", "reverse", str(drb_reports), "-o", str(out), "--examples", str(examples)]
    result = subprocess.run(cmd, capture_output=True)
    assert result.returncode == 0, result.stderr
    plans = [json.loads(line) for line in out.read_text().splitlines()]
    reports = [json.loads(line) for line in drb_reports.read_text().splitlines()]
    assert len(plans) == len(reports) == 80
    for plan, report in zip(plans, reports, strict=True):
        assert plan["query"].strip() and len(plan["steps"]) >= 2
        assert plan["report_id"] == str(report["id"]) and plan["meta"]["true_prompt"] == report["prompt"]
        assert plan["language"] == language(report["prompt"])  # the report's language is the prompt's
        assert len(plan["checklist"]) == len(plan["steps"])
    for example in map(json.loads, examples.read_text().splitlines()):
        roles = [m["role"] for m in example["messages"]]
        assert roles == ["user", "assistant"] and example["messages"][1]["content"].startswith("1. ")


def test_outline_reads_title_sections_and_skips_reference_lists():
    text = "# Rivers of Auren\n\nIntro.\n\n## 1. Geography\n### Source\n### Mouth\n## History\n## References\n- a"
    assert outline(text) == ("Rivers of Auren", [("Geography", ["Source", "Mouth"]), ("History", [])])


REPORT_ZH = Report(
    id="r1",
    text="# 中国中产阶级研究\n\n中国中产阶级的规模与特点是本报告的主题，数据显示……\n\n## 收入\n\n内容。\n\n## 资产\n\n内容",
)
GOOD_ZH = {
    "query": "请研究中国中产阶级的规模和特点",
    "plan": [
        {"title": "界定中产", "description": "标准", "queries": ["中产 标准"]},
        {"title": "估算人数", "queries": []},
    ],
    "checklist": [
        {"text": "给出中产标准", "weight": 3},
        {"text": "编造数据", "weight": 2, "polarity": "negative"},
    ],
}


def teacher(url: str) -> LLMClient:
    return LLMClient(LLMConfig(base_url=url, model="teacher", backoff_s=0.01))


def test_teacher_mode_prompt_parsing_retries_and_language(tmp_path):
    english = {**GOOD_ZH, "query": "Study the size and traits of China's middle class"}
    script = [
        Reply(content="Sure! Here is the plan: ..."),  # no JSON
        Reply(content=json.dumps({**GOOD_ZH, "plan": [{"title": "only one"}]})),  # too short a plan
        Reply(content=json.dumps(english)),  # the wrong language
        Reply(content="```json\n" + json.dumps(GOOD_ZH, ensure_ascii=False) + "\n```"),
    ]
    with scripted_server(script) as srv:
        plan = reverse_with_teacher(REPORT_ZH, teacher(srv.url), retries=3)
    first = srv.requests[0]["messages"]
    assert (
        "reverse-engineer research reports" in first[0]["content"]
        and "language of the report" in first[0]["content"]
    )
    assert first[1]["content"].startswith("# Report\n\n# 中国中产阶级研究")
    corrections = [m["content"] for m in srv.requests[-1]["messages"] if m["role"] == "user"][1:]
    assert "no JSON object" in corrections[0]
    assert "at least two steps" in corrections[1]
    assert "in the report's language (zh)" in corrections[2]
    assert (
        plan.query == GOOD_ZH["query"]
        and plan.language == "zh"
        and [s.title for s in plan.steps] == ["界定中产", "估算人数"]
    )
    assert [(c.weight, c.polarity) for c in plan.checklist] == [(3.0, "positive"), (2.0, "negative")]
    assert plan.meta["teacher"] == "teacher" and plan.meta["teacher_attempts"] == 4


def test_teacher_that_never_complies_is_an_error():
    with scripted_server([Reply(content="no")]) as srv:
        with pytest.raises(LLMError, match="no usable reply after 2 tries"):
            reverse_with_teacher(REPORT_ZH, teacher(srv.url), retries=1)


def teacher_cmd(src, url) -> list[str]:
    """`dr data reverse SRC` with the model at `url` as the teacher."""
    return [*DR, "data", "reverse", str(src), "--teacher", "endpoint", "--base-url", url, "--model", "t"]


def test_teacher_mode_from_the_command_line(tmp_path):
    src = tmp_path / "reports.jsonl"
    src.write_text(REPORT_ZH.to_json().decode() + "\n")
    with scripted_server([Reply(content=json.dumps(GOOD_ZH))]) as srv:
        cmd = teacher_cmd(src, srv.url)
        result = subprocess.run(cmd, capture_output=True)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["query"] == GOOD_ZH["query"]


def test_the_teacher_reads_at_most_max_report_chars_and_writes_at_most_max_tokens(tmp_path):
    # a small model's context holds a few thousand characters of a 20K-character report
    long = Report(id="r1", text=REPORT_ZH.text + "\n\n" + "补充内容。" * 400)
    src = tmp_path / "reports.jsonl"
    src.write_text(long.to_json().decode() + "\n")
    with scripted_server(lambda body: Reply(content=json.dumps(GOOD_ZH))) as srv:
        cmd = teacher_cmd(src, srv.url)
        whole = subprocess.run(cmd, capture_output=True)
        clipped = subprocess.run(
            [*cmd, "--max-report-chars", "1000", "--max-tokens", "300"], capture_output=True
        )
        read = [body["messages"][1]["content"] for body in srv.requests]
        caps = [body.get("max_tokens") for body in srv.requests]
    assert whole.returncode == 0 and clipped.returncode == 0, clipped.stderr
    assert read == ["# Report\n\n" + long.text, "# Report\n\n" + long.text[:1000] + "\n[...]"]
    assert json.loads(clipped.stdout)["query"] == GOOD_ZH["query"]
    assert caps == [None, 300]  # --max-tokens caps each teacher reply


def test_a_report_the_teacher_never_gets_right_goes_to_the_rejects_and_the_run_goes_on(tmp_path):
    second = REPORT_ZH.model_copy(update={"id": "other", "text": REPORT_ZH.text + "\n[second]"})
    src = tmp_path / "reports.jsonl"
    src.write_text(REPORT_ZH.to_json().decode() + "\n" + second.to_json().decode() + "\n")

    def policy(body):  # the first report: unusable every time; the second: right after one send-back
        sent_back = len(body["messages"]) > 2
        right = sent_back and body["messages"][1]["content"].endswith("[second]")
        return Reply(content=json.dumps(GOOD_ZH) if right else "no JSON here")

    out = tmp_path / "plans.jsonl"
    with scripted_server(policy) as srv:
        result = subprocess.run(
            [*teacher_cmd(src, srv.url), "-o", str(out), "--concurrency", "1"], capture_output=True
        )
    assert result.returncode == 0, result.stderr
    plans = [json.loads(line) for line in out.read_text().splitlines()]
    assert [p["report_id"] for p in plans] == ["other"] and plans[0]["meta"]["teacher_attempts"] == 2
    rejects = [json.loads(line) for line in (tmp_path / "plans.jsonl.rejects.jsonl").read_text().splitlines()]
    assert len(rejects) == 1 and "no usable reply after 3 tries" in rejects[0]["error"]
    assert rejects[0]["file"] == str(src) and rejects[0]["line"] == 1
    assert rejects[0]["raw"] == src.read_text().splitlines()[0]
    assert b"1 plans passed validation (1 after a send-back); 1 reports refused" in result.stderr
    assert b"sent back for correction (1 of 2)" in result.stderr
