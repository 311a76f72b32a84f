"""`dr data sft`: trajectories, plans and reports into training `Example`s, filtered and mixed.

Filters, in order: repetitive loops (a tool call repeated, or an n-gram looping in the model's text),
language switching (an answer in another language than the question, or a turn that mixes scripts),
decontamination against benchmark tasks (shared n-grams with any benchmark question), and near-duplicate
removal (MinHash LSH over word shingles). Every removal is reported with its reason.
"""

from __future__ import annotations

import hashlib
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from dr_agent.analysis import terms
from dr_core.jsonl import RecordWriter
from dr_core.pipe import Pipe
from dr_core.records import Example, Message, Plan, Task, Trajectory
from dr_data.reverse import as_report, language, letter_counts, planning_example

KINDS = ("trajectory", "plan", "report", "example")


def kind_of(obj: dict[str, Any]) -> str:
    """Which record a JSONL object is, by its fields."""
    if "query" in obj and "steps" in obj:
        return "plan"
    if "messages" in obj:
        return "trajectory" if ("final" in obj or "stop_reason" in obj) else "example"
    if "article" in obj or "text" in obj:
        return "report"
    raise ValueError("not a trajectory, plan, report or example (no messages, query+steps, text or article)")


def to_example(obj: dict[str, Any]) -> tuple[str, Example | None]:
    """(kind, the training example) of one record; None when it holds nothing to learn (an unanswered run)."""
    kind = kind_of(obj)
    if kind == "plan":
        return kind, planning_example(Plan.model_validate(obj))
    if kind == "example":
        return kind, Example.model_validate(obj)
    if kind == "trajectory":
        trajectory = Trajectory.model_validate(obj)
        if trajectory.final is None or trajectory.stop_reason not in (None, "answered"):
            return kind, None
        # built from the trajectory's fields, which were just validated: no second validation
        return kind, Example.model_construct(
            id=f"example-{trajectory.id}",
            messages=trajectory.messages,
            tools=trajectory.tools,
            meta={"source": "trajectory", "task_id": trajectory.task_id, "steps": trajectory.steps},
        )
    report = as_report(obj)
    question = str(report.meta.get("true_prompt") or report.title or "")
    if not question:
        raise ValueError(
            "a report needs its question to become an example: a title, or DeepResearch Bench's prompt"
        )
    messages = [Message(role="user", content=question), Message(role="assistant", content=report.text)]
    return kind, Example(id=f"example-{report.id}", messages=messages, meta={"source": "report"})


# ---- filters ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Words:
    """An example's words (`terms`, stopwords kept), each message and tool call tokenized once and shared
    by every filter: the user's turns, the model's text, and everything it says (tool-call arguments too,
    what near-duplicates are compared on)."""

    user: list[str]
    assistant: list[str]
    full: list[str]

    @classmethod
    def of(cls, example: Example) -> Words:
        user: list[str] = []
        assistant: list[str] = []
        full: list[str] = []
        for m in example.messages:
            if m.role not in ("user", "assistant"):
                continue
            words = terms(m.content or "", keep_stopwords=True)
            (user if m.role == "user" else assistant).extend(words)
            full.extend(words)
            for call in m.tool_calls:
                full.extend(terms(orjson.dumps(call.arguments).decode(), keep_stopwords=True))
        return cls(user, assistant, full)


def _user_text(example: Example) -> str:
    return "\n".join(m.content or "" for m in example.messages if m.role == "user")


def repetition(
    example: Example, words: Words | None = None, max_same_call: int = 3, n: int = 8, max_repeats: int = 4
) -> str | None:
    """Why the example loops, or None: one tool call made `max_same_call` times, or an n-gram of the
    model's text repeated `max_repeats` times or more."""
    calls = Counter(
        (call.name, orjson.dumps(call.arguments, option=orjson.OPT_SORT_KEYS))
        for m in example.messages
        for call in m.tool_calls
    )
    if calls:
        (name, _), count = calls.most_common(1)[0]
        if count >= max_same_call:
            return f"tool call {name} repeated {count} times with the same arguments"
    said = (words or Words.of(example)).assistant
    grams = Counter(zip(*(said[i:] for i in range(n)), strict=False))
    if grams:
        gram, count = grams.most_common(1)[0]
        if count >= max_repeats:
            return f"the text repeats {' '.join(gram)!r} {count} times"
    return None


def mixed_language(example: Example, min_letters: int = 200) -> str | None:
    """Why the example switches language, or None: an assistant turn in another language than the user's
    question, or one where neither script dominates."""
    asked = language(_user_text(example))
    for i, message in enumerate(example.messages):
        if message.role != "assistant" or not message.content:
            continue
        if asked == "en" and message.content.isascii():
            continue  # no CJK at all: English, as asked
        letters, cjk = letter_counts(message.content)
        if letters < min_letters:
            continue
        cjk_share = cjk / letters
        if 0.3 < cjk_share < 0.7:
            return f"message {i} mixes scripts ({cjk_share:.0%} CJK)"
        if language(message.content) != asked:
            return f"message {i} is in {language(message.content)}, the question in {asked}"
    return None


class Decontaminator:
    """Flags examples whose user turns share an n-gram with a benchmark task's question."""

    def __init__(self, tasks: list[Task], n: int = 8) -> None:
        self.n = n
        self.grams: dict[tuple[str, ...], str] = {}
        self.short: dict[str, str] = {}
        for task in tasks:
            words = terms(task.question, keep_stopwords=True)
            if len(words) < n:
                self.short[" ".join(words)] = task.id  # a short question must appear whole
            for i in range(len(words) - n + 1):
                self.grams.setdefault(tuple(words[i : i + n]), task.id)

    def __call__(self, example: Example, words: Words | None = None) -> str | None:
        words_ = (words or Words.of(example)).user
        for i in range(len(words_) - self.n + 1):
            gram = tuple(words_[i : i + self.n])
            if gram in self.grams:
                return f"shares {' '.join(gram)!r} with benchmark task {self.grams[gram]}"
        if self.short:
            joined = f" {' '.join(words_)} "
            for question, task_id in self.short.items():
                if question and f" {question} " in joined:
                    return f"contains benchmark task {task_id}'s question {question!r}"
        return None


class NearDuplicates:
    """MinHash LSH over 5-word shingles: flags an example too similar to one already kept."""

    def __init__(self, threshold: float = 0.85, num_perm: int = 128, shingle: int = 5) -> None:
        import numpy as np
        from datasketch import MinHashLSH

        # the bands of the LSH index: datasketch's choice of b bands of r values for this threshold, tuned
        # for recall (few missed pairs); candidates are then checked on their estimated Jaccard
        self.bands: list[tuple[int, int]] = list(
            MinHashLSH(threshold=threshold, num_perm=num_perm, weights=(0.1, 0.9)).hashranges
        )
        self.tables: list[dict[bytes, list[str]]] = [{} for _ in self.bands]
        self.signatures: dict[str, Any] = {}
        self.threshold = threshold
        self.num_perm = num_perm
        self.shingle = shingle
        # num_perm hash functions h -> a·h + b (mod 2^32, a odd: each one a bijection on 32-bit values),
        # applied to the shingle hashes, which are mixed 32-bit values already (shingle_hashes): the
        # signature is one numpy expression, with no Python call per shingle
        rng = np.random.default_rng(1)
        self.a = (rng.integers(0, 2**32, num_perm, dtype=np.uint64) | 1).astype(np.uint32)
        self.b = rng.integers(0, 2**32, num_perm, dtype=np.uint64).astype(np.uint32)

    def signature(self, words: list[str]) -> Any:
        """The example's MinHash values: for each hash function, the least over its shingles."""
        hashed = shingle_hashes(words, self.shingle).astype("uint32")[:, None]
        return (hashed * self.a + self.b).min(axis=0)

    def __call__(self, example: Example, words: Words | None = None) -> str | None:
        import numpy as np

        values = self.signature((words or Words.of(example)).full)
        # two examples are candidates when all the values of one band agree
        keys = [values[start:end].tobytes() for start, end in self.bands]
        candidates = {k for table, key in zip(self.tables, keys, strict=True) for k in table.get(key, ())}
        # the share of hash functions whose least values agree estimates the Jaccard similarity
        similar = sorted(
            k
            for k in candidates
            if np.count_nonzero(self.signatures[k] == values) / self.num_perm >= self.threshold
        )
        if similar:
            return f"near-duplicate of {similar[0]}"
        for table, key in zip(self.tables, keys, strict=True):
            table.setdefault(key, []).append(example.id)
        self.signatures[example.id] = values
        return None


def shingle_hashes(words: list[str], size: int) -> Any:
    """A 32-bit hash (uint64 array) of every run of `size` words (one run when there are fewer words): each
    word is hashed once (crc32), and a run's hash mixes its words' hashes in order, so no shingle string is
    ever built."""
    import numpy as np

    if not words:
        words = [""]
    hashed = np.fromiter(map(zlib.crc32, map(str.encode, words)), dtype=np.uint64, count=len(words))
    runs = max(1, len(words) - size + 1)
    mixed = np.zeros(runs, dtype=np.uint64)
    for offset in range(min(size, len(words))):
        # an odd multiplier over 64 bits (wrapping) then the word's hash: order matters
        mixed = mixed * np.uint64(0x9E3779B97F4A7C15) + hashed[offset : offset + runs]
    mixed ^= mixed >> np.uint64(29)
    mixed *= np.uint64(0xBF58476D1CE4E5B9)
    mixed ^= mixed >> np.uint64(32)
    return mixed & np.uint64(0xFFFFFFFF)


@dataclass
class FilterChain:
    decontaminate: Decontaminator | None = None
    dedup: NearDuplicates | None = None
    check_repetition: bool = True
    check_language: bool = True
    removed: Counter[str] = field(default_factory=Counter)

    def reason(self, example: Example) -> str | None:
        checks: list[tuple[str, Callable[[Example, Words], str | None]]] = []
        if self.check_repetition:
            checks.append(("repetition", repetition))
        if self.check_language:
            checks.append(("language", lambda example, _: mixed_language(example)))
        if self.decontaminate is not None:
            checks.append(("contamination", self.decontaminate))
        if self.dedup is not None:
            checks.append(("duplicate", self.dedup))
        words = Words.of(example)
        for name, check in checks:
            why = check(example, words)
            if why is not None:
                self.removed[name] += 1
                return f"{name}: {why}"
        return None


def count_kinds(sources: list[str]) -> dict[str, int]:
    """Records of each kind in the input files (a first pass for mixing; bad lines are left to the second)."""
    from dr_core.jsonl import iter_lines

    counts = dict.fromkeys(KINDS, 0)
    for source in sources:
        for _, body, _ in iter_lines(source):
            try:
                obj = orjson.loads(body)
                counts[kind_of(obj)] += 1
            except (orjson.JSONDecodeError, ValueError, TypeError):
                continue
    return counts


def keep_share(record_id: str, share: float) -> bool:
    """A deterministic coin for down-sampling: the same id is kept or dropped on every run."""
    if share >= 1.0:
        return True
    return int(hashlib.sha256(record_id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < share


def mixing_shares(counts: dict[str, int], ratios: dict[str, float]) -> dict[str, float]:
    """The share of each kind to keep so the output follows `ratios` with as many records as possible."""
    wanted = {k: r for k, r in ratios.items() if r > 0 and counts.get(k, 0) > 0}
    if not wanted:
        return {k: 0.0 for k in counts}
    total = sum(wanted.values())
    size = min(counts[k] / (r / total) for k, r in wanted.items())
    return {k: (size * wanted[k] / total / counts[k]) if k in wanted else 0.0 for k in counts}


def run(pipe: Pipe, chain: FilterChain, shares: dict[str, float], removed: RecordWriter | None = None) -> int:
    """Every input record of `pipe` as an Example, kept by `shares` of its kind (all when empty) and by
    `chain`; the removed ones' ids and reasons go to `removed`. Returns the examples written."""
    written = 0
    examples = pipe.records(adapt=to_example, key=lambda pair: pair[1] and pair[1].id, description="examples")
    for kind, example in examples:
        if example is None:
            continue
        if shares and not keep_share(example.id, shares.get(kind, 0.0)):
            continue
        why = chain.reason(example)
        if why is not None:
            if removed is not None:
                removed.write({"id": example.id, "kind": kind, "reason": why})
            continue
        pipe.write(example)
        written += 1
    return written
