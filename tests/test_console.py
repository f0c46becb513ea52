"""The job console (issue 14): one progress line per phase, redrawn in place on a terminal, printed every
interval when piped, silent with -q; a pipeline ETA string."""

from __future__ import annotations

import io
import os
import pty

import pytest

from mella import console
from mella.pipeline import _duration


@pytest.fixture
def level():
    yield console.setup
    console.setup()  # back to NORMAL for the next test


def _read_all(fd: int) -> str:
    out = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # the slave side is closed
            break
        if not chunk:
            break
        out += chunk
    return out.decode()


def test_terminal_redraws_one_line_in_place(level):
    level()
    master, slave = pty.openpty()
    with os.fdopen(slave, "w", closefd=True) as tty:
        p = console.Progress(tty, interval_s=0.0)
        assert p.tty
        p.start("images", "0 rows")
        p.update("10 rows")
        p.update("20 rows")
        p.start("dedup", "exact")  # a new phase ends the last one on its own line
        p.close()
    text = _read_all(master)
    os.close(master)
    assert text.count("\r\x1b[2K") >= 4  # every draw clears and rewrites the line
    lines = [ln for ln in text.replace("\r\n", "\n").split("\n") if ln]
    assert len(lines) == 2, lines  # one finished line per phase
    assert lines[0].rsplit("\x1b[2K", 1)[-1].startswith("images     20 rows")
    assert lines[1].rsplit("\x1b[2K", 1)[-1].startswith("dedup      exact")


def test_piped_prints_at_most_every_interval_and_once_at_the_end(level):
    level()
    out = io.StringIO()
    p = console.Progress(out, interval_s=3600)  # nothing is due again within the test
    p.start("images", "0 rows")
    for n in range(1, 50):
        p.update(f"{n} rows")
    p.close()
    lines = out.getvalue().splitlines()
    assert [ln.split("[")[0].strip() for ln in lines] == ["images     0 rows", "images     49 rows"]
    assert "\r" not in out.getvalue()


def test_quiet_prints_no_progress(level):
    level(quiet=True)
    out = io.StringIO()
    p = console.Progress(out, interval_s=0.0)
    p.start("images", "0 rows")
    p.update("5 rows")
    p.close()
    assert out.getvalue() == ""


def test_eta_durations():
    assert [_duration(s) for s in (5, 89.4, 600, 5399, 12_600)] == ["5 s", "89 s", "10 min", "90 min", "3.5 h"]
