"""`dr data`: commands that make and check training data. Parses flags, calls dr_data, streams records."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer

from dr_core.config_cli import with_flags
from dr_core.options import (
    ApiKey,
    BaseUrl,
    Concurrency,
    Inputs,
    Model,
    OnErrorChoice,
    OnErrorOpt,
    Output,
    Rejects,
    Resume,
)
from dr_data.world_defaults import (
    DEFAULT_ENTITIES,
    DEFAULT_MAX_HOPS,
    DEFAULT_REPORT_TASKS,
    DEFAULT_TASKS,
    DEFAULT_TEST_SHARE,
)
from dr_judge.flags import JudgeEndpoint

app = typer.Typer(
    help="Make and check deep-research training data (JSONL in, JSONL out).", no_args_is_help=True
)


@app.command()
def validate(
    kind: Annotated[str, typer.Argument(help="Record kind: document, report, task, plan, trajectory, ...")],
    inputs: Inputs = None,
    output: Output = "-",
    on_error: OnErrorOpt = OnErrorChoice.fail,
    rejects: Rejects = None,
    resume: Resume = False,
) -> None:
    """Check records against their schema and write them normalized (ids derived, defaults filled).

    Bad lines stop the run with file:line and field (exit 2), or with --on-error skip go to a rejects file.
    """
    from dr_core.pipe import Pipe
    from dr_core.records import kind as record_kind

    cls = record_kind(kind)
    with Pipe(inputs or ["-"], output, on_error=on_error.value, rejects=rejects, resume=resume) as pipe:
        for record in pipe.records(cls, description=f"validating {kind}"):
            pipe.write(record)


@app.command()
def index(
    sources: Annotated[
        list[str],
        typer.Argument(
            help="Document JSONL files ('-': stdin), or markdown/HTML/text files or folders of them."
        ),
    ],
    out: Annotated[
        str, typer.Option("--index", "-i", help="The index folder to write (replaced when done).")
    ],
    hybrid: Annotated[
        bool, typer.Option("--hybrid", help="Also store MiniLM dense vectors for hybrid BM25 + dense search.")
    ] = False,
    on_error: OnErrorOpt = OnErrorChoice.fail,
    rejects: Rejects = None,
) -> None:
    """Build the local search index (tantivy BM25, optionally hybrid) that `dr research --index` searches.

    JSONL lines are Document records ({id, text, title?, url?}) or DeepResearch Bench reports
    ({id, prompt, article}).
    """
    from pathlib import Path

    from dr_agent.documents import load_documents
    from dr_agent.index import build_index
    from dr_core.jsonl import RejectWriter
    from dr_core.log import logger, progress

    with RejectWriter(rejects or f"{out.rstrip('/')}.rejects.jsonl") as sink:
        docs = load_documents(sources, on_error=on_error.value, rejects=sink)
        info = build_index(progress(docs, "indexing"), Path(out), hybrid=hybrid)
    logger.info("indexed %d documents into %s%s", info["documents"], out, " (hybrid)" if hybrid else "")


# ---- synthesis ----------------------------------------------------------------------------------


class ReverseTeacher(StrEnum):
    none = "none"
    endpoint = "endpoint"


class TrajectoryTeacher(StrEnum):
    oracle = "oracle"
    endpoint = "endpoint"


class KeepChoice(StrEnum):
    shortest = "shortest"
    all = "all"


ReverseTeacherOpt = Annotated[
    ReverseTeacher,
    typer.Option("--teacher", help="none (deterministic), or endpoint (the [llm] settings / --base-url)."),
]
TrajectoryTeacherOpt = Annotated[
    TrajectoryTeacher,
    typer.Option("--teacher", help="oracle (world tasks), or endpoint (the [llm] settings / --base-url)."),
]


@app.command()
def world(
    out: Annotated[
        str, typer.Option("--out", "-o", help="Folder for corpus.jsonl, train.jsonl and test.jsonl.")
    ],
    seed: Annotated[int, typer.Option(help="One seed, one byte-identical world.")] = 0,
    entities: Annotated[int, typer.Option(help="Entities in the world.")] = DEFAULT_ENTITIES,
    tasks: Annotated[int, typer.Option(help="Tasks to sample (train and test together).")] = DEFAULT_TASKS,
    max_hops: Annotated[
        int, typer.Option(help="Longest relation path in a question (1 to 4).")
    ] = DEFAULT_MAX_HOPS,
    test_share: Annotated[
        float, typer.Option(help="Share of entities whose tasks go to the test split.")
    ] = DEFAULT_TEST_SHARE,
    report_tasks: Annotated[
        int,
        typer.Option(
            min=0, help="Report tasks to sample (train and test together), into reports-{train,test}.jsonl."
        ),
    ] = DEFAULT_REPORT_TASKS,
) -> None:
    """A synthetic encyclopedia (corpus.jsonl, for `dr data index`) and tasks over it, split by entity so
    no test answer is taught in training: multi-hop questions (train.jsonl, test.jsonl) and cited-report
    tasks whose checklist items each carry a rule that decides their true verdict (reports-train.jsonl,
    reports-test.jsonl)."""
    from pathlib import Path

    from dr_core.errors import InputError
    from dr_core.jsonl import RecordWriter
    from dr_core.log import logger
    from dr_data.report_tasks import sample_report_tasks
    from dr_data.world import build_world, sample_tasks

    if not 1 <= max_hops <= 4:
        raise InputError("--max-hops must be between 1 and 4")
    folder = Path(out)
    built = build_world(seed, entities)
    counts = {"train": 0, "test": 0, "reports-train": 0, "reports-test": 0}
    # The files are renamed into place together once all are written (test.jsonl last): a failed or
    # killed run leaves the previous world whole, never one seed's corpus beside another's tasks.
    with (
        RecordWriter(folder / "test.jsonl") as test,
        RecordWriter(folder / "train.jsonl") as train,
        RecordWriter(folder / "reports-test.jsonl") as reports_test,
        RecordWriter(folder / "reports-train.jsonl") as reports_train,
        RecordWriter(folder / "corpus.jsonl") as corpus,
    ):
        for doc in built.documents:
            corpus.write(doc)
        for task in sample_tasks(built, tasks, max_hops=max_hops, test_share=test_share):
            (test if task.split == "test" else train).write(task)
            counts[task.split or "train"] += 1
        for task in sample_report_tasks(built, report_tasks, test_share=test_share):
            (reports_test if task.split == "test" else reports_train).write(task)
            counts[f"reports-{task.split}"] += 1
    logger.info(
        "world %d: %d documents; %d train and %d test questions; %d train and %d test report tasks; in %s",
        seed,
        len(built.documents),
        counts["train"],
        counts["test"],
        counts["reports-train"],
        counts["reports-test"],
        folder,
    )


@app.command("judge")
def judge_data(
    inputs: Inputs = None,
    output: Output = "-",
    reports_out: Annotated[
        str | None,
        typer.Option(
            "--reports",
            help="Also write the reports themselves (oracle and perturbed, as Report records) here: what "
            "`dr judge score` reads to measure a judge on them.",
        ),
    ] = None,
    perturbed: Annotated[
        int, typer.Option(min=0, help="Perturbed reports per task, besides the oracle's.")
    ] = 4,
    most: Annotated[
        int,
        typer.Option(
            "--max-perturbations", min=1, help="Most perturbations in one report, each at its own fact."
        ),
    ] = 1,
    per_call: Annotated[
        int,
        typer.Option(
            "--items-per-call",
            min=0,
            help="Checklist items per example, grouped as `dr judge score --batch N` groups them "
            "(0: all of a report's items in one, the judge's default).",
        ),
    ] = 0,
    limit: Annotated[
        int,
        typer.Option(
            min=0,
            help="At most this many examples, balanced over item kind and true verdict (0: every one).",
        ),
    ] = 0,
    seed: Annotated[int, typer.Option(help="Seed of the perturbations and the sampling.")] = 0,
    on_error: OnErrorOpt = OnErrorChoice.fail,
    rejects: Rejects = None,
) -> None:
    """Judge training examples from world report tasks (`dr data world`'s reports-*.jsonl): for the
    oracle's report and perturbed copies of it (a fact dropped, an entity swapped, a number changed, a
    citation made up or moved), (report, checklist items) -> each item's verdict by its rule, with a
    one-line reason, in the judge's exact prompt and reply shape (`dr judge score --no-checks`, --batch
    as --items-per-call). Each example's meta names its report's perturbation, its items and their
    verdicts; `dr train sft` trains on them, and records the judge prompt's version in the model folder."""
    import random
    from contextlib import nullcontext

    from dr_core.errors import InputError
    from dr_core.jsonl import RecordWriter
    from dr_core.log import logger
    from dr_core.pipe import Pipe
    from dr_core.records import Task
    from dr_data.judge_data import balanced, examples, is_report_task, reports
    from dr_judge.judge import PROMPT_DIGEST

    rng = random.Random(seed)
    pool = []
    written = skipped = 0
    with (
        Pipe(inputs or ["-"], output, on_error=on_error.value, rejects=rejects) as pipe,
        RecordWriter(reports_out) if reports_out else nullcontext() as report_writer,
    ):
        for task in pipe.records(Task, description="judge data"):
            if not is_report_task(task):
                skipped += 1  # a question task, say, from a file that holds both kinds
                continue
            for report in reports(task, perturbed, rng, most):
                if report_writer is not None:
                    report_writer.write(report)
                for example, group in examples(task, report, per_call):
                    example.meta["prompt_digest"] = PROMPT_DIGEST
                    if limit:
                        pool.append((example, group))
                    else:
                        pipe.write(example)
                        written += 1
        if limit:
            chosen, taken = balanced(pool, limit, rng)
            for example in chosen:
                pipe.write(example)
            written = len(chosen)
            logger.info("judge data: %d of %d examples, by group: %s", written, len(pool), taken)
        if not written:
            raise InputError("no judge examples: the input has no world report tasks (reports-*.jsonl)")
    if skipped:
        logger.info("judge data: %d tasks are not report tasks and were passed over", skipped)
    logger.info("judge data: %d examples (judge prompt %s)", written, PROMPT_DIGEST)


@app.command()
def reverse(
    inputs: Inputs = None,
    output: Output = "-",
    teacher: ReverseTeacherOpt = ReverseTeacher.none,
    examples: Annotated[
        str | None, typer.Option(help="Also write SFT planning examples (JSONL) here.")
    ] = None,
    base_url: BaseUrl = None,
    model: Model = None,
    api_key: ApiKey = None,
    concurrency: Concurrency = None,
    max_report_chars: Annotated[
        int,
        typer.Option(
            min=1000,
            help="The teacher reads at most this much of each report (a small "
            "model's context: a report runs to 20K characters, and a token per character in "
            "Chinese).",
        ),
    ] = 30000,
    max_tokens: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Each teacher reply is at most this many tokens (default: the server's "
            "limit, which for a weak model that never closes its JSON is its whole context).",
            show_default=False,
        ),
    ] = None,
    on_error: OnErrorOpt = OnErrorChoice.fail,
    rejects: Rejects = None,
    resume: Resume = False,
) -> None:
    """Reports (Report records, or DeepResearch Bench {id, prompt, article} lines) into Plans: the
    reconstructed query, an ordered plan and a weighted checklist, in the report's language."""
    from collections.abc import Callable
    from contextlib import ExitStack

    from dr_core.concurrency import ordered_map
    from dr_core.errors import LLMError
    from dr_core.jsonl import RecordWriter
    from dr_core.log import logger
    from dr_core.pipe import Pipe
    from dr_core.records import Plan, Report
    from dr_data.reverse import as_report, planning_example, reverse_with_teacher, reverse_without_teacher

    work: Callable[[Report], Plan | LLMError] = reverse_without_teacher
    threads = 1
    if teacher == "endpoint":
        from dr_core.llm import LLMClient

        client = LLMClient.from_settings(
            base_url=base_url, model=model, api_key=api_key, concurrency=concurrency
        )
        threads = client.config.concurrency

        def with_teacher(report: Report) -> Plan | LLMError:
            try:
                return reverse_with_teacher(report, client, max_chars=max_report_chars, max_tokens=max_tokens)
            except LLMError as exc:  # no usable plan after the send-backs: a reject, not the end of the run
                return exc

        work = with_teacher

    with ExitStack() as stack:
        pipe = stack.enter_context(
            Pipe(
                inputs or ["-"],
                output,
                on_error=on_error.value,
                rejects=rejects,
                resume=resume,
                output_key=lambda p: p.get("report_id"),
            )
        )
        example_writer = stack.enter_context(RecordWriter(examples, resume=resume)) if examples else None
        reports = pipe.located(adapt=as_report, description="reversing")
        counts = {"plans": 0, "sent_back": 0, "refused": 0}
        for (report, origin), plan in ordered_map(lambda r: (r, work(r[0])), reports, threads):
            if isinstance(plan, LLMError):
                counts["refused"] += 1
                pipe.reject(origin, f"report {report.id}: {plan}")
                continue
            counts["plans"] += 1
            counts["sent_back"] += int(plan.meta.get("teacher_attempts", 1) > 1)
            pipe.write(plan)
            if example_writer is not None:
                example_writer.write(planning_example(plan))
    if teacher == "endpoint":
        logger.info(
            "reverse: %(plans)d plans passed validation (%(sent_back)d after a send-back); %(refused)d "
            "reports refused after the send-backs (in the rejects file)",
            counts,
        )


@app.command()
@with_flags(JudgeEndpoint, "judge_endpoint")
def trajectories(
    inputs: Inputs = None,
    output: Output = "-",
    teacher: TrajectoryTeacherOpt = TrajectoryTeacher.oracle,
    index: Annotated[str | None, typer.Option(help="Search index the agent uses (dr data index).")] = None,
    samples: Annotated[int, typer.Option(help="Teacher samples per task.")] = 1,
    reflections: Annotated[int, typer.Option(help="Retries of a wrong attempt with a reflection turn.")] = 3,
    keep: Annotated[
        KeepChoice, typer.Option(help="shortest (one per task) or all correct samples.")
    ] = KeepChoice.shortest,
    min_score: Annotated[float, typer.Option(help="Checklist score that counts as correct.")] = 0.8,
    temperature: Annotated[float | None, typer.Option(help="Teacher sampling temperature.")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Agent steps per attempt.")] = None,
    concurrency: Annotated[int, typer.Option(help="Tasks at once.")] = 4,
    base_url: BaseUrl = None,
    model: Model = None,
    api_key: ApiKey = None,
    on_error: OnErrorOpt = OnErrorChoice.fail,
    rejects: Rejects = None,
    resume: Resume = False,
    judge_endpoint: JudgeEndpoint | None = None,
) -> None:
    """Teacher trajectories for tasks through the real agent loop, judged and rejection-sampled: wrong
    attempts get up to --reflections reflection turns; correct ones are kept (the shortest by default).
    Tasks with no correct trajectory go to the rejects file. --teacher oracle solves world tasks without
    any model. A checklist task's items without a rule check need the judge endpoint."""
    from dr_agent.build import build_agent
    from dr_core.errors import InputError
    from dr_core.jsonl import valid_records
    from dr_core.log import logger
    from dr_core.pipe import Pipe
    from dr_core.records import Task
    from dr_data.trajectories import Rejection
    from dr_data.trajectories import run as run_trajectories

    assert judge_endpoint is not None
    judge = judge_endpoint.judge()
    sources = inputs or ["-"]
    agent = build_agent(
        llm={"base_url": base_url, "model": model, "api_key": api_key},
        search={"index": index},
        agent={"max_steps": max_steps},
        web=teacher == "endpoint",
        runs_at_once=concurrency,
    )
    if teacher == "oracle":
        from dr_data.oracle import OracleTeacher

        if "-" in sources:
            raise InputError("the oracle reads its tasks twice: give task files, not stdin")
        agent.llm = OracleTeacher(valid_records(sources, Task, fail=on_error == OnErrorChoice.fail))
    with Pipe(
        sources,
        output,
        on_error=on_error.value,
        rejects=rejects,
        resume=resume,
        output_key=lambda t: t.get("task_id"),
        group_size=lambda t: (t.get("meta") or {}).get("kept_of", 1),
    ) as pipe:
        rejection = Rejection(samples, reflections, keep.value, temperature, min_score)
        result = run_trajectories(pipe, agent, judge, rejection, concurrency=concurrency)
    logger.info(
        "trajectories: %d of %d tasks solved, %d trajectories kept", result.solved, result.tasks, result.kept
    )


@app.command()
def sft(
    inputs: Inputs = None,
    output: Output = "-",
    ratio: Annotated[
        str | None,
        typer.Option(help="Mix by kind, e.g. trajectory=0.7,plan=0.2,report=0.1 (input files, not stdin)."),
    ] = None,
    decontaminate: Annotated[
        list[str] | None,
        typer.Option(help="Benchmark task JSONL (or 'drb') whose questions must not leak in."),
    ] = None,
    ngram: Annotated[int, typer.Option(help="N-gram size for decontamination.")] = 8,
    dedup_threshold: Annotated[
        float, typer.Option(help="MinHash Jaccard threshold for near-duplicates.")
    ] = 0.85,
    no_dedup: Annotated[bool, typer.Option("--no-dedup", help="Keep near-duplicates.")] = False,
    no_repetition: Annotated[bool, typer.Option("--no-repetition", help="Keep looping examples.")] = False,
    no_language: Annotated[
        bool, typer.Option("--no-language", help="Keep language-switching examples.")
    ] = False,
    removed: Annotated[
        str | None, typer.Option(help="Write every removed example's id and reason here.")
    ] = None,
    on_error: OnErrorOpt = OnErrorChoice.fail,
    rejects: Rejects = None,
) -> None:
    """Trajectories, plans, reports (and examples) into training Examples: loss on assistant turns, tool
    calls kept; filtered for loops, language switching, benchmark leaks and near-duplicates; mixed by kind."""
    from contextlib import ExitStack

    from dr_core.errors import InputError
    from dr_core.jsonl import RecordWriter, read_records
    from dr_core.log import logger
    from dr_core.pipe import Pipe
    from dr_core.records import Task
    from dr_data.sft import KINDS, Decontaminator, FilterChain, NearDuplicates, count_kinds, mixing_shares
    from dr_data.sft import run as run_sft

    sources = inputs or ["-"]
    shares: dict[str, float] = {}
    if ratio:
        try:
            ratios = {k.strip(): float(v) for k, v in (part.split("=") for part in ratio.split(","))}
        except ValueError:
            raise InputError(
                f"--ratio {ratio!r}: write kind=weight pairs, e.g. trajectory=0.7,plan=0.3"
            ) from None
        unknown = set(ratios) - set(KINDS)
        if unknown:
            raise InputError(
                f"--ratio: unknown kinds {', '.join(sorted(unknown))}; known: {', '.join(KINDS)}"
            )
        if "-" in sources:
            raise InputError("--ratio counts the inputs first: give files, not stdin")
        shares = mixing_shares(count_kinds(sources), ratios)
    benchmark = list(read_records(decontaminate, Task)) if decontaminate else []
    chain = FilterChain(
        decontaminate=Decontaminator(benchmark, ngram) if benchmark else None,
        dedup=None if no_dedup else NearDuplicates(dedup_threshold),
        check_repetition=not no_repetition,
        check_language=not no_language,
    )
    with ExitStack() as stack:
        pipe = stack.enter_context(
            Pipe(sources, output, on_error=on_error.value, rejects=rejects, resumable=False)
        )
        report = stack.enter_context(RecordWriter(removed, resumable=False)) if removed else None
        written = run_sft(pipe, chain, shares, report)
    logger.info("sft: %d examples written; removed: %s", written, dict(chain.removed) or "none")


@app.command()
def stats(
    inputs: Inputs = None,
    tokenizer: Annotated[
        str | None, typer.Option(help="Count tokens with this Hugging Face tokenizer folder.")
    ] = None,
    plot: Annotated[str | None, typer.Option(help="Draw token lengths and tool calls to this PNG.")] = None,
) -> None:
    """Counts by kind, token-length percentiles and histogram, tool-call distribution: a table on stderr,
    JSON on stdout."""
    import sys

    import orjson

    from dr_core.jsonl import read_records
    from dr_core.log import console
    from dr_data import stats as data_stats

    tok = None
    if tokenizer:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(tokenizer)
    result = data_stats.collect(read_records(inputs or ["-"]), tok)
    if plot:
        data_stats.plot(result, plot)
    result.pop("_lengths")
    from rich.table import Table

    table = Table(title=f"{result['records']} records")
    table.add_column("what")
    table.add_column("value")
    for key, value in result.items():
        if key != "records":
            table.add_row(key, orjson.dumps(value).decode())
    console().print(table)
    sys.stdout.buffer.write(orjson.dumps(result) + b"\n")
