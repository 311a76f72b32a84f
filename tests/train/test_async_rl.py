"""Asynchronous RL's rollout stream (dr_train.rl.stream): how far sampling runs ahead of the update, which groups
are too stale to train on, and errors; and the settings `dr train rl --max-staleness` refuses. The run itself,
through a vLLM engine, is in test_vllm_rollouts.py."""

from __future__ import annotations

import json
import subprocess
import threading
from dataclasses import dataclass, field

import pytest

from dr_core.extras import available
from dr_core.records import Task
from dr_train.config import RLConfig
from dr_train.rl.policy import Turn
from dr_train.rl.stream import RolloutStream
from support import must
from support.cli import DR


@dataclass
class FakeRollout:
    task: Task
    turns: list[Turn] = field(default_factory=list)
    scored: float | None = None


class Sampler:
    """Rollouts whose tokens carry the version `engines` holds when each one starts; a task named in `hold`
    waits for its event before it returns (and its tokens carry the version it started under)."""

    def __init__(self) -> None:
        self.version = 0
        self.started: list[tuple[int, str]] = []
        self.hold: dict[str, threading.Event] = {}
        self.fail: str | None = None
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)

    def rollout(self, step: int, index: int, task: Task) -> FakeRollout:
        with self.lock:
            self.started.append((step, task.id))
            version = self.version
            self.changed.notify_all()
        if task.id in self.hold:
            self.hold[task.id].wait(timeout=30)
        if task.id == self.fail:
            raise RuntimeError(f"engine gone while sampling {task.id}")
        return FakeRollout(task, [Turn([1, 2], [3, 4, 5], [-0.1] * 3, [version] * 3)])

    def wait_started(self, count: int) -> None:
        with self.lock:
            assert self.changed.wait_for(lambda: len(self.started) >= count, timeout=30), self.started

    def score(self, rollouts: list[FakeRollout]) -> float:
        for r in rollouts:
            r.scored = 1.0
        return 0.25


def tasks_of(step: int) -> list[Task]:
    return [Task(id=f"s{step}-t{i}", question=f"q{step}.{i}", answer="a") for i in range(2)]


def stream(sampler: Sampler, max_staleness: int, steps: int = 4, concurrency: int = 2) -> RolloutStream:
    return RolloutStream(
        sampler.rollout,
        sampler.score,
        tasks_of,
        start=0,
        steps=steps,
        group=2,
        max_staleness=max_staleness,
        concurrency=concurrency,
    )


def test_with_no_staleness_the_next_steps_tasks_wait_for_the_update():
    sampler = Sampler()
    s = stream(sampler, 0)
    try:
        taken = s.take(0)
        assert sorted(g.task.id for g in taken.groups) == ["s0-t0", "s0-t1"]
        assert all(r.scored == 1.0 for g in taken.groups for r in g.rollouts)  # rewarded as they came in
        assert taken.dropped == 0 and sum(g.judge_s for g in taken.groups) == 0.5
        assert {step for step, _ in sampler.started} == {0}  # nothing of step 1 before the update
        sampler.version = 1
        s.advance(1)
        taken = s.take(1)
        assert sorted(g.task.id for g in taken.groups) == ["s1-t0", "s1-t1"]
        assert all(g.oldest() == 1 for g in taken.groups)
    finally:
        s.close()


def test_one_step_of_staleness_samples_the_next_steps_tasks_during_the_update_and_no_further():
    sampler = Sampler()
    s = stream(sampler, 1)
    try:
        s.take(0)
        sampler.wait_started(8)  # step 1's 2 groups of 2 start before any update
        assert {step for step, _ in sampler.started} == {0, 1}
        taken = s.take(1)  # sampled by version 0, one behind step 1: kept
        assert taken.dropped == 0 and all(g.oldest() == 0 for g in taken.groups)
        assert {step for step, _ in sampler.started} == {0, 1}  # step 2's wait for the engines' version 1
        sampler.version = 1
        s.advance(1)
        sampler.wait_started(12)
        assert {step for step, _ in sampler.started} == {0, 1, 2}
    finally:
        s.close()


def test_a_group_more_than_k_versions_behind_is_dropped_counted_and_replaced():
    sampler = Sampler()
    slow = threading.Event()
    sampler.hold["s0-t1"] = slow  # one group of step 0 takes far longer than the rest
    s = stream(sampler, 1, steps=3, concurrency=4)
    try:
        first = s.take(0)  # the first two groups to finish: s0-t0 and one of step 1's, sampled by version 0
        assert "s0-t1" not in [g.task.id for g in first.groups] and first.dropped == 0
        sampler.version = 1
        s.advance(1)  # step 2's groups start
        s.take(1)  # two of the three groups in by now; the third waits in the stream
        sampler.version = 2
        s.advance(2)  # all 3 steps' groups have started: none more
        wait_for(lambda: len(s._done) == 1)
        slow.set()  # it comes in sampled by version 0, while step 2 is taken: 2 behind, K = 1
        taken = s.take(2)
        assert taken.dropped == 1 and "s0-t1" not in [g.task.id for g in taken.groups]
        assert len(taken.groups) == 2 and all(2 - must(g.oldest()) <= 1 for g in taken.groups)
        assert sampler.started[-1] == (3, "s3-t0")  # the group started in its place: the next task in order
    finally:
        s.close()


def wait_for(condition, timeout: float = 30.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_an_error_while_sampling_is_raised_by_the_trainers_take():
    sampler = Sampler()
    sampler.fail = "s0-t1"
    s = stream(sampler, 1)
    try:
        with pytest.raises(RuntimeError, match="engine gone while sampling s0-t1"):
            s.take(0)
    finally:
        s.close()


def test_staleness_weights_stale_tokens_by_a_truncated_importance_ratio_unless_given():
    assert RLConfig(out="x").tis_cap is None
    assert RLConfig(out="x", max_staleness=2).tis_cap == 2.0
    assert RLConfig(out="x", max_staleness=2, tis_cap=5).tis_cap == 5


def dr(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*DR, *map(str, args)], capture_output=True, text=True, timeout=300)


def test_negative_staleness_staleness_without_vllm_and_nccl_without_cuda_are_refused(tmp_path):
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text(json.dumps({"id": "t", "question": "What is the answer?", "answer": "42"}) + "\n")
    negative = dr("train", "rl", tasks, "--model", tmp_path, "-o", tmp_path / "rl", "--max-staleness", "-1")
    assert negative.returncode == 2
    assert negative.stderr.strip() == "error: --max-staleness: Input should be greater than or equal to 0"
    from dr_train.model import RopeSettings, build

    model, tokenizer = build("tiny:qwen2", None, lambda: ["What is the answer? It is 42."] * 20, RopeSettings(), 0,
                             vocab_size=300)  # fmt: skip
    model.save_pretrained(tmp_path / "policy")
    tokenizer.save_pretrained(tmp_path / "policy")
    hf = dr("train", "rl", tasks, "--model", tmp_path / "policy", "-o", tmp_path / "rl", "--engine", "hf",
            "--max-staleness", "1")  # fmt: skip
    assert hf.returncode == 2 and "Traceback" not in hf.stderr
    assert "--max-staleness 1: with --engine hf the policy samples in the process that trains it" in hf.stderr
    assert not (tmp_path / "rl" / "metrics.jsonl").exists()
    nccl = dr("train", "rl", tasks, "--model", tmp_path / "policy", "-o", tmp_path / "rl", "--engine", "vllm",
              "--weight-sync", "nccl")  # fmt: skip
    assert nccl.returncode == 2 and "Traceback" not in nccl.stderr
    assert (
        "--weight-sync nccl: NCCL moves the weights from GPU to GPU, and this machine has no CUDA"
        in nccl.stderr
    )
    assert "use --weight-sync disk" in nccl.stderr


needs_vllm = pytest.mark.skipif(
    not available("vllm"), reason="vLLM is not installed (scripts/setup.sh installs it)"
)


@needs_vllm
def test_the_nccl_source_names_every_weight_the_engine_loads_and_a_hung_sync_names_the_engine(tmp_path):
    import time

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dr_train.rl.engines import EngineError, write_engine_weights
    from dr_train.rl.weight_sync import PolicySource, _within, reachable_address
    from dr_train.tiny import tiny_qwen2

    tiny = tiny_qwen2(tmp_path / "tiny")
    model = AutoModelForCausalLM.from_pretrained(tiny)
    source = PolicySource(model)
    meta = source.metadata()
    sent = list(source)
    # the same parameters in the same order on both channels (vLLM's sender checks this pair by pair)
    assert [(m.name, m.dtype, m.shape) for m in meta] == [(n, t.dtype, tuple(t.shape)) for n, t in sent]
    # every tensor of the folder the engine was started from, the output layer too (stored untied there)
    from safetensors import safe_open

    folder = write_engine_weights(model, AutoTokenizer.from_pretrained(tiny), tmp_path / "engine")
    stored = set()
    for path in folder.glob("*.safetensors"):
        with safe_open(str(path), "pt") as fh:
            stored |= set(fh.keys())
    assert "lm_head.weight" in stored and stored == {m.name for m in meta}
    assert reachable_address("http://127.0.0.1:8000") == "127.0.0.1"
    started = time.monotonic()
    with pytest.raises(EngineError) as hung:
        _within(0.5, lambda: time.sleep(30), "http://e1:8000", "sending the weights")
    assert time.monotonic() - started < 10
    text = str(hung.value)
    assert text.startswith("rollout engine http://e1:8000: sending the weights did not finish within 0 s")
    assert (
        "NCCL_CUMEM_ENABLE=0" in text and "NCCL_SOCKET_IFNAME" in text and "--weight-transfer-config" in text
    )
    with pytest.raises(EngineError, match=r"rollout engine http://e1:8000: joining failed: ValueError: bad"):
        _within(5, lambda: (_ for _ in ()).throw(ValueError("bad")), "http://e1:8000", "joining")
