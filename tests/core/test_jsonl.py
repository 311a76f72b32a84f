"""JSONL reading and writing: edge cases name file, line and field, and never lose valid records."""

from __future__ import annotations

import gzip
import os

import orjson
import pytest
import zstandard

from dr_core.errors import InputError
from dr_core.jsonl import RecordWriter, RejectWriter, partial_path, read_records
from dr_core.records import Task
from support import must

GOOD = [{"id": f"t{i}", "question": f"question {i}"} for i in range(3)]


def lines(*records: dict) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in records)


def write(path, data: bytes):
    if str(path).endswith(".gz"):
        path.write_bytes(gzip.compress(data))
    elif str(path).endswith(".zst"):
        path.write_bytes(zstandard.ZstdCompressor(write_checksum=True).compress(data))
    else:
        path.write_bytes(data)
    return path


def read_until_error(path, **kw):
    got = []
    with pytest.raises(InputError) as info:
        for record in read_records(path, Task, **kw):
            got.append(record.id)
    return got, str(info.value)


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz", ".jsonl.zst"])
def test_reads_plain_and_compressed_files_alike(tmp_path, suffix):
    path = write(tmp_path / f"tasks{suffix}", lines(*GOOD) + b"\n  \n")
    assert [t.id for t in read_records(path, Task)] == ["t0", "t1", "t2"]


def test_malformed_json_names_file_and_line_after_yielding_the_good_ones(tmp_path):
    path = write(tmp_path / "t.jsonl", lines(GOOD[0], GOOD[1]) + b'{"id": "x", oops}\n' + lines(GOOD[2]))
    got, message = read_until_error(path)
    assert got == ["t0", "t1"]
    assert message.startswith(f"{path}:3: invalid JSON:")


def test_wrong_field_type_names_the_field(tmp_path):
    bad = {"id": "b", "question": "q", "checklist": [{"text": "t", "weight": "heavy"}]}
    path = write(tmp_path / "t.jsonl", lines(GOOD[0], bad))
    got, message = read_until_error(path)
    assert got == ["t0"]
    assert message.startswith(
        f"{path}:2: not a valid task: field 'checklist.0.weight': Input should be a valid number"
    )
    assert "(got 'heavy')" in message


def test_missing_and_unknown_fields_are_named(tmp_path):
    path = write(tmp_path / "t.jsonl", lines({"id": "a"}))
    assert "field 'question': Field required" in read_until_error(path)[1]
    path = write(tmp_path / "u.jsonl", lines({"question": "q", "qestion": "typo"}))
    assert "field 'qestion': unknown field (extra fields belong in 'meta')" in read_until_error(path)[1]


def test_invalid_utf8_names_the_line_and_byte(tmp_path):
    path = write(tmp_path / "t.jsonl", lines(GOOD[0]) + b'{"question": "caf\xe9"}\n')
    got, message = read_until_error(path)
    assert got == ["t0"]
    assert message == f"{path}:2: invalid UTF-8 at byte offset 17 of the line"


def test_truncated_last_line_is_reported_as_such(tmp_path):
    path = write(tmp_path / "t.jsonl", lines(GOOD[0]) + b'{"id": "t1", "quest')
    got, message = read_until_error(path)
    assert got == ["t0"]
    assert message.startswith(f"{path}:2: truncated last line (no newline at the end and not valid JSON")


def test_last_line_without_newline_is_fine_when_complete(tmp_path):
    path = write(tmp_path / "t.jsonl", lines(GOOD[0]) + orjson.dumps(GOOD[1]))
    assert [t.id for t in read_records(path, Task)] == ["t0", "t1"]


def test_non_object_line_and_missing_file(tmp_path):
    path = write(tmp_path / "t.jsonl", b"[1, 2]\n")
    assert read_until_error(path)[1] == f"{path}:1: expected a JSON object, got list"
    with pytest.raises(InputError, match=r"nope\.jsonl: no such file"):
        list(read_records(tmp_path / "nope.jsonl"))


@pytest.mark.parametrize(("suffix", "marker"), [(".gz", 8), (".zst", 4)])
def test_truncated_compressed_file_yields_what_it_holds_then_errors(tmp_path, suffix, marker):
    whole = write(tmp_path / f"whole.jsonl{suffix}", lines(*GOOD)).read_bytes()
    path = tmp_path / f"t.jsonl{suffix}"
    path.write_bytes(whole[:-marker])  # the end-of-stream marker (gzip trailer, zstd checksum) is gone
    got, message = read_until_error(path)
    assert got == ["t0", "t1", "t2"]
    assert message.startswith(
        f"{path}: the compressed stream ends before its end-of-stream marker (after line 3)"
    )


def test_damaged_compressed_file_is_an_error_not_a_traceback(tmp_path):
    data = bytearray(gzip.compress(lines(*GOOD) * 50))
    data[30:60] = b"\xff" * 30
    path = tmp_path / "t.jsonl.gz"
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match=f"{path}: the compressed stream damaged stream: "):
        list(read_records(path, Task))


def test_skip_keeps_going_and_keeps_every_reject_with_its_error(tmp_path):
    raw_bad_utf8 = b'{"question": "caf\xe9"}'
    data = (
        lines(GOOD[0])
        + b"not json\n"
        + lines(GOOD[1], {"question": 5})
        + raw_bad_utf8
        + b"\n"
        + lines(GOOD[2])
    )
    path = write(tmp_path / "t.jsonl", data)
    rejects_path = tmp_path / "rejects.jsonl"
    with RejectWriter(rejects_path) as rejects:
        got = [t.id for t in read_records(path, Task, on_error="skip", rejects=rejects)]
    assert got == ["t0", "t1", "t2"]
    entries = [orjson.loads(line) for line in rejects_path.read_bytes().splitlines()]
    assert [(r["line"], r["file"]) for r in entries] == [(2, str(path)), (4, str(path)), (5, str(path))]
    assert entries[0]["raw"] == "not json" and entries[0]["error"].startswith(f"{path}:2: invalid JSON")
    assert "field 'question'" in entries[1]["error"]
    import base64

    assert base64.b64decode(entries[2]["raw_base64"]) == raw_bad_utf8


def test_no_rejects_file_when_nothing_was_rejected(tmp_path):
    path = write(tmp_path / "t.jsonl", lines(*GOOD))
    with RejectWriter(tmp_path / "rejects.jsonl") as rejects:
        assert len(list(read_records(path, Task, on_error="skip", rejects=rejects))) == 3
    assert not (tmp_path / "rejects.jsonl").exists()


def test_skip_needs_a_place_for_rejects(tmp_path):
    with pytest.raises(ValueError, match="needs a RejectWriter"):
        list(read_records(write(tmp_path / "t.jsonl", lines(*GOOD)), Task, on_error="skip"))


def test_output_appears_only_when_complete(tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_bytes(b'{"id": "old"}\n')
    with RecordWriter(out) as writer:
        writer.write(Task(id="new", question="q"))
        assert out.read_bytes() == b'{"id": "old"}\n'  # the old file stands until the writer closes
        assert partial_path(out).exists()
    assert [r["id"] for r in read_records(out)] == ["new"]
    assert not partial_path(out).exists()


def test_a_failed_run_leaves_the_old_file_and_keeps_its_records_for_resume(tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_bytes(b'{"id": "old"}\n')
    with pytest.raises(RuntimeError), RecordWriter(out):
        raise RuntimeError("before any record")
    assert out.read_bytes() == b'{"id": "old"}\n'
    assert not partial_path(out).exists()
    with pytest.raises(KeyboardInterrupt), RecordWriter(out) as writer:
        writer.write({"id": "a"})
        writer.write({"id": "b"})
        raise KeyboardInterrupt  # Ctrl-C midway
    assert out.read_bytes() == b'{"id": "old"}\n'  # never a partial output in place of a complete one
    assert [r["id"] for r in read_records(partial_path(out))] == ["a", "b"]
    with RecordWriter(out, resume=True) as writer:
        assert writer.done == {"old", "a", "b"}
        writer.write({"id": "c"})
    assert [r["id"] for r in read_records(out)] == ["old", "a", "b", "c"]


def test_resume_keeps_every_record_that_shares_a_key_or_is_identical(tmp_path):
    out = tmp_path / "out.jsonl"
    samples = [{"task_id": "t1", "n": 0}, {"task_id": "t1", "n": 1}, {"task_id": "t1", "n": 1}]
    with RecordWriter(out, key=lambda r: r["task_id"]) as writer:
        for record in samples:
            writer.write(record)
    with RecordWriter(out, resume=True, key=lambda r: r["task_id"]) as writer:
        assert writer.done == {"t1"} and writer.counts["t1"] == 3 and writer.carried == 3
        writer.write({"task_id": "t2", "n": 0})
    # killed again after a copy of the output and one new record: resumed once more, nothing doubles
    partial_path(out).write_bytes(out.read_bytes() + lines({"task_id": "t3", "n": 0}))
    with RecordWriter(out, resume=True, key=lambda r: r["task_id"]) as writer:
        assert writer.carried == 5
    assert [(r["task_id"], r["n"]) for r in read_records(out)] == [
        ("t1", 0), ("t1", 1), ("t1", 1), ("t2", 0), ("t3", 0)
    ]  # fmt: skip


def test_resume_redoes_a_group_that_is_not_complete(tmp_path):
    out = tmp_path / "out.jsonl"
    # task a kept 2 samples; the run was killed after the first of task b's 3
    partial_path(out).write_bytes(
        lines({"task_id": "a", "of": 2}, {"task_id": "a", "of": 2}, {"task_id": "b", "of": 3})
    )
    with RecordWriter(out, resume=True, key=lambda r: r["task_id"], group_size=lambda r: r["of"]) as w:
        assert w.done == {"a"} and w.dropped == 1
    assert [r["task_id"] for r in read_records(out)] == ["a", "a"]


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz", ".jsonl.zst"])
def test_resume_carries_records_over_and_reports_done_ids(tmp_path, suffix):
    out = tmp_path / f"out{suffix}"
    with RecordWriter(out) as writer:
        writer.write({"id": "a"})
        writer.write({"id": "b"})
    with RecordWriter(out, resume=True) as writer:
        assert writer.done == {"a", "b"} and writer.carried == 2
        writer.write({"id": "c"})
    assert [r["id"] for r in read_records(out)] == ["a", "b", "c"]


def test_resume_recovers_whole_lines_of_a_killed_run(tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_bytes(lines({"id": "a"}))
    # a killed resumed run: it had copied 'a', written 'b', and died mid-way through 'c'
    partial_path(out).write_bytes(lines({"id": "a"}, {"id": "b"}) + b'{"id": "c", "te')
    with RecordWriter(out, resume=True) as writer:
        assert writer.done == {"a", "b"}
        writer.write({"id": "c"})
    assert [r["id"] for r in read_records(out)] == ["a", "b", "c"]


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz", ".jsonl.zst"])
def test_resume_recovers_what_a_killed_writer_had_flushed(tmp_path, suffix):
    out = tmp_path / f"out{suffix}"
    writer = RecordWriter(out).__enter__()
    writer.write({"id": "a"})
    writer.write({"id": "b"})
    writer._flush_file()  # the writer flushes each second; then the process is killed:
    must(writer._raw).close()  # no gzip trailer, no end of the zstd frame, no rename
    assert not out.exists()
    with RecordWriter(out, resume=True) as resumed:
        assert resumed.done == {"a", "b"}
        resumed.write({"id": "c"})
    assert [r["id"] for r in read_records(out)] == ["a", "b", "c"]


def test_resume_on_stdout_is_refused():
    with pytest.raises(InputError, match="--resume needs an output file"):
        RecordWriter("-", resume=True)


def test_reading_is_one_line_at_a_time(tmp_path):
    # A FIFO fed one line at a time: the first record arrives before the writer has written the second.
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    import threading

    fed = threading.Event()
    second_written = threading.Event()

    def feed():
        with open(fifo, "wb") as fh:
            fh.write(lines(GOOD[0]))
            fh.flush()
            fed.wait(5)
            fh.write(lines(GOOD[1]))
            second_written.set()

    thread = threading.Thread(target=feed)
    thread.start()
    records = read_records(fifo, Task)
    first = next(records)
    assert first.id == "t0" and not second_written.is_set()
    fed.set()
    assert next(records).id == "t1"
    thread.join()
