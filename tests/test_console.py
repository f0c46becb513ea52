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


def test_progress_line_carries_an_eta(level, monkeypatch):
    """Crawl shards (``N/M``) and rows inside a unit (``N candidate rows done, K still in``) get an ETA from the
    rate since the phase's first figure; a text with its own ETA gets no second one."""
    level()
    clock = [1000.0]
    monkeypatch.setattr(console.time, "monotonic", lambda: clock[0])
    out = io.StringIO()
    p = console.Progress(out, interval_s=0.0)
    p.start("crawl", "0/10 shards done")
    clock[0] += 30
    p.update("3/10 shards done, 40 pages")  # 3 shards in 30 s: 7 left → 70 s
    assert out.getvalue().splitlines()[-1].endswith("[30 s, ETA 70 s]"), out.getvalue()
    p.start("images", "unit 1/4, ETA 9 min, 0 candidate rows done, 0 still in")
    clock[0] += 10
    p.update("unit 1/4, ETA 9 min, 200 candidate rows done, 1200 still in")  # 20 rows/s: 1200 → 60 s
    assert out.getvalue().splitlines()[-1].endswith("[10 s, unit ETA 60 s]"), out.getvalue()
    p.start("write", "d_know/ and rejects/ (unit 2/4, ETA 5 min)")
    clock[0] += 5
    p.update("d_know/ and rejects/ (unit 3/4, ETA 2 min)")
    p.close()
    assert "ETA 2 min)  [5 s]" in out.getvalue() and "\x1b" not in out.getvalue()


def test_piped_stderr_filter_drops_library_lines_and_escape_codes():
    """What the fd-2 filter keeps when piped (no -v): our lines, without ANSI codes; Ray-prefixed worker lines
    (raw ANSI included), DeepSpeed's warnings and the known harmless lines are dropped."""
    keep = console._line_filter(console.HARMLESS, tty=False)
    lines = [
        b"\x1b[36m(ServeController pid=4242)\x1b[0m INFO 2026-12-06 controller.py:123 -- Controller shutdown",
        b"(MapWorker(MapBatches(_EngineActor)) pid=17, ip=10.0.0.2) some library output",
        b"\x1b[33m(raylet)\x1b[0m Task ServeController.graceful_shutdown failed. There are infinite retries",
        b"[2026-12-06 02:41:03,123] [WARNING] [real_accelerator.py:162:get_accelerator] Setting accelerator to CPU.",
        b" [WARNING]  async_io requires the dev libaio .so object and headers but these were not found.",
        b"Token authentication is enabled for this Ray cluster. Set RAY_AUTH_MODE=disabled to opt out.",
        b"warning: the report step failed (ValueError: x); the rows in out stand",
        b"\x1b[33me2e.py: error: something\x1b[0m",
    ]
    assert [keep(x) for x in lines] == [
        None,
        None,
        None,
        None,
        None,
        None,
        b"warning: the report step failed (ValueError: x); the rows in out stand",
        b"e2e.py: error: something",
    ]
    assert console._line_filter((), tty=True)(b"\x1b[33mcoloured\x1b[0m") == b"\x1b[33mcoloured\x1b[0m"


def test_deepspeed_warnings_only_with_verbose(level, capsys):
    """DeepSpeed logs to stdout through its own handler ("Setting accelerator to CPU" on a CPU machine): hidden
    unless -v, errors always shown. Uses DeepSpeed's real logger."""
    import logging

    level()
    from deepspeed.utils import logger  # its import may warn about the accelerator: hidden too

    logger.warning("a DeepSpeed warning")
    logger.error("a real DeepSpeed error")
    out = capsys.readouterr().out
    assert "WARNING" not in out and "a real DeepSpeed error" in out, out
    for f in list(logging.getLogger("DeepSpeed").filters):
        logging.getLogger("DeepSpeed").removeFilter(f)
    level(verbose=True)
    logger.warning("shown with -v")
    assert "shown with -v" in capsys.readouterr().out


def test_eta_from_the_phase_start_when_the_first_figure_comes_late(level, monkeypatch):
    level()
    clock = [50.0]
    monkeypatch.setattr(console.time, "monotonic", lambda: clock[0])
    out = io.StringIO()
    p = console.Progress(out, interval_s=0.0)
    p.start("train", "3 adapters, 6 steps each")
    clock[0] += 40
    p.update("1/3 adapters done")  # 40 s for the first: 2 left → 80 s
    p.close()
    assert "1/3 adapters done  [40 s, ETA 80 s]" in out.getvalue(), out.getvalue()
