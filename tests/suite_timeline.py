"""When the suite's background work happens, against the unit tests (tests/conftest.py, test_dvc_pipeline.py).

With FASTFLUX_SUITE_TIMELINE naming a file, each event appends one line ``<epoch seconds> <event>`` to
it: which of the pipelines the suite waits for at its end, and which core idles meanwhile, is read off
the file, not guessed. Off by default; then an event costs one comparison. The variable is read once,
at import (collection): the pipelines' threads never read this process's environment, which the unit
tests change (monkeypatch.setenv); a relative path is made absolute then, as unit tests change the
working directory (monkeypatch.chdir) while B's thread marks its events.
"""

import os
import threading
import time

FILE = os.path.abspath(v) if (v := os.environ.get("FASTFLUX_SUITE_TIMELINE")) else None


def mark(event: str) -> None:
    """Append ``event`` with the time now (one write of one line: the threads' lines do not interleave)."""
    if FILE:
        with open(FILE, "a") as f:
            f.write(f"{time.time():.3f} {event}\n")


def watch(name: str, proc) -> None:
    """Mark ``<name> done`` when process ``proc`` exits (its exit status too, unless 0): a thread of its
    own, started only when the timeline is on — nobody else waits for C before its tests."""
    if FILE:
        threading.Thread(target=_mark_exit, args=(name, proc), name=f"timeline-{name}", daemon=True).start()


def _mark_exit(name: str, proc) -> None:
    code = proc.wait()
    mark(f"{name} done" + (f" (exit {code})" if code else ""))
