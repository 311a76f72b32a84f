"""Never destroy what dr did not make, never replace a complete output with a partial one.

Each test is a probe a new user ran against dr, and failed before its fix: `dr data index` emptied a
folder of the user's files; `-o` replaced a device or a symlink with a regular file; an interrupted run
replaced a complete rejects file; a damaged model cache gave a traceback; `--resume` after an
interrupted re-run doubled the records.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from dr_core.errors import InputError
from dr_core.jsonl import RecordWriter, RejectWriter, partial_path, read_records
from dr_core.records import Task
from support.cli import DR, dr

DRB_REPORTS = (
    Path(__file__).resolve().parents[2] / "data" / "deepresearch_bench" / "reports_claude-3-7-sonnet.jsonl"
)


def corpus(path, n=3, bad_line=False):
    lines = [
        json.dumps({"id": f"d{i}", "title": f"Doc {i}", "text": f"river city number {i}"}) for i in range(n)
    ]
    if bad_line:
        lines.append("{not json")
    path.write_text("\n".join(lines) + "\n")
    return path


# ---- 1. dr data index --------------------------------------------------------------------------------


def test_index_refuses_a_folder_of_the_users_files_and_deletes_nothing(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "thesis.txt").write_text("four years of work")
    result = dr("data", "index", corpus(tmp_path / "c.jsonl"), "-i", folder)
    assert result.returncode == 2
    assert str(folder) in result.stderr.decode() and "Traceback" not in result.stderr.decode()
    assert sorted(p.name for p in folder.iterdir()) == ["thesis.txt"]
    assert (folder / "thesis.txt").read_text() == "four years of work"


def test_index_leaves_a_users_folder_named_like_its_work_folder_alone(tmp_path):
    # the old build wrote into INDEX.building, removing whatever was there first
    work_named = tmp_path / "idx.building"
    work_named.mkdir()
    (work_named / "notes.md").write_text("mine")
    result = dr("data", "index", corpus(tmp_path / "c.jsonl"), "-i", tmp_path / "idx")
    assert result.returncode == 0, result.stderr
    assert (work_named / "notes.md").read_text() == "mine"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".idx.")]  # no stray work folders


def test_a_failed_rebuild_leaves_the_old_index_whole_and_a_good_one_replaces_it(tmp_path):
    from dr_agent.index import LocalIndex

    index = tmp_path / "idx"
    assert dr("data", "index", corpus(tmp_path / "a.jsonl", n=3), "-i", index).returncode == 0
    failed = dr("data", "index", corpus(tmp_path / "b.jsonl", n=5, bad_line=True), "-i", index)
    assert failed.returncode == 2 and b"b.jsonl:6" in failed.stderr
    assert len(LocalIndex(index)) == 3 and LocalIndex(index).search("river", k=1)
    assert dr("data", "index", corpus(tmp_path / "c.jsonl", n=5), "-i", index).returncode == 0
    assert len(LocalIndex(index)) == 5
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_an_index_with_a_users_file_added_is_not_replaced(tmp_path):
    index = tmp_path / "idx"
    assert dr("data", "index", corpus(tmp_path / "a.jsonl"), "-i", index).returncode == 0
    (index / "my-notes.txt").write_text("kept")
    result = dr("data", "index", corpus(tmp_path / "b.jsonl"), "-i", index)
    assert result.returncode == 2 and (index / "my-notes.txt").read_text() == "kept"


# ---- 2. special files as -o ---------------------------------------------------------------------------


def sample_tasks(path, n=3):
    path.write_text("".join(json.dumps({"id": f"t{i}", "question": f"q{i}?"}) + "\n" for i in range(n)))
    return path


def test_a_character_device_as_output_is_written_through_and_stays_a_device(tmp_path):
    device = tmp_path / "null"
    try:
        os.mknod(device, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # a copy of /dev/null
    except PermissionError:
        pytest.skip("this machine does not let the tests make a device node")
    reports = tmp_path / "reports.jsonl"
    reports.write_bytes(DRB_REPORTS.read_bytes() + b"{a bad line\n")
    result = dr("data", "sft", reports, "-o", device, "--on-error", "skip", "--rejects", device)
    assert result.returncode == 0, result.stderr
    assert stat.S_ISCHR(os.stat(device).st_mode) and os.stat(device).st_rdev == os.makedev(1, 3)
    assert not partial_path(device).exists()
    with RecordWriter(device) as writer:
        for i in range(1000):
            writer.write({"id": str(i), "text": "x" * 40})
    assert stat.S_ISCHR(os.stat(device).st_mode)
    with pytest.raises(InputError, match="--resume needs a regular output file"):
        RecordWriter(device, resume=True).open()


def test_a_fifo_as_output_streams_to_its_reader(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    reader = subprocess.Popen(["cat", str(fifo)], stdout=subprocess.PIPE)
    with RecordWriter(fifo) as writer:
        writer.write({"id": "a"})
        writer.write({"id": "b"})
    out, _ = reader.communicate(timeout=10)
    assert [json.loads(line)["id"] for line in out.splitlines()] == ["a", "b"]
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)


def test_a_symlink_as_output_writes_its_target_atomically_and_stays_a_link(tmp_path):
    target_dir = tmp_path / "real"
    target_dir.mkdir()
    target = target_dir / "out.jsonl"
    target.write_text('{"id": "old"}\n')
    link = tmp_path / "link.jsonl"
    link.symlink_to(target)
    with pytest.raises(KeyboardInterrupt), RecordWriter(link) as writer:
        writer.write({"id": "half"})
        raise KeyboardInterrupt
    assert link.is_symlink() and target.read_text() == '{"id": "old"}\n'
    with RecordWriter(link, resume=True) as writer:  # resumes from the partial file beside the target
        assert writer.done == {"old", "half"}
        writer.write({"id": "new"})
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert [r["id"] for r in read_records(target)] == ["old", "half", "new"]


def test_whole_file_writers_follow_symlinks_and_write_through_devices(tmp_path):
    from dr_core.files import write_atomic

    target = tmp_path / "table.md"
    target.write_text("old")
    link = tmp_path / "link.md"
    link.symlink_to(target)
    write_atomic(link, "| new |\n")
    assert link.is_symlink() and target.read_text() == "| new |\n"
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    reader = subprocess.Popen(["cat", str(fifo)], stdout=subprocess.PIPE)
    write_atomic(fifo, "streamed\n")
    assert reader.communicate(timeout=10)[0] == b"streamed\n" and stat.S_ISFIFO(os.stat(fifo).st_mode)
    with pytest.raises(InputError, match="is a directory"):
        write_atomic(tmp_path, "x")


# ---- 3. side files ------------------------------------------------------------------------------------


def test_an_interrupted_run_leaves_a_complete_rejects_file_as_it_was(tmp_path):
    rejects = tmp_path / "out.rejects.jsonl"
    with RejectWriter(rejects) as sink:
        sink.add("in.jsonl", 1, "bad", b"{x")
        sink.add("in.jsonl", 2, "bad", b"{y")
    complete = rejects.read_bytes()
    with pytest.raises(KeyboardInterrupt), RejectWriter(rejects) as sink:
        sink.add("in.jsonl", 7, "bad", b"{z")
        raise KeyboardInterrupt
    assert rejects.read_bytes() == complete


def test_an_interrupted_command_keeps_the_rejects_of_the_last_complete_run(tmp_path):
    from dr_core.pipe import Pipe

    source = tmp_path / "in.jsonl"
    source.write_text('{"id": "a", "question": "q"}\n{bad\n{"id": "b", "question": "q"}\n{bad2\n')
    out = tmp_path / "out.jsonl"
    with Pipe([str(source)], str(out), on_error="skip") as pipe:
        for record in pipe.records(Task):
            pipe.write(record)
    rejects = tmp_path / "out.jsonl.rejects.jsonl"
    complete = rejects.read_bytes()
    assert len(complete.splitlines()) == 2
    with pytest.raises(KeyboardInterrupt), Pipe([str(source)], str(out), on_error="skip") as pipe:
        for record in pipe.records(Task):
            if record.id == "b":
                raise KeyboardInterrupt  # after the first bad line was kept, before the second
            pipe.write(record)
    assert rejects.read_bytes() == complete


# ---- 4. the model cache -------------------------------------------------------------------------------


def fake_named_model(monkeypatch, tmp_path, calls):
    """dr_core.models with the conversion replaced by one that writes a small folder and counts calls."""
    from dr_core import models

    def convert(name, named, folder):
        calls.append(name)
        time.sleep(0.3)  # long enough for two first uses to overlap
        work = models.Path(models.tempfile.mkdtemp(prefix=f".{folder.name}.building-", dir=folder.parent))
        (work / "model.safetensors").write_bytes(b"w" * 1000)
        (work / "config.json").write_text("{}")
        files = {p.name: p.stat().st_size for p in work.iterdir()}
        (work / "dr-source.json").write_text(json.dumps({"format": models.FORMAT, "files": files}))
        if folder.exists():
            models.shutil.rmtree(folder)
        work.rename(folder)

    monkeypatch.setenv("DR_MODEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(models, "_convert", convert)
    return models


def test_a_damaged_cache_is_rebuilt_with_one_warning(monkeypatch, tmp_path, caplog):
    calls: list[str] = []
    models = fake_named_model(monkeypatch, tmp_path, calls)
    folder = models.resolve("smollm2-135m")
    assert calls == ["smollm2-135m"] and models.resolve("smollm2-135m") == folder and len(calls) == 1
    weights = tmp_path / "cache" / "smollm2-135m" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:500])  # truncated
    with caplog.at_level("WARNING", logger="dr"):  # the dr logger
        assert models.resolve("smollm2-135m") == folder
    assert len(calls) == 2 and "model.safetensors has 500 bytes, 1000 expected" in caplog.text
    (tmp_path / "cache" / "smollm2-135m" / "dr-source.json").write_text("{broken")
    assert models.resolve("smollm2-135m") == folder and len(calls) == 3


@pytest.mark.slow
def test_the_real_conversion_records_sizes_and_two_first_uses_convert_once(tmp_path):
    """Two processes asking for the converted SmolLM2 at once: one converts, the other waits for it;
    nothing is left behind but the folder and the lock."""
    cache = tmp_path / "cache"
    code = (
        "import logging; logging.basicConfig(level=logging.INFO); "
        "from dr_core.models import resolve; print(resolve('smollm2-135m'))"
    )
    env = {**os.environ, "DR_MODEL_CACHE": str(cache)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for _ in range(2)
    ]
    results = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [r[1][-2000:] for r in results]
    assert sum(b"converting" in err for _, err in results) == 1
    assert sorted(p.name for p in cache.iterdir()) == [".smollm2-135m.lock", "smollm2-135m"]
    stamp = json.loads((cache / "smollm2-135m" / "dr-source.json").read_text())
    assert (
        stamp["files"]["model.safetensors"] == (cache / "smollm2-135m" / "model.safetensors").stat().st_size
    )


# ---- 5. --resume after an interrupted re-run ----------------------------------------------------------


def test_resume_after_an_interrupted_rerun_of_a_finished_job_keeps_one_record_per_key(tmp_path):
    out = tmp_path / "trajectories.jsonl"
    key: dict[str, Any] = {
        "key": lambda r: r["task_id"],
        "group_size": lambda r: (r.get("meta") or {}).get("kept_of", 1),
    }
    with RecordWriter(out, **key) as writer:  # a finished run: one trajectory per task
        for i in range(10):
            writer.write({"task_id": f"t{i}", "run": 1, "meta": {"kept_of": 1}})
    # the same command again without --resume, interrupted after redoing 4 tasks (other trajectories)
    with pytest.raises(KeyboardInterrupt), RecordWriter(out, **key) as writer:
        for i in range(4):
            writer.write({"task_id": f"t{i}", "run": 2, "meta": {"kept_of": 1}})
        raise KeyboardInterrupt
    with RecordWriter(out, resume=True, **key) as writer:
        assert writer.done == {f"t{i}" for i in range(10)} and writer.dropped == 4
        writer.write({"task_id": "t10", "run": 3, "meta": {"kept_of": 1}})
    ids = [r["task_id"] for r in read_records(out)]
    assert len(ids) == len(set(ids)) == 11
    # and again: a resumed run interrupted after its copy of the output and one new record
    partial_path(out).write_bytes(out.read_bytes() + b'{"task_id": "t11", "run": 4}\n')
    with RecordWriter(out, resume=True, **key):
        pass
    ids = [r["task_id"] for r in read_records(out)]
    assert len(ids) == len(set(ids)) == 12


def test_resume_through_the_command_keeps_one_trajectory_per_task(tmp_path):
    """`dr data trajectories --keep shortest` run, re-run and interrupted, then resumed."""
    world = tmp_path / "world"
    made = dr("data", "world", "--out", world, "--entities", "40", "--tasks", "30", "--seed", "3")
    assert made.returncode == 0, made.stderr
    index = tmp_path / "index"
    assert dr("data", "index", world / "corpus.jsonl", "-i", index).returncode == 0
    out = tmp_path / "traj.jsonl"
    args = ["data", "trajectories", world / "train.jsonl", "-o", out, "--index", index]
    assert dr(*args).returncode == 0
    tasks = {r["task_id"] for r in read_records(out)}
    # re-run, killed once some records are flushed to the partial file
    proc = subprocess.Popen([*DR, *map(str, args)], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        part = partial_path(out)
        if part.exists() and part.stat().st_size > 0:
            break
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    assert dr(*args, "--resume").returncode == 0
    ids = [r["task_id"] for r in read_records(out)]
    assert sorted(ids) == sorted(tasks)
