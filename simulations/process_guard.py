"""Run one command and end everything it starts, when asked or when the caller dies.

`python -m simulations.process_guard COMMAND...` is how `hxr simulate` starts its SuperLink.
Flower's SuperLink starts its executor in a session of its own, the executor starts the
simulation process, and that starts Ray's daemons and workers; killed from outside, parts of
that tree keep running (the simulation goes on training, Ray's agents stay). On Linux the guard
is a child subreaper, so every process of the tree that loses its parent becomes the guard's,
and it gets SIGTERM from the kernel when its caller dies. On SIGTERM, or once the command
exits, it sends SIGTERM to every process still below it, SIGKILL to those left after
`GRACE_S`, and waits for them all.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

# linux/prctl.h
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
GRACE_S = 10.0
LINUX = sys.platform.startswith("linux")


def _parents() -> dict[int, int]:
    """pid -> parent pid of every process (Linux: read from /proc)."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int(
                    (entry / "stat").read_text().rsplit(")", 1)[1].split()[1]
                )
            except (OSError, IndexError, ValueError):
                continue  # it ended while we looked
    return parents


def descendants(root: int) -> set[int]:
    parents = _parents()
    found: set[int] = set()
    frontier = {root}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _reap() -> None:
    """Collect every child that has ended (orphans of the tree become ours to wait for)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _signal_all(pids: set[int], signum: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


def end_tree(command: subprocess.Popen) -> None:
    """SIGTERM to every process below the guard, SIGKILL after GRACE_S to what is left."""
    below = (lambda: descendants(os.getpid())) if LINUX else (lambda: {command.pid})
    _signal_all(below(), signal.SIGTERM)
    deadline = time.monotonic() + GRACE_S
    while below() and time.monotonic() < deadline:
        _reap()
        time.sleep(0.1)
    _signal_all(below(), signal.SIGKILL)
    while below():
        _reap()
        time.sleep(0.05)


def main(argv: list[str]) -> int:
    caller = os.getppid()
    if LINUX:
        libc = ctypes.CDLL(None)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the caller decides when this tree ends
    command = subprocess.Popen(argv)
    if os.getppid() != caller:  # the caller died before the parent-death signal was armed
        stop.set()
    while not stop.is_set() and command.poll() is None:
        stop.wait(0.2)
    end_tree(command)
    return 0 if command.returncode is None else abs(command.returncode)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
