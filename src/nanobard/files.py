"""Writing a run's files so that a crash or a full disk never leaves half of one.

Every file of a run folder (checkpoints, JSON records, figures, the report, the fine-tuned model
folder) is written to a temporary name beside its target, flushed to disk, then renamed over it:
the target is either the previous complete file or the new complete file, never a mix. When the
write fails (no space left, a quota, a read-only disk) the temporary file is removed, the previous
file stays, and ``WriteFailed`` says in one line which path failed, why, and what was kept.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import NoReturn

from nanobard.errors import NanobardError

logger = logging.getLogger(__name__)

# errors that say the disk, not nanobard, refused the write
DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EFBIG)
# how libraries that swallow the OSError report a full disk (torch's zip writer, safetensors' Rust)
_DISK_FULL_TEXTS = ("no space left on device", "os error 28", "code: 28")
_NEARLY_FULL = 1 << 20  # bytes free under which a library's vague write error is a full disk


class WriteFailed(NanobardError):
    """A file of a run could not be written; the previous complete file is kept."""

    exit_code = 1

    def __init__(self, path: str | os.PathLike, cause: str, hint: str = "", kept: str = "") -> None:
        self.path, self.cause, self.hint, self.kept = Path(path), cause, hint, kept
        previous = (
            f"the previous {self.path.name} is kept"
            if self.path.exists()
            else "nothing was written there"
        )
        super().__init__(
            f"{cause} writing {self.path}; {previous}"
            + (f"; kept: {kept}" if kept else "")
            + (f"; {hint}" if hint else "")
        )

    def with_hint(self, hint: str, kept: str | None = None) -> WriteFailed:
        """The same failure with what the caller knows: what else is kept, how to go on."""
        return WriteFailed(self.path, self.cause, hint, self.kept if kept is None else kept)


def describe(exc: BaseException, where: str | os.PathLike) -> str | None:
    """What a failed write says, in a few words, if it is the disk's doing (full, quota,
    read-only, I/O error); None for anything else. ``where``: a path on the disk written to."""
    if isinstance(exc, WriteFailed):  # a write inside a larger one (a file in a folder)
        return exc.cause
    text = str(exc).lower()
    if (isinstance(exc, OSError) and exc.errno == errno.EDQUOT) or "quota exceeded" in text:
        return "disk quota exceeded"
    full = (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or any(
        t in text for t in _DISK_FULL_TEXTS
    )
    # torch's writers swallow the OSError: "unexpected pos", "iostream error", "file write
    # failed"; a full disk when the disk is (nearly) full
    if not full and isinstance(exc, RuntimeError):
        full = 0 <= free_bytes(where) < _NEARLY_FULL
    if full:
        free = free_bytes(where)
        return "no space left on the device" + (f" ({_size(free)} free)" if free >= 0 else "")
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return None


def raise_as_write_failed(e: Exception, path: Path, hint: str = "") -> NoReturn:
    """``WriteFailed`` for writing ``path`` when the disk refused it; ``e`` itself otherwise."""
    why = describe(e, path.parent)
    if why is None:
        raise e
    raise WriteFailed(path, why, hint) from e


def free_bytes(where: str | os.PathLike) -> int:
    """Free bytes on the disk that holds ``where`` (its nearest existing parent); -1 if unknown."""
    p = Path(where)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return -1


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"  # pragma: no cover - the loop returns


def _temp_name(path: Path) -> Path:
    # the same suffix: a writer that picks its format from the name (savefig) still can
    return path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.tmp{path.suffix}")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path to write ``path``'s new content to; once the block ends it is flushed to
    disk and renamed over ``path``. A failure inside the block (or while flushing) removes the
    temporary file and leaves ``path`` as it was; a disk error becomes ``WriteFailed``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(path)
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    except Exception as e:
        raise_as_write_failed(e, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_all(fd: int, data: bytes | memoryview) -> None:
    """``data`` to ``fd`` with plain ``write`` calls: a full disk fails here, not at a later
    flush of a buffer."""
    view = memoryview(data).cast("B")
    while view:
        view = view[os.write(fd, view) :]


def write_bytes(path: str | os.PathLike, data: bytes | memoryview) -> Path:
    """Write ``data`` to ``path`` atomically (see ``atomic_path``)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        try:
            _write_all(fd, data)
        finally:
            os.close(fd)
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` as UTF-8 to ``path`` atomically (see ``atomic_path``)."""
    return write_bytes(path, text.encode("utf-8"))


def append_line(path: str | os.PathLike, line: str) -> None:
    """Append one line to ``path``: all of it or, when the disk refuses, none of it (the file is
    cut back to where it was, so a reader never meets half a line). A last line an older writer
    left unfinished is cut off first, so the new line does not run on from it."""
    path = Path(path)
    data = (line.rstrip("\n") + "\n").encode("utf-8")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        end = os.lseek(fd, 0, os.SEEK_END)
        start = _after_last_newline(fd, end)
        os.lseek(fd, start, os.SEEK_SET)
        try:
            if start < end:
                os.ftruncate(fd, start)
            _write_all(fd, data)
        except OSError as e:
            with suppress(OSError):
                os.ftruncate(fd, start)
            raise_as_write_failed(e, path)
    finally:
        os.close(fd)


def _after_last_newline(fd: int, end: int) -> int:
    """Where the file's complete lines end (``end`` when it ends in a newline or is empty)."""
    pos = end
    while pos > 0:
        n = min(4096, pos)
        i = os.pread(fd, n, pos - n).rfind(b"\n")
        if i >= 0:
            return pos - n + i + 1
        pos -= n
    return 0


@contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary folder to fill with ``path``'s new content; once the block ends its files are
    flushed and it takes ``path``'s place (the previous folder is moved aside first, then
    removed). A failure, or Ctrl-C, removes the temporary folder and leaves ``path`` as it
    was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    old = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.old")
    try:
        tmp.mkdir()
        yield tmp
        for f in tmp.rglob("*"):
            if f.is_file():
                _fsync(f)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
    except Exception as e:
        raise_as_write_failed(e, path)
    finally:
        if old.exists() and not path.exists():  # put the previous folder back
            os.replace(old, path)
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


_LEFTOVER = re.compile(r"^\..+\.[0-9a-f]{8}\.(tmp|old)(\.[^.]+)?$")


def remove_leftovers(folder: str | os.PathLike) -> list[str]:
    """Remove the temporary files and folders a killed writer left in ``folder`` (call it only
    as the folder's one writer); their names."""
    gone = []
    for p in Path(folder).iterdir() if Path(folder).is_dir() else ():
        if _LEFTOVER.match(p.name):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            gone.append(p.name)
    return gone


__all__ = [
    "WriteFailed",
    "DISK_ERRNOS",
    "describe",
    "free_bytes",
    "atomic_path",
    "atomic_folder",
    "write_bytes",
    "write_text",
    "append_line",
    "remove_leftovers",
    "raise_as_write_failed",
]
