"""What a person sees when a job runs: clean usage errors, one progress line per phase, quiet Ray.

* :class:`UsageError` + :func:`run_job`: a bad invocation prints ONE line on stderr naming the problem
  and the fix, exit code 2, no traceback (``--debug`` shows it). Other failures: one line, exit 1.
* :class:`Progress`: one line per phase (``crawl``, ``images``, ``dedup``...) that updates in place
  on a terminal and is printed every ``PIPE_INTERVAL_S`` seconds (10 s) when stdout is piped.
* :func:`setup`: verbosity. Default: our progress lines, warnings and errors; Ray's INFO logs, its
  progress bars and the known harmless warnings (:data:`HARMLESS`) are off. ``-q``: warnings and the
  funnel only. ``-v``: everything Ray says, as Ray prints it.

How Ray is quieted (Ray 2.60; docs "Configuring Logging" and "Monitoring Your Workload"): Ray Data's
progress bars via ``DataContext.enable_progress_bars = False``; Ray Data's own console handler (logger
``ray.data``, ``propagate=False``) raised to WARNING, its log file under the session dir is kept;
workers' output is not streamed to the driver (``ray.init(log_to_driver=False)``; it stays in
``/tmp/ray/session_latest/logs``, and a task's exception still reaches the driver with its traceback);
the known harmless lines Ray's C++ core and Python print on the driver's stderr (:data:`HARMLESS`) are
dropped by a line filter on file descriptor 2 (:func:`filter_stderr`): C++ writes there directly, so
no logging setting can reach them (``RAY_BACKEND_LOG_LEVEL`` would itself print a line per process).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO

QUIET, NORMAL, VERBOSE = -1, 0, 1
PIPE_INTERVAL_S = 10.0
TTY_INTERVAL_S = 0.5
#: Known harmless Ray messages hidden unless -v: token auth on a private local Ray (we start it on
#: loopback); Ray Data's notice that progress goes to the log when piped.
HARMLESS = (
    "Token authentication is enabled for this Ray cluster",
    "Progress will be logged because stdout is a non-interactive terminal",
    "Progress bars disabled. To enable, set",
    # Ray Data actor pools (core_worker.cc): a restart would need the constructor args; ours are small
    "has constructor arguments in the object store and max_restarts > 0",
    # DeepSpeed on a CPU-only machine
    "Setting accelerator to CPU. If you have GPU or other accelerator",
)

_level = NORMAL
#: progress figures in a phase's text (:meth:`Progress._eta`)
_OF = re.compile(r"\b(\d+)/(\d+)\b")
_ROWS = re.compile(r"\b(\d+) candidate rows done, (\d+) still in\b")


class UsageError(SystemExit):
    """A bad invocation or input the user can fix: printed as one line by :func:`run_job`, exit code 2.

    A ``SystemExit`` (code 2, as argparse's own errors), so no ``except Exception`` on the way swallows it.
    """

    def __init__(self, message: str) -> None:
        super().__init__(2)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are one line (``PROG: error: ...; see --help``) raised as :class:`UsageError`."""

    def error(self, message: str):
        raise UsageError(f"{message} (see {self.prog} --help)")


def add_console_flags(ap: argparse.ArgumentParser) -> None:
    """``-q/--quiet``, ``-v/--verbose``, ``--debug`` (full traceback on failure)."""
    g = ap.add_argument_group("console")
    g.add_argument("-q", "--quiet", action="store_true", help="warnings, errors and the result only")
    g.add_argument("-v", "--verbose", action="store_true", help="everything, including Ray's INFO logs")
    g.add_argument("--debug", action="store_true", help="show the full traceback when the job fails")


def setup(quiet: bool = False, verbose: bool = False) -> int:
    """Configure logging for a job before Ray starts; returns the level (QUIET, NORMAL or VERBOSE)."""
    global _level
    _level = VERBOSE if verbose else QUIET if quiet else NORMAL
    logging.basicConfig(
        level=logging.INFO if _level == VERBOSE else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        if _level == VERBOSE
        else "%(levelname)s %(name)s: %(message)s",
    )
    if _level < VERBOSE:
        import warnings

        # Ray Data: an actor pool sized for many inputs got one WARC file (the demo); harmless
        warnings.filterwarnings("ignore", message="The minimum number of concurrent actors")
        # DeepSpeed's own logger writes to stdout (no fd-2 filter reaches it): its warnings only with -v
        logging.getLogger("DeepSpeed").addFilter(_ErrorsOnly())
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' "Writing model shards" bars
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    return _level


def level() -> int:
    return _level


class _ErrorsOnly(logging.Filter):
    """Keeps a library logger's errors, drops its info and warnings (they are not ours to show without -v)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR


class _HarmlessFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not any(h in msg for h in HARMLESS)


def quiet_ray() -> None:
    """After ``import ray``: hide Ray's INFO console logs and :data:`HARMLESS` warnings (no-op with -v).

    Log files under the Ray session directory are left as they are.
    """
    if _level == VERBOSE:
        return
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    for name in ("ray", "ray.data", "ray.train", "ray.tune", "ray.serve"):
        lg = logging.getLogger(name)
        for h in lg.handlers:
            if isinstance(h, logging.FileHandler) or type(h).__name__ == "SessionFileHandler":
                continue
            h.setLevel(max(h.level, logging.WARNING))
            h.addFilter(_HarmlessFilter())


def ray_init_kwargs() -> dict:
    """Extra ``ray.init`` arguments for the level: workers' output streamed to the driver only with -v."""
    return {"log_to_driver": _level == VERBOSE}


_stderr_filtered = False


#: ANSI escape sequences (CSI and OSC): Ray colours its worker prefixes even when stderr is a pipe
_ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")
#: library chatter that is no warning of ours (shown with -v): lines a Ray actor or task printed, prefixed
#: ``(Name pid=N)``, e.g. Serve's controller at shutdown; DeepSpeed's logger (``[date] [WARNING] [file.py:N:fn]``)
#: and its op-builder notes (`` [WARNING]  async_io requires ...``)
LIBRARY_LINES = (
    re.compile(rb"^\((?:raylet|gcs_server|\S[^\n]*? pid=\d+(?:, ip=[\d.]+)?)\)"),
    re.compile(rb"^\[\d{4}-\d\d-\d\d [\d:,.]+\] \[(?:WARNING|INFO)\] \[[\w.]+\.py:\d+:\w+\]"),
    re.compile(rb"^ ?\[WARNING\] {1,2}\S"),
)


def _line_filter(patterns: tuple[str, ...], tty: bool) -> Callable[[bytes], bytes | None]:
    """``keep(line)``: None for a line to drop (one of ``patterns``, or :data:`LIBRARY_LINES` once ANSI is
    stripped), else the line, without escape codes unless ``tty``."""
    pats = [p.encode() for p in patterns]

    def keep(line: bytes) -> bytes | None:
        plain = _ANSI.sub(b"", line)
        if any(p in plain for p in pats) or any(rx.match(plain) for rx in LIBRARY_LINES):
            return None
        return line if tty else plain

    return keep


def filter_stderr(patterns: tuple[str, ...] = HARMLESS) -> None:
    """Drop lines holding any of ``patterns`` from everything written to file descriptor 2 by this process.

    fd 2 becomes a pipe read by a daemon thread that copies the other lines to the original stderr;
    at exit fd 2 is restored and the thread drains what is left (1 s at most). Idempotent.
    """
    global _stderr_filtered
    if _stderr_filtered:
        return
    _stderr_filtered = True
    import atexit

    sys.stderr.flush()
    orig = os.dup(2)
    r, w = os.pipe()
    os.dup2(w, 2)
    os.close(w)
    keep = _line_filter(patterns, tty=os.isatty(orig))

    def pump() -> None:
        with os.fdopen(r, "rb", buffering=0) as f:
            buf = b""
            while chunk := f.read(65536):
                buf += chunk
                *lines, buf = buf.split(b"\n")
                out = b"".join(kept + b"\n" for kept in map(keep, lines) if kept is not None)
                if out:
                    os.write(orig, out)
            if buf and (kept := keep(buf)) is not None:
                os.write(orig, kept)

    t = threading.Thread(target=pump, daemon=True, name="mella-stderr-filter")
    t.start()

    def restore() -> None:
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        os.dup2(orig, 2)  # closes our write end of the pipe: the pump sees EOF unless a child holds it
        t.join(timeout=1.0)

    atexit.register(restore)


def say(msg: str, stream: TextIO | None = None) -> None:
    """Print a line unless -q (results that -q keeps are printed with ``print``)."""
    if _level > QUIET:
        print(msg, file=stream or sys.stdout, flush=True)


def duration(seconds: float) -> str:
    """``"45 s"``, ``"12 min"``, ``"3.5 h"``: an ETA for a progress line."""
    return (
        f"{seconds:.0f} s"
        if seconds < 90
        else f"{seconds / 60:.0f} min"
        if seconds < 5400
        else f"{seconds / 3600:.1f} h"
    )


def warn(msg: str) -> None:
    """One ``warning: ...`` line on stderr (shown with -q too)."""
    print(f"warning: {msg}", file=sys.stderr, flush=True)


class Progress:
    """One status line per phase: ``PHASE  text  elapsed``.

    On a terminal the line is redrawn in place (``\\r``, at most every 0.5 s, and once a second while
    nothing changes so the clock moves); when piped a line is printed every 10 s and once when the
    phase ends. Silent with -q. Thread-safe; a daemon thread keeps the clock moving.
    """

    def __init__(self, stream: TextIO | None = None, interval_s: float | None = None) -> None:
        self.stream = stream or sys.stdout
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = interval_s if interval_s is not None else (TTY_INTERVAL_S if self.tty else PIPE_INTERVAL_S)
        self.enabled = _level > QUIET
        self.phase: str | None = None
        self.text = ""
        self.t0 = self.last = 0.0
        self._printed: str | None = None
        self._first: tuple[float, int] | None = None  # (time, done) of the phase's first progress figure
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- public
    def start(self, phase: str, text: str = "") -> None:
        """End the current phase (if any) and start ``phase``."""
        with self._lock:
            self._end_locked()
            self.phase, self.text, self.t0, self.last, self._first = phase, text, time.monotonic(), 0.0, None
            self._emit_locked(force=self.tty)
        if self.enabled and self._thread is None:
            self._thread = threading.Thread(target=self._tick, daemon=True, name="mella-progress")
            self._thread.start()

    def update(self, text: str) -> None:
        with self._lock:
            self.text = text
            self._emit_locked(force=False)

    def end(self, text: str | None = None) -> None:
        """Print the phase's final line (always, on its own line)."""
        with self._lock:
            if text is not None:
                self.text = text
            self._end_locked()

    def close(self) -> None:
        self.end()
        self._stop.set()

    def callback(self) -> Callable[[str, str], None]:
        """``fn(phase, text)`` for pipeline hooks: a new phase name starts a phase, the same one updates it."""

        def fn(phase: str, text: str) -> None:
            if phase != self.phase:
                self.start(phase, text)
            else:
                self.update(text)

        return fn

    # -- internals
    def _line(self) -> str:
        eta = self._eta()
        return f"{self.phase:<10} {self.text}  [{time.monotonic() - self.t0:.0f} s{eta}]"

    def _eta(self) -> str:
        """An ETA from the text's progress figures, at the rate measured since the phase's start: inside a
        unit (``N candidate rows done, K still in``) ``", unit ETA 40 s"``; else from ``N/M`` (crawl shards)
        ``", ETA 3 min"`` unless the text carries its own ETA. "" until two figures have been seen."""
        m = _ROWS.search(self.text)
        label = "unit ETA"
        if m:
            done, left = int(m[1]), int(m[2])
        else:
            m = None if "ETA" in self.text else _OF.search(self.text)
            if not m:
                return ""
            done, left, label = int(m[1]), int(m[2]) - int(m[1]), "ETA"
        now = time.monotonic()
        if self._first is None or done < self._first[1]:  # the phase started at 0 done unless a figure says more
            self._first = (self.t0, 0) if done == 0 or self._first is None and now - self.t0 > 1 else (now, done)
            if self._first[1] == done:
                return ""
        t_first, d_first = self._first
        if done <= d_first or left <= 0:
            return ""
        secs = (now - t_first) / (done - d_first) * left
        return f", {label} {duration(secs)}"

    def _emit_locked(self, force: bool) -> None:
        if not self.enabled or self.phase is None:
            return
        now = time.monotonic()
        if not force and now - self.last < self.interval:
            return
        self.last, self._printed = now, self.text
        if self.tty:
            self.stream.write("\r\x1b[2K" + self._line())
        else:
            self.stream.write(self._line() + "\n")
        self.stream.flush()

    def _end_locked(self) -> None:
        repeat = not self.tty and self._printed == self.text and time.monotonic() - self.last < 1.0
        if self.enabled and self.phase is not None and not repeat:
            self.stream.write(("\r\x1b[2K" if self.tty else "") + self._line() + "\n")
            self.stream.flush()
        self.phase = None

    def _tick(self) -> None:
        while not self._stop.wait(1.0 if self.tty else self.interval / 4):
            with self._lock:
                self._emit_locked(force=self.tty)


def run_job(
    main: Callable[[list[str] | None], int | None], argv: list[str] | None = None, prog: str | None = None
) -> int:
    """Run a job's ``main`` with the job error rules; returns the exit code (for ``sys.exit``).

    :class:`UsageError` and pydantic ``ValidationError`` (a bad setting) → one line on stderr, exit 2;
    any other exception → one line ``error: Type: message (rerun with --debug for the traceback)``,
    exit 1; with ``--debug`` in ``argv`` the traceback is printed too. Unless ``-v``, the known harmless
    lines are filtered out of this process's stderr (:func:`filter_stderr`).
    """
    from pydantic import ValidationError

    args = sys.argv[1:] if argv is None else argv
    prog = prog or os.path.basename(sys.argv[0])
    debug = "--debug" in args
    if not {"-v", "--verbose"} & set(args):
        filter_stderr()  # a job run as a script owns its fd 2; in-process callers (tests) keep theirs
    try:
        rc = main(argv)
        return rc if isinstance(rc, int) else 0
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{prog}: interrupted (committed work is kept; rerun the same command to resume)", file=sys.stderr)
        return 130
    except (UsageError, ValidationError) as e:
        if debug:  # a UsageError is a SystemExit: Python would exit without printing it
            import traceback

            traceback.print_exc()
        msg = format_validation_error(e) if isinstance(e, ValidationError) else str(e)
        print(f"{prog}: error: {msg}", file=sys.stderr)
        return 2
    except Exception as e:
        if debug:
            raise
        first = (str(e).strip().splitlines() or [""])[0][:300]
        print(f"{prog}: error: {type(e).__name__}: {first} (rerun with --debug for the traceback)", file=sys.stderr)
        return 1


def format_validation_error(e) -> str:
    """pydantic ``ValidationError`` → ``field.path: message; ...`` on one line."""
    parts = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err.get("loc", ()))
        msg = str(err.get("msg", "")).removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts).replace("\n", " ")
