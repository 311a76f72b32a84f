"""`dr data sft`: examples and their loss turns; dedup and decontamination remove exactly what was planted."""

from __future__ import annotations

import json
import subprocess

from dr_core.records import Example, Message, ToolCall
from dr_data import sft
from dr_data.sft import mixed_language, mixing_shares, repetition, to_example
from support import must
from support.cli import DR
from support.samples import distinct, trajectory


def test_trajectories_become_examples_with_loss_on_assistant_turns():
    kind, maybe = to_example(distinct(0))
    example = must(maybe)
    assert kind == "trajectory" and example.loss_indices() == [2, 4]
    assert example.messages[2].tool_calls[0].name == "search" and example.tools
    unanswered = {**distinct(1), "final": None, "stop_reason": "step_budget"}
    assert to_example(unanswered) == ("trajectory", None)
    # built without a second validation, it is the example validation would have made
    assert Example.model_validate(example.model_dump()) == example
    assert example.model_dump() == Example(**dict(example)).model_dump()
    kind, maybe = to_example({"id": "7", "prompt": "Write about X", "article": "X is ..."})
    assert kind == "report" and [m.role for m in must(maybe).messages] == ["user", "assistant"]


def test_dedup_and_decontamination_remove_exactly_the_planted_ones(tmp_path):
    rows = [distinct(i) for i in range(10)]
    # planted near-duplicates: copies of 2 and 5 with one word changed
    rows.append({**distinct(2), "id": "dup-of-2", "final": distinct(2)["final"].replace("grew", "rose")})
    dup5 = distinct(5)
    dup5["messages"][1]["content"] += " Thanks!"
    rows.append({**dup5, "id": "dup-of-5"})
    # planted leaks: two examples asking a benchmark question inside a longer prompt
    bench_questions = [
        "What were the main causes of the decline of the Hanseatic salt routes in the fifteenth century?",
        "请分析二十世纪初江南地区丝绸产业衰落的主要原因",
    ]
    rows.append(
        trajectory(100, f"For my class: {bench_questions[0]} Please be brief.", "The salt routes declined.")
    )
    rows.append(trajectory(101, f"帮我看看：{bench_questions[1]}，谢谢", "主要原因是机器织造的冲击。"))
    src = tmp_path / "traj.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    bench = tmp_path / "bench.jsonl"
    bench.write_text(
        "".join(json.dumps({"id": f"b{i}", "question": q}) + "\n" for i, q in enumerate(bench_questions))
    )
    out, removed = tmp_path / "sft.jsonl", tmp_path / "removed.jsonl"
    cmd = [
        *DR,
        "data",
        "sft",
        str(src),
        "-o",
        str(out),
        "--decontaminate",
        str(bench),
        "--removed",
        str(removed),
    ]
    result = subprocess.run(cmd, capture_output=True)
    assert result.returncode == 0, result.stderr
    kept = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert kept == [f"example-traj-{i}" for i in range(10)]
    reasons = {r["id"]: r["reason"] for r in map(json.loads, removed.read_text().splitlines())}
    assert set(reasons) == {"example-dup-of-2", "example-dup-of-5", "example-traj-100", "example-traj-101"}
    assert reasons["example-dup-of-2"] == "duplicate: near-duplicate of example-traj-2"
    assert (
        reasons["example-traj-100"].startswith("contamination: shares")
        and "benchmark task b0" in reasons["example-traj-100"]
    )
    assert "benchmark task b1" in reasons["example-traj-101"]


def test_repetitive_loops_are_detected():
    call = ToolCall(id="c", name="search", arguments={"queries": ["same"]})
    looping = Example(
        messages=[Message(role="user", content="q")] + [Message(role="assistant", tool_calls=[call])] * 3
    )
    assert repetition(looping) == "tool call search repeated 3 times with the same arguments"
    text = "I will check the sources again to be sure. " * 5
    assert "repeats" in must(
        repetition(
            Example(messages=[Message(role="user", content="q"), Message(role="assistant", content=text)])
        )
    )
    assert repetition(must(to_example(distinct(3))[1])) is None


def test_language_switching_is_detected():
    zh_question = Message(role="user", content="请介绍长江的主要支流和流域面积。")
    english = Message(role="assistant", content="The Yangtze has many tributaries. " * 10)
    assert "is in en, the question in zh" in must(mixed_language(Example(messages=[zh_question, english])))
    mixed = Message(role="assistant", content=("长江流域面积很大 " + "the basin is large ") * 10)
    assert "mixes scripts" in must(mixed_language(Example(messages=[zh_question, mixed])))
    chinese = Message(role="assistant", content="长江有许多支流，流域面积约一百八十万平方公里。" * 5)
    assert mixed_language(Example(messages=[zh_question, chinese])) is None


def test_mixing_follows_the_ratios():
    shares = mixing_shares(
        {"trajectory": 1000, "plan": 100, "report": 50, "example": 0}, {"trajectory": 0.5, "plan": 0.5}
    )
    assert shares["plan"] == 1.0 and shares["trajectory"] == 0.1 and shares["report"] == 0.0


def test_ratio_mixing_from_the_command_line(tmp_path):
    src = tmp_path / "mixed.jsonl"
    plans = [
        {
            "id": f"p{i}",
            "query": f"Plan research on topic number {i} in depth",
            "steps": [{"title": "a"}, {"title": "b"}],
        }
        for i in range(40)
    ]
    src.write_text("".join(json.dumps(r) + "\n" for r in [*(distinct(i) for i in range(10)), *plans]))
    cmd = [*DR, "data", "sft", str(src), "--ratio", "trajectory=1,plan=1", "--no-dedup"]
    result = subprocess.run(cmd, capture_output=True)
    assert result.returncode == 0, result.stderr
    sources = [json.loads(line)["meta"]["source"] for line in result.stdout.splitlines()]
    assert sources.count("trajectory") == 10 and 4 <= sources.count("plan") <= 18
    bad = subprocess.run([*DR, "data", "sft", str(src), "--ratio", "plans=1"], capture_output=True)
    assert bad.returncode == 2 and b"unknown kinds plans" in bad.stderr


def test_the_filter_chain_tokenizes_each_message_and_tool_call_once(monkeypatch):
    """All four filters read one tokenization (dr_data.sft.Words): the model's text used to be split into
    words twice, once for the loop check and once inside the full text near-duplicates compare."""

    calls: list[str] = []
    real = sft.terms

    def counted(text, keep_stopwords=False):
        calls.append(text)
        return real(text, keep_stopwords)

    monkeypatch.setattr(sft, "terms", counted)
    example = must(to_example(distinct(3))[1])
    chain = sft.FilterChain(
        decontaminate=sft.Decontaminator([]), dedup=sft.NearDuplicates(), check_language=True
    )
    assert chain.reason(example) is None
    spoken = [m for m in example.messages if m.role in ("user", "assistant")]
    arguments = [call for m in spoken for call in m.tool_calls]
    assert len(calls) == len(spoken) + len(arguments)
    assert len(set(calls)) == len(calls)  # no text split twice


def test_terms_reads_ascii_and_cjk_text_alike_on_its_fast_path():
    from dr_agent.analysis import terms

    assert terms("The Salt-Routes of 1450, and THE rest_of it") == ["salt", "routes", "1450", "rest"]
    # one CJK character sends a text down the general path; what the ASCII part gives must not change
    for text in ("The Salt-Routes of 1450, and THE rest_of it", "x_1 Ab9  b-a", "", "..."):
        for keep in (False, True):
            assert terms(text + " 江", keep) == [*terms(text, keep), "江"]


def test_the_minhash_signature_estimates_the_jaccard_of_the_shingles():
    import random

    import numpy as np

    dedup = sft.NearDuplicates()
    rng = random.Random(0)
    words = [f"w{rng.randrange(5000)}" for _ in range(600)]
    for edits in (0, 30, 60, 120, 300):
        other = list(words)
        for i in rng.sample(range(600), edits):
            other[i] = f"edit{i}"
        mine, theirs = set(sft.shingle_hashes(words, 5).tolist()), set(sft.shingle_hashes(other, 5).tolist())
        true = len(mine & theirs) / len(mine | theirs)
        agree = np.count_nonzero(dedup.signature(words) == dedup.signature(other)) / dedup.num_perm
        # 128 hash functions: the estimate's standard error is at most 0.045
        assert abs(agree - true) < 0.15, (edits, true, agree)
    assert np.array_equal(dedup.signature(words), sft.NearDuplicates().signature(words))  # seeded
