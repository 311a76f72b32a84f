"""Streaming JSONL: read records one line at a time, write them atomically, keep bad lines aside.

Paths may be `-` (stdin/stdout) or files, plain or compressed by suffix (`.gz`, `.zst`). Reading holds one
line in memory at a time. Writing goes to `<path>.partial` and is renamed over `<path>` when the writer
closes, so `<path>` only ever holds whole lines; a run that dies keeps what it wrote, for `--resume`.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import os
import sys
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal, TypeVar, overload

import orjson
from pydantic import BaseModel, ValidationError

from dr_core.errors import InputError, PipeClosed

STDIO = "-"
OnError = Literal["fail", "skip"]
R = TypeVar("R", bound=BaseModel)

# Files are flushed this often by default (a killed run keeps what was flushed, for --resume); writers of
# costly records flush every one (flush_interval_s=0). stdout is flushed every record so pipes stream.
FILE_FLUSH_INTERVAL_S = 1.0


def display_name(path: str | Path) -> str:
    return "<stdin>" if str(path) == STDIO else str(path)


def partial_path(path: str | Path) -> Path:
    """Where a writer for `path` writes before it renames; also what `--resume` recovers from. Beside the
    file a symbolic link points to, since that file is what is written."""
    path = Path(os.path.realpath(path))
    return path.with_name(path.name + ".partial")


def _compression(path: str | Path) -> str | None:
    name = str(path)
    if name.endswith(".gz"):
        return "gz"
    if name.endswith(".zst"):
        return "zst"
    return None


def _open_binary_read(path: str | Path) -> IO[bytes]:
    if str(path) == STDIO:
        return sys.stdin.buffer
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, not a JSONL file") from None
    except PermissionError:
        raise InputError(f"{path}: permission denied") from None


class _Truncated(Exception):
    """A compressed stream that ends before its end-of-stream marker."""


def _decompressed(fh: IO[bytes], compression: str, chunk_size: int = 1 << 16) -> Iterator[bytes]:
    """Decompressed bytes of a gzip or zstd stream (several members/frames allowed), chunk by chunk.

    Done by hand rather than with GzipFile so that every byte before a truncation is delivered first.
    """
    import zstandard

    def new() -> Any:
        if compression == "gz":
            return zlib.decompressobj(wbits=31)  # 16 + 15: one gzip member, header and trailer
        return zstandard.ZstdDecompressor().decompressobj()

    decoder = new()
    started = False
    while True:
        data = fh.read(chunk_size)
        if not data:
            break
        while data:
            started = True
            try:
                out = decoder.decompress(data)
            except (zlib.error, zstandard.ZstdError) as exc:
                raise _Truncated(f"damaged stream: {exc}") from None
            if out:
                yield out
            if not decoder.eof:
                break
            data = decoder.unused_data
            if data.strip(b"\0") == b"":
                data = b""  # padding after the last member
            else:
                decoder = new()
                started = False
    if started and not decoder.eof:
        raise _Truncated("ends before its end-of-stream marker")


def _raw_lines(fh: IO[bytes], compression: str | None) -> Iterator[bytes]:
    """Lines with their newline (the last may lack one), one at a time."""
    if compression is None:
        yield from iter(fh.readline, b"")
        return
    pending = b""
    for chunk in _decompressed(fh, compression):
        pending += chunk
        *complete, pending = pending.split(b"\n")
        for line in complete:
            yield line + b"\n"
    if pending:
        yield pending


def iter_lines(path: str | Path, named: str | Path | None = None) -> Iterator[tuple[int, bytes, bool]]:
    """Yield (line number, line without its newline, whether it ended with a newline), blank lines skipped.

    Compression follows the suffix of `named` (default: `path` itself).
    """
    name = display_name(path)
    compression = None if str(path) == STDIO else _compression(named or path)
    fh = _open_binary_read(path)
    lineno = 0
    try:
        for line in _raw_lines(fh, compression):
            lineno += 1
            ended = line.endswith(b"\n")
            body = line.rstrip(b"\r\n")
            if lineno == 1 and body.startswith(b"\xef\xbb\xbf"):
                body = body[3:]  # a UTF-8 byte-order mark some editors write
            if body.strip():
                yield lineno, body, ended
    except _Truncated as exc:
        raise InputError(
            f"{name}: the compressed stream {exc} (after line {lineno}); the file may be incomplete"
        ) from None
    finally:
        if fh is not sys.stdin.buffer:
            fh.close()


def _field_path(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(record)"


def describe_validation_error(exc: ValidationError, limit: int = 3) -> str:
    """`field 'a.b': message` for the first few errors of a pydantic validation failure."""
    parts = []
    for err in exc.errors()[:limit]:
        message = err["msg"]
        if err["type"] not in ("missing", "extra_forbidden") and "input" in err:
            shown = repr(err["input"])
            message += f" (got {shown[:60] + '...' if len(shown) > 60 else shown})"
        if err["type"] == "extra_forbidden":
            message = "unknown field (extra fields belong in 'meta')"
        parts.append(f"field '{_field_path(err['loc'])}': {message}")
    more = len(exc.errors()) - limit
    if more > 0:
        parts.append(f"and {more} more")
    return "; ".join(parts)


def parse_line(
    body: bytes,
    kind: type[R] | None,
    ended: bool,
    name: str,
    lineno: int,
    adapt: Callable[[dict[str, Any]], Any] | None = None,
) -> Any:
    """Decode one JSONL line into a dict, a validated record, or whatever `adapt` makes of the dict;
    raise InputError naming file:line (and the field)."""
    where = f"{name}:{lineno}"
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{where}: invalid UTF-8 at byte offset {exc.start} of the line") from None
    try:
        obj = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        if not ended:
            raise InputError(
                f"{where}: truncated last line (no newline at the end and not valid JSON: {exc}); "
                "the file may be incomplete"
            ) from None
        raise InputError(f"{where}: invalid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise InputError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    try:
        if adapt is not None:
            return adapt(obj)
        return obj if kind is None else kind.model_validate(obj)
    except ValidationError as exc:
        label = getattr(kind, "KIND", None) or exc.title.lower()
        raise InputError(f"{where}: not a valid {label}: {describe_validation_error(exc)}") from None
    except ValueError as exc:
        raise InputError(f"{where}: {exc}") from None


class RejectWriter:
    """Collects lines that failed to parse or validate, with the error, in a side JSONL file.

    The file is created only when the first reject arrives and is committed atomically on close.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.count = 0
        self._writer: RecordWriter | None = None

    def add(self, name: str, lineno: int, error: str, body: bytes) -> None:
        if self._writer is None:
            self._writer = RecordWriter(self.path, resumable=False).__enter__()
        entry: dict[str, Any] = {"file": name, "line": lineno, "error": error}
        try:
            entry["raw"] = body.decode("utf-8")
        except UnicodeDecodeError:
            entry["raw_base64"] = base64.b64encode(body).decode("ascii")
        self._writer.write(entry)
        self.count += 1

    def close(self, commit: bool = True) -> None:
        """Commit the side file as a writer commits its output: only when the run finished (`commit`);
        otherwise a complete file from an earlier run stays as it was."""
        if self._writer is not None:
            self._writer.close(commit=commit)
            self._writer = None
            if commit:
                from dr_core.log import logger

                logger.warning("%d records rejected; kept with their errors in %s", self.count, self.path)

    def __enter__(self) -> RejectWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.close(commit=exc_type is None)


@overload
def read_records(
    sources: str | Path | Iterable[str | Path],
    kind: type[R],
    *,
    on_error: OnError = "fail",
    rejects: RejectWriter | None = None,
) -> Iterator[R]: ...


@overload
def read_records(
    sources: str | Path | Iterable[str | Path],
    kind: None = None,
    *,
    on_error: OnError = "fail",
    rejects: RejectWriter | None = None,
    adapt: Callable[[dict[str, Any]], Any] | None = None,
) -> Iterator[Any]: ...


def read_records(
    sources: str | Path | Iterable[str | Path],
    kind: type[R] | None = None,
    *,
    on_error: OnError = "fail",
    rejects: RejectWriter | None = None,
    adapt: Callable[[dict[str, Any]], Any] | None = None,
) -> Iterator[Any]:
    """Stream records from one or more JSONL sources, validated as `kind` (or plain dicts, or passed
    through `adapt`, whose ValidationError or ValueError counts as a bad line).

    With on_error="fail" the first bad line raises InputError naming file:line and field; with "skip"
    each bad line goes to `rejects` (required, so nothing is dropped silently) and reading goes on.
    """
    for record, _ in read_located(sources, kind, on_error=on_error, rejects=rejects, adapt=adapt):
        yield record


def valid_records(sources: Iterable[str | Path], kind: type[R], *, fail: bool = True) -> list[R]:
    """The records of `sources` that validate as `kind`, for a first pass over inputs that a Pipe reads
    again: with `fail` a bad line raises as usual; without it, bad lines are passed over here, since the
    Pipe's own reading sends them to the rejects file."""
    found: list[R] = []
    for path in sources:
        name = display_name(path)
        for lineno, body, ended in iter_lines(path):
            try:
                found.append(parse_line(body, kind, ended, name, lineno))
            except InputError:
                if fail:
                    raise
    return found


@dataclass(frozen=True)
class Origin:
    """Where a record was read: the file (as shown), its line, and the line itself."""

    name: str
    line: int
    body: bytes


def read_located(
    sources: str | Path | Iterable[str | Path],
    kind: type[R] | None = None,
    *,
    on_error: OnError = "fail",
    rejects: RejectWriter | None = None,
    adapt: Callable[[dict[str, Any]], Any] | None = None,
) -> Iterator[tuple[Any, Origin]]:
    """`read_records`, each record with its Origin (for a record rejected later, by the work done on it)."""
    if on_error == "skip" and rejects is None:
        raise ValueError("on_error='skip' needs a RejectWriter so rejected lines are kept")
    paths = [sources] if isinstance(sources, str | Path) else list(sources)
    for path in paths:
        name = display_name(path)
        for lineno, body, ended in iter_lines(path):
            try:
                record = parse_line(body, kind, ended, name, lineno, adapt)
            except InputError as exc:
                if on_error == "fail":
                    raise
                assert rejects is not None
                rejects.add(name, lineno, str(exc), body)
                continue
            yield record, Origin(name, lineno, body)


def _record_bytes(record: BaseModel | dict[str, Any]) -> bytes:
    if isinstance(record, BaseModel):
        return orjson.dumps(record.model_dump(mode="json"))
    return orjson.dumps(record)


def default_key(record: dict[str, Any]) -> Any:
    return record.get("id")


class RecordWriter:
    """Writes JSONL to stdout (`-`) or atomically to a file.

    A file is written as `<path>.partial` and renamed over `<path>` by `close()`. If the block using the
    writer fails (an error, Ctrl-C), nothing is renamed: an existing `<path>` stays as it was, and what was
    written stays in `<path>.partial`, where `--resume` picks it up.

    With `resume=True` the records already in `<path>` and in a `<path>.partial` left by a failed run are
    carried over: every whole line of `<path>`, and every whole line of the partial file that is not one of
    those (a resumed run's partial file starts with a copy of `<path>`). Each key's records come from one
    run: from `<path>` when it holds the key's work complete, else from the partial file. So records of
    one run that share a key or are identical all survive, and a re-run that was interrupted after
    redoing keys `<path>` already held adds no second copy of them. `counts` holds how many records each
    key has and `done` the keys whose work is complete, so the caller can skip it. With `group_size`, a
    key is complete once it has as many records as `group_size(record)` says (one task's several
    samples); the records of an incomplete key are not carried, since its work is done again.

    `<path>` may be a symbolic link (its target is written, atomically) or a character device or FIFO
    (written through, as `/dev/null` is; such an output cannot be resumed). `resumable` says whether the
    command has a `--resume` that continues from a failed run's partial file (for the message it leaves).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        resume: bool = False,
        key: Callable[[dict[str, Any]], Any] = default_key,
        group_size: Callable[[dict[str, Any]], int] | None = None,
        flush_interval_s: float = FILE_FLUSH_INTERVAL_S,
        resumable: bool = True,
    ) -> None:
        self.path = path
        self.resumable = resumable
        self._stream = False
        self.flush_interval_s = flush_interval_s
        self.resume = resume
        self.key = key
        self.group_size = group_size
        self.done: set[Any] = set()
        self.counts: Counter[Any] = Counter()
        self.dropped = 0
        self.written = 0
        self.carried = 0
        self._fh: IO[bytes] | None = None
        self._raw: IO[bytes] | None = None
        self._last_flush = 0.0
        self._closed = False
        if resume and str(path) == STDIO:
            raise InputError("--resume needs an output file (-o PATH), not stdout")

    @property
    def to_stdout(self) -> bool:
        return str(self.path) == STDIO

    def __enter__(self) -> RecordWriter:
        self.open()
        return self

    def open(self) -> None:
        if self.to_stdout:
            self._fh = sys.stdout.buffer
            return
        from dr_core.files import output_target

        target = output_target(self.path)
        final = target.path
        if target.stream:
            if self.resume:
                raise InputError(f"{self.path}: --resume needs a regular output file, not a device or FIFO")
            self._stream = True
            try:
                self._raw = open(final, "wb")  # noqa: SIM115 - closed in close()
            except OSError as exc:
                raise InputError(f"{self.path}: cannot write ({exc.strerror})") from None
            self._fh = self._compressor(self._raw, final)
            return
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = partial_path(final)
        if self.resume:
            self._merge_previous(final, tmp)
        try:
            self._raw = open(tmp, "ab" if self.resume else "wb")  # noqa: SIM115 - closed in close()
        except OSError as exc:
            raise InputError(f"{self.path}: cannot write ({exc.strerror})") from None
        self._fh = self._compressor(self._raw, final)

    @staticmethod
    def _compressor(raw: IO[bytes], final: Path) -> IO[bytes]:
        # Appending starts a new gzip member or zstd frame; readers of both formats read across them.
        compression = _compression(final)
        if compression == "gz":
            return gzip.GzipFile(fileobj=raw, mode="wb", mtime=0)  # type: ignore[return-value]  # a binary file; typeshed types it apart from IO
        if compression == "zst":
            import zstandard

            return zstandard.ZstdCompressor(write_checksum=True).stream_writer(raw, closefd=False)
        return raw

    def _merge_previous(self, final: Path, tmp: Path) -> None:
        """Fold the previous output and a failed run's partial file into the partial file, streaming.

        Whole, parseable lines only (see the class docstring). Written beside and renamed, so a crash here
        leaves both inputs as they were.
        """
        sources = [p for p in (final, tmp) if p.exists()]
        if not sources:
            return
        # First pass: how many records each key has in each file; second pass: write, for each key, the
        # records of the one file that holds its work complete (the output first).
        per_source: dict[Path, Counter[Any]] = {path: Counter() for path in sources}
        wanted: dict[Any, int] = {}
        for path, _, obj in self._carried_lines(sources, final):
            k = self.key(obj)
            per_source[path][k] += 1
            if self.group_size is not None and k is not None:
                wanted[k] = max(wanted.get(k, 0), self.group_size(obj))
        owner: dict[Any, Path] = {}
        for path in sources:
            for k, n in per_source[path].items():
                if k is not None and k not in owner and n >= wanted.get(k, 1):
                    owner[k] = path
        complete = set(owner)
        merge = final.with_name(final.name + ".merge")
        with open(merge, "wb") as raw:
            fh = self._compressor(raw, final)
            for path, body, obj in self._carried_lines(sources, final):
                k = self.key(obj)
                if k is not None and owner.get(k) != path:
                    self.dropped += 1
                    continue
                self.counts[k] += 1
                fh.write(body + b"\n")
                self.carried += 1
            if fh is not raw:
                fh.close()
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(merge, tmp)
        self.done = complete
        if self.dropped:
            from dr_core.log import logger

            logger.info(
                "resuming: %d records dropped (unfinished work, done again, or a second copy of finished "
                "work from an interrupted re-run)",
                self.dropped,
            )

    def _carried_lines(
        self, sources: list[Path], final: Path
    ) -> Iterator[tuple[Path, bytes, dict[str, Any]]]:
        """Every whole line of `final`, then those of the partial file that are not copies of them."""
        in_final: Counter[bytes] = Counter()
        for path in sources:
            for body, obj in self._whole_lines(path, final):
                digest = hashlib.blake2b(body, digest_size=16).digest()
                if path == final:
                    in_final[digest] += 1
                elif in_final[digest] > 0:
                    in_final[digest] -= 1
                    continue
                yield path, body, obj

    def _whole_lines(self, path: Path, final: Path) -> Iterator[tuple[bytes, dict[str, Any]]]:
        lines = iter_lines(path, named=final)
        while True:
            try:
                _, body, _ = next(lines)
            except StopIteration:
                return
            except InputError:
                return  # a killed run's compressed stream ends mid-block: keep what came before
            try:
                obj = orjson.loads(body)
            except orjson.JSONDecodeError:
                continue  # the torn last line of a killed run
            if isinstance(obj, dict):
                yield body, obj

    def write(self, record: BaseModel | dict[str, Any]) -> None:
        assert self._fh is not None, "RecordWriter used before open()"
        line = _record_bytes(record) + b"\n"
        try:
            self._fh.write(line)
            now = time.monotonic()
            if self.to_stdout:
                self._fh.flush()
            elif self._stream:  # a FIFO or device streams, as stdout does
                self._flush_file()
            elif now - self._last_flush >= self.flush_interval_s:
                self._flush_file()
                self._last_flush = now
        except BrokenPipeError:
            where = "stdout" if self.to_stdout else str(self.path)
            raise PipeClosed(f"{where} closed by the reader") from None
        self.written += 1

    def _flush_file(self) -> None:
        assert self._fh is not None
        if self._fh is not self._raw:
            import zstandard

            if isinstance(self._fh, gzip.GzipFile):
                self._fh.flush()
            else:
                self._fh.flush(zstandard.FLUSH_BLOCK)  # type: ignore[call-arg]  # zstandard's writer takes a flush mode
        if self._raw is not None:
            self._raw.flush()

    def close(self, commit: bool = True) -> None:
        """Finish the file and rename it into place; when `commit` is false, leave `<path>` as it was and
        keep what was written in `<path>.partial` (or drop the partial file, when it holds nothing)."""
        if self._closed or self._fh is None:
            return
        self._closed = True
        if self.to_stdout:
            try:
                self._fh.flush()
            except BrokenPipeError:
                raise PipeClosed("stdout closed by the reader") from None
            return
        assert self._raw is not None
        if self._fh is not self._raw:
            self._fh.close()
        if self._stream:
            try:
                self._raw.close()
            except BrokenPipeError:
                raise PipeClosed(f"{self.path}: closed by the reader") from None
            return
        self._raw.flush()
        os.fsync(self._raw.fileno())
        self._raw.close()
        tmp = partial_path(self.path)
        if commit:
            os.replace(tmp, os.path.realpath(self.path))
        elif self.written or self.carried:
            from dr_core.log import logger

            logger.warning(
                "%s left as it was; the %d records of this run are in %s%s",
                display_name(self.path),
                self.written + self.carried,
                tmp,
                " (--resume continues from them)" if self.resumable else "",
            )
        else:
            tmp.unlink(missing_ok=True)

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.close(commit=exc_type is None)
