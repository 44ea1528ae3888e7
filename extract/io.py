"""Files that appear whole or not at all, checkpoints, and the rows of a metrics CSV.

The ground every stage writes on: a killed process leaves the old file or the whole new one,
never a part, and files get the permissions an ordinary `open` gives under the umask.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import torch
from filelock import FileLock, Timeout

METRICS_CSV = "metrics.csv"


class RunError(RuntimeError):
    """A run directory or checkpoint is missing, incomplete, or does not match what was asked."""


def current_umask() -> int:
    """The process umask (read without changing it where /proc allows)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def temp_file_beside(path: Path, suffix: str, prefix: str | None = None) -> tuple[int, str]:
    """(fd, name) of a new temporary file in `path`'s folder (created if needed), with the
    permissions an ordinary `open` would give under the umask: mkstemp makes files 0600, and a
    feature set or run renamed from one would be unreadable by the rest of a team."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=prefix or f".{path.name}.", suffix=suffix, dir=path.parent)
    os.fchmod(fd, 0o666 & ~current_umask())
    return fd, tmp


@contextmanager
def atomic_writer(path: Path) -> Iterator[BinaryIO]:
    """A binary file that appears at `path` only when the block finishes (temporary file in the
    same folder, flush, fsync, rename): readers see the old file or the whole new one."""
    path = Path(path)
    fd, tmp = temp_file_beside(path, ".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path`: readers see the old file or the whole new one, never a part."""
    with atomic_writer(path) as f:
        f.write(data)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(Path(path), (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: Path, what: str = "file", error: type[Exception] = RunError) -> Any:
    """The JSON in `path`; `error` naming the file when it is missing, a folder, not text or
    not JSON."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise error(f"{path}: {what} not found") from e
    except IsADirectoryError as e:
        raise error(f"{path}: is a folder, not the {what}") from e
    except UnicodeDecodeError as e:
        raise error(f"{path}: not a text file (byte {e.start} is not UTF-8)") from e
    except json.JSONDecodeError as e:
        raise error(f"{path}: not valid JSON ({e})") from e
    except OSError as e:
        raise error(f"{path}: cannot read the {what} ({e.strerror})") from e


@contextmanager
def file_lock(path: Path, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """An exclusive lock on `path` (created if needed) across processes, held for the block;
    `on_wait` is called once when another process holds it and this one has to wait."""
    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if on_wait is not None:
            on_wait()
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def try_lock(path: Path) -> FileLock | None:
    """The lock on `path` when no other process holds it (release it), else None."""
    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return None
    return lock


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """torch.save atomically: a killed run never leaves a partial checkpoint."""
    with atomic_writer(Path(path)) as f:
        torch.save(state, f)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint written by `save_checkpoint`, read with `weights_only` (no code runs)."""
    path = Path(path)
    if not path.is_file():
        raise RunError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a broken file
        raise RunError(f"{path}: not a readable mgdet checkpoint ({e})") from e


def append_metrics_row(out: Path, row: dict[str, Any]) -> None:
    """Append one epoch's row to out/metrics.csv (the header grows if new columns appear); a
    resumed epoch replaces its earlier row."""
    path = Path(out) / METRICS_CSV
    rows: list[dict[str, Any]] = read_metrics_rows(out)
    rows = [r for r in rows if str(r.get("epoch")) != str(row["epoch"])]
    rows.append(dict(row))
    columns: list[str] = []
    for r in rows:
        columns += [k for k in r if k not in columns]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns)
    w.writeheader()
    w.writerows(rows)
    atomic_write_bytes(path, buf.getvalue().encode())


def read_metrics_rows(run: Path) -> list[dict[str, str]]:
    """The rows of run/metrics.csv; [] when there is none yet."""
    path = Path(run) / METRICS_CSV
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def is_number(text: str) -> bool:
    """Whether a CSV cell parses as a number (header cells do not)."""
    try:
        float(text)
    except ValueError:
        return False
    return True
