"""Settings that are checked, and errors that say what is wrong in one line: resume comparisons derived
from the config, `dr serve`'s ports and flags, `--rollout-url`, the small ones, and a served context
length smaller than the agent's."""

from __future__ import annotations

import json
import shutil
import socket

import pytest

from support.cli import dr
from support.openai_server import Reply, scripted_server
from support.policies import call, tool_results


def one_line_error(result, code=2):
    err = result.stderr.decode()
    assert result.returncode == code, err[-3000:]
    assert "Traceback" not in err and "╭" not in err, err[-3000:]  # neither Python's nor Rich's
    return err


# ---- 11. resume compares every setting that changes the result --------------------------------------


def sft_examples(path):
    from support.samples import distinct

    path.write_text("".join(json.dumps(distinct(i)) + "\n" for i in range(4)))
    return path


@pytest.mark.slow
def test_resume_refuses_a_changed_rope_theta_and_a_finished_run_asked_for_with_changes(tmp_path):
    source = sft_examples(tmp_path / "data.jsonl")
    out = tmp_path / "run"
    base = ["train", "sft", source, "-o", out, "--max-len", "1024", "--vocab-size", "300", "--max-steps", "2"]
    first = dr(*base, "--save-every", "1", "--rope-theta", "10000")
    assert first.returncode == 0, first.stderr.decode()[-3000:]
    # a finished run asked for again with other settings: refused, not "nothing to resume"
    changed = one_line_error(dr(*base, "--save-every", "1", "--rope-theta", "500000", "--resume"))
    assert "rope_theta 10000.0 then, 500000.0 now" in changed
    same = dr(*base, "--save-every", "1", "--rope-theta", "10000", "--resume")
    assert same.returncode == 0 and b"nothing to resume" in same.stderr
    # interrupted after checkpoint-1: a changed rope theta is refused too
    for name in ("trainer_state.json", "model.safetensors"):
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(out / "checkpoint-2", ignore_errors=True)
    changed = one_line_error(dr(*base, "--save-every", "1", "--rope-theta", "500000", "--resume"))
    assert "rope_theta 10000.0 then, 500000.0 now" in changed


def test_every_config_field_is_compared_on_resume_or_declared_free():
    from dr_train.recipes.lm import LMConfig
    from dr_train.recipes.rl import RLRecipeConfig

    lm = LMConfig(stage="sft", out="o")
    assert set(lm.resume_keys()) == set(LMConfig.model_fields) - LMConfig.RESUME_FREE
    assert {"rope_theta", "rope_scaling", "max_positions", "model", "lr", "seed"} <= set(lm.resume_keys())
    rl = RLRecipeConfig(out="o", model="m")
    assert set(rl.resume_keys()) == set(RLRecipeConfig.model_fields) - RLRecipeConfig.RESUME_FREE
    assert {"judge_model", "max_steps", "max_tokens", "model", "lr", "tis_cap"} <= set(rl.resume_keys())
    # what is free changes where the run writes or how it is run, not what it learns
    assert set(LMConfig.model_fields) >= LMConfig.RESUME_FREE
    assert set(RLRecipeConfig.model_fields) >= RLRecipeConfig.RESUME_FREE


# ---- 12. dr serve ------------------------------------------------------------------------------------


@pytest.fixture
def checkpoint(tmp_path):
    (tmp_path / "config.json").write_text(
        json.dumps({"model_type": "qwen2", "max_position_embeddings": 4096})
    )
    return tmp_path


def test_serve_refuses_a_port_in_use_before_starting_anything(checkpoint):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = dr("serve", checkpoint, "--engine", "transformers", "--port", port, timeout=60)
        err = one_line_error(result)
        assert f"127.0.0.1:{port} is already in use" in err and "starting" not in err
        api = dr("serve", "--engine", "none", "--api-port", port, timeout=60)
        assert f"127.0.0.1:{port} is already in use" in one_line_error(api)


@pytest.mark.parametrize(
    "flags",
    [["--tp", "0"], ["--pp", "0"], ["--kv-cache-gib", "0"], ["--cpu-threads", "0"], ["--port", "70000"],
     ["--api-port", "0"], ["--max-model-len", "0"]],
)  # fmt: skip
def test_serve_validates_each_flag_in_one_line(checkpoint, flags):
    result = dr("serve", checkpoint, "--dry-run", *flags, timeout=60)
    assert flags[0] in one_line_error(result)


# ---- 13. --rollout-url ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "root"),
    [
        ("http://127.0.0.1:8000/v1", "http://127.0.0.1:8000"),
        ("http://127.0.0.1:8000/v1/", "http://127.0.0.1:8000"),
        ("http://127.0.0.1:8000", "http://127.0.0.1:8000"),
        ("https://engine.example/v1", "https://engine.example"),
    ],
)
def test_rollout_urls_take_the_form_dr_serve_prints(given, root):
    from dr_train.rl.engines import server_root

    assert server_root(given) == root


def test_a_rollout_url_with_v1_reaches_the_server_and_a_bad_one_is_one_line(tmp_path):
    from dr_train.rl.engines import VLLMServers

    with scripted_server([Reply()], max_model_len=2048) as server:
        engines = VLLMServers([server.url])  # ends in /v1, as dr serve prints it
        engines.check()
        assert engines.model == "m"
        engines.close()
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text(json.dumps({"id": "t", "question": "q", "answer": "a"}) + "\n")
    bad = dr("train", "rl", tasks, "--model", tmp_path, "--rollout-url", "http://h:notaport/v1", timeout=120)
    assert "notaport" in one_line_error(bad)


# ---- 14. the small ones -----------------------------------------------------------------------------------


def test_the_oracle_with_skip_keeps_going_past_a_bad_task_line(tmp_path):
    world = tmp_path / "world"
    assert dr("data", "world", "--out", world, "--entities", "40", "--tasks", "20").returncode == 0
    index = tmp_path / "index"
    assert dr("data", "index", world / "corpus.jsonl", "-i", index).returncode == 0
    tasks = tmp_path / "tasks.jsonl"
    lines = (world / "train.jsonl").read_text().splitlines()
    tasks.write_text("\n".join([lines[0], "{broken", *lines[1:4]]) + "\n")
    out = tmp_path / "traj.jsonl"
    result = dr("data", "trajectories", tasks, "-o", out, "--index", index, "--on-error", "skip")
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    assert len(out.read_text().splitlines()) == 4
    rejects = [json.loads(line) for line in (tmp_path / "traj.jsonl.rejects.jsonl").read_text().splitlines()]
    assert [r["line"] for r in rejects] == [2]


def test_the_left_as_it_was_message_names_resume_only_where_it_exists(tmp_path, caplog):
    from dr_core.jsonl import RecordWriter

    for resumable, offered in ((True, True), (False, False)):
        caplog.clear()
        with caplog.at_level("WARNING", logger="dr"), pytest.raises(KeyboardInterrupt):
            with RecordWriter(tmp_path / f"{resumable}.jsonl", resumable=resumable) as writer:
                writer.write({"id": "a"})
                raise KeyboardInterrupt
        assert ("--resume continues from them" in caplog.text) is offered


def test_dr_data_sft_interrupted_does_not_point_to_a_resume_it_lacks(tmp_path):
    from support.samples import distinct

    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps(distinct(0)) + "\n{broken\n")
    result = dr("data", "sft", source, "-o", tmp_path / "out.jsonl")
    err = one_line_error(result)
    assert "in.jsonl:2" in err and "--resume" not in err


def test_bench_report_on_an_interrupted_run_gives_the_command_that_resumes_it(tmp_path):
    run = tmp_path / "bench"
    run.mkdir()
    (run / "trajectories.jsonl.partial").write_text("")
    (run / "command.txt").write_text("dr bench run --suite world:0 --out runs/bench --resume\n")
    err = one_line_error(dr("bench", "report", run))
    assert "interrupted" in err and "dr bench run --suite world:0 --out runs/bench --resume" in err


def test_the_recorded_resume_command_hides_keys():
    from dr_bench.runner import resume_command

    line = resume_command(
        ["dr", "bench", "run", "--suite", "s x", "--api-key", "sk-123", "--judge-api-key=k2"]
    )
    assert "sk-123" not in line and "k2" not in line
    assert line.startswith("dr bench run --suite 's x' --api-key") and line.endswith("--resume")


def test_a_deepresearch_bench_line_without_article_names_the_missing_field(tmp_path):
    source = tmp_path / "reports.jsonl"
    source.write_text(json.dumps({"id": 1, "prompt": "Write about X"}) + "\n")
    err = one_line_error(dr("data", "index", source, "-i", tmp_path / "idx"))
    assert "reports.jsonl:1" in err and "field 'article' is missing" in err and "'text'" in err


def test_fingerprint_differences_name_the_settings():
    from dr_bench.fingerprint import differences

    a = {"agent": "d1", "agent_settings": {"max_tokens": 12000, "max_steps": 8}, "search": "Local"}
    b = {"agent": "d2", "agent_settings": {"max_tokens": 20000, "max_steps": 8}, "search": "Local"}
    assert differences({"a": a, "b": b}) == ["agent: max_tokens 12000 (a) vs 20000 (b)"]


# ---- 15. a served context smaller than the agent's ------------------------------------------------------


def test_a_run_against_a_4096_token_server_manages_its_context_and_never_fails(drb_index):
    from dr_agent.agent import AgentConfig, ResearchAgent
    from dr_agent.index import LocalIndex
    from dr_agent.search import LocalBackend
    from dr_core.llm import LLMClient, LLMConfig

    limit = 4096
    accepted: list[int] = []

    def server(body):
        tokens = (len(json.dumps(body["messages"])) + len(json.dumps(body.get("tools") or []))) // 3
        if tokens + body["max_tokens"] > limit:
            message = (
                f"This model's maximum context length is {limit} tokens. However, you requested "
                f"{tokens + body['max_tokens']} tokens"
            )
            return Reply(status=400, error_body=json.dumps({"object": "error", "message": message}))
        accepted.append(body["max_tokens"])
        results = tool_results(body)
        opened = [r for r in results if r.startswith("# [")]
        if len(opened) >= 6:
            first = opened[0].split("]", 1)[0][3:]
            return Reply(
                content=None,
                tool_calls=[call("answer", text=f"Done \\cite{{{first}}}.")],
                prompt_tokens=tokens,
            )
        if results and not results[-1].startswith("# ["):
            hits = [line[1:].split("]", 1)[0] for line in results[-1].splitlines() if line.startswith("[")]
            unseen = [h for h in hits if f"# [{h}]" not in "".join(opened)]
            if unseen:
                return Reply(content=None, tool_calls=[call("open", ids=unseen[:1])], prompt_tokens=tokens)
        words = ["education", "energy", "health", "finance", "climate", "trade", "law", "media"]
        query = words[len(results) % len(words)]
        return Reply(content=None, tool_calls=[call("search", queries=[query])], prompt_tokens=tokens)

    with scripted_server(server, max_model_len=limit) as srv:
        llm = LLMClient(LLMConfig(base_url=srv.url, model="m", backoff_s=0.01))
        agent = ResearchAgent(llm, LocalBackend(LocalIndex(drb_index)), None, AgentConfig(max_steps=40))
        assert agent.context_window() == limit
        trajectory = agent.run("What do the reports cover?")
    assert trajectory.stop_reason in ("answered", "context_limit"), trajectory.meta.get("error")
    assert "error" not in trajectory.meta
    assert accepted and max(accepted) <= limit // 4  # a reply keeps to a quarter of the small window
    assert trajectory.meta["compactions"] >= 1, (trajectory.stop_reason, trajectory.steps, len(accepted))
