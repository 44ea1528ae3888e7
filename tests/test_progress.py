"""Progress output fit for logs: plain lines when stderr is not a terminal (issue 28, point 7)."""

import io
import subprocess
import sys

from extract.progress import LogProgress


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_one_line_per_unit_for_videos_and_epochs():
    out = io.StringIO()
    items = list(LogProgress(["a", "b", "c"], desc="videos", unit="video", every_s=0, file=out))
    assert items == ["a", "b", "c"]
    lines = out.getvalue().splitlines()
    assert [ln.split(" (")[0] for ln in lines] == ["videos: 1/3 video", "videos: 2/3 video",
                                                  "videos: 3/3 video"]


def test_fine_counts_log_at_most_every_interval_and_once_at_the_end():
    out, clock = io.StringIO(), Clock()
    bar = LogProgress(desc="frames", total=100, unit="frame", every_s=30, file=out, clock=clock)
    with bar:
        for _ in range(10):
            clock.t += 10
            bar.update(10)
            bar.set_postfix(detections=2)
    lines = out.getvalue().splitlines()
    # t=30 (30 s after the start), 60, 90, then 100, the total.
    assert [ln.split(" (")[0] for ln in lines] == ["frames: 30/100 frame", "frames: 60/100 frame",
                                                  "frames: 90/100 frame",
                                                  "frames: 100/100 frame"]
    assert lines[-1].endswith("(100 s), detections=2")
    # A bar closed before its total says where it stopped; a quick one says nothing.
    out, clock = io.StringIO(), Clock()
    with LogProgress(desc="frames", every_s=30, file=out, clock=clock, initial=5) as bar:
        bar.update(3)
        clock.t = 31
        bar.update(4)
        clock.t = 40
        bar.update(1)
    assert out.getvalue().splitlines() == ["frames: 12 it (31 s)", "frames: 13 it (40 s)"]
    out = io.StringIO()
    with LogProgress(desc="quick", total=3, every_s=30, file=out, clock=Clock()) as bar:
        bar.update(3)
    assert out.getvalue() == ""


def test_progress_in_a_pipe_writes_plain_lines():
    code = ("from extract.progress import progress\n"
            "for _ in progress(range(3), desc='videos', unit='video', log_every_s=0): pass\n"
            "for _ in progress(range(50), desc='inner', log_every_s=None): pass\n"
            "bar = progress(desc='frames', total=7, unit='frame')\n"
            "bar.update(7); bar.close()\n"
            "for _ in progress(range(3), desc='off', enabled=False): pass\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "\r" not in r.stderr and "\x1b[" not in r.stderr
    # The quick frame count stays silent: a loop shorter than 30 s is not worth a line.
    assert [ln.split(" (")[0] for ln in r.stderr.splitlines()] == [
        "videos: 1/3 video", "videos: 2/3 video", "videos: 3/3 video"]
