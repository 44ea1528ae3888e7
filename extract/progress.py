"""Progress for people and for logs.

On a terminal, a tqdm bar. When stderr is not a terminal (a file, a pipe, CI), tqdm's redraws
would leave `\\r` updates and cursor-up fragments in the log, so the bar becomes `LogProgress`:
plain lines, one per finished unit (`log_every_s=0`: a video, an epoch, a job) or, for
fine-grained counts (frames, batches), one every `log_every_s` seconds and one when it ends; a
fine-grained loop done in less than `log_every_s` writes nothing.
`log_every_s=None` keeps a bar silent in logs (an inner bar whose outer one already logs).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any

from tqdm import tqdm

LOG_EVERY_S = 30.0


class LogProgress:
    """The part of tqdm's interface the project uses (iterate, update, set_postfix, close, use
    as a context manager), writing plain lines to `file` (default stderr)."""

    def __init__(self, iterable: Iterable[Any] | None = None, desc: str = "",
                 total: float | None = None, unit: str = "it", every_s: float = LOG_EVERY_S,
                 file: IO[str] | None = None, clock: Callable[[], float] = time.monotonic,
                 initial: int = 0) -> None:
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.desc, self.total, self.unit, self.every_s = desc, total, unit, every_s
        self.file = file
        self.clock = clock
        self.n = initial
        self.postfix = ""
        self.t0 = clock()
        # A throttled bar's first line comes `every_s` after its start; a per-unit one's at once.
        self.last_line: float | None = self.t0 if every_s > 0 else None
        self.logged_n: int | None = None
        self.closed = False

    def __iter__(self) -> Iterator[Any]:
        assert self.iterable is not None, "LogProgress without an iterable is updated by hand"
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __len__(self) -> int:
        return int(self.total or 0)

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: float = 1) -> None:
        self.n += int(n)
        now = self.clock()
        due = self.last_line is None or now - self.last_line >= self.every_s
        if n and (due or (self.n == self.total and self._long(now))):
            self._line(now)

    def set_postfix(self, ordered_dict: dict[str, Any] | None = None, refresh: bool = True,
                    **kwargs: Any) -> None:
        items = {**(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = s

    def close(self) -> None:
        now = self.clock()
        if not self.closed and self.n and self.logged_n != self.n and self._long(now):
            self._line(now)  # the final count, unless the last line said it
        self.closed = True

    def _long(self, now: float) -> bool:
        """Whether the bar has run long enough for its end to be worth a line."""
        return self.every_s == 0 or now - self.t0 >= self.every_s

    def _line(self, now: float) -> None:
        count = f"{self.n}/{self.total:g}" if self.total else f"{self.n}"
        extra = f", {self.postfix}" if self.postfix else ""
        out = self.file if self.file is not None else sys.stderr
        out.write(f"{self.desc}: {count} {self.unit} ({now - self.t0:.0f} s){extra}\n")
        out.flush()
        self.last_line, self.logged_n = now, self.n


ProgressBar = tqdm | LogProgress  # what `progress` returns


def progress(iterable: Iterable[Any] | None = None, *, desc: str, enabled: bool = True,
             log_every_s: float | None = LOG_EVERY_S, **kwargs: Any) -> Any:
    """A progress bar over `iterable` (or updated by hand with `total`): tqdm on a terminal,
    `LogProgress` lines when stderr is not one, nothing when not `enabled`. kwargs go to tqdm
    (total, unit, leave, position, ...); LogProgress takes total and unit of them."""
    if enabled and not _stderr_is_terminal():
        if log_every_s is None:
            enabled = False
        else:
            return LogProgress(iterable, desc=desc, total=kwargs.get("total"),
                               unit=kwargs.get("unit", "it"), every_s=log_every_s,
                               initial=kwargs.get("initial", 0))
    return tqdm(iterable, desc=desc, disable=not enabled, file=sys.stderr, **kwargs)


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False
