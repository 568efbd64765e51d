"""`kill_when`: run a command and SIGKILL it the moment a condition holds (a run killed while it
writes a checkpoint). Imported by the resume tests; not a test module."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable


def kill_when(cmd: list[str], ready: Callable[[], bool], what: str, **popen) -> None:
    """Start `cmd` and SIGKILL it as soon as `ready()` (polled every millisecond) is true;
    fails if it exits first or `what` does not happen within 300 s."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **popen)
    deadline = time.monotonic() + 300
    try:
        while not ready():
            if proc.poll() is not None:
                raise AssertionError(f"exited before {what}: {proc.stderr.read()[-3000:]}")
            assert time.monotonic() < deadline, f"no {what} within 300 s"
            time.sleep(0.001)
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
