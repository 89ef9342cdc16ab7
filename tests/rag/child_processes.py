"""Start and watch ``tests.rag.rag_child`` processes (race and crash tests)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from opsfabric.settings import PROJECT_ROOT

CHILD_TIMEOUT = 600  # seconds; a loaded 2-core machine evaluates slowly


@dataclass
class Child:
    process: subprocess.Popen
    out: IO[str]  # files, not pipes: a chatty child never blocks on a full pipe while the test waits
    err: IO[str]
    stdout: str = ""
    stderr: str = ""

    def wait(self) -> "Child":
        self.process.wait(timeout=CHILD_TIMEOUT)
        for stream in (self.out, self.err):
            stream.seek(0)
        self.stdout, self.stderr = self.out.read(), self.err.read()
        return self

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    @property
    def killed(self) -> bool:
        return self.process.returncode == -signal.SIGKILL

    def result(self) -> dict:
        """The JSON line the child printed last (fails with its stderr if it did not finish)."""
        assert self.process.returncode == 0, f"child exited {self.process.returncode}:\n{self.stderr[-3000:]}"
        return json.loads(self.stdout.strip().splitlines()[-1])


def spawn(operation: str, overlay: str, *args: str) -> Child:
    command = [sys.executable, "-m", "tests.rag.rag_child", operation, overlay, *args]
    out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
    return Child(subprocess.Popen(command, cwd=PROJECT_ROOT, stdout=out, stderr=err, text=True), out, err)


def run(operation: str, overlay: str, *args: str) -> Child:
    return spawn(operation, overlay, *args).wait()


def wait_for(path: Path, child: Child, timeout: float = CHILD_TIMEOUT) -> None:
    """Wait until ``path`` exists; fail early with the child's stderr if it exits first."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if child.process.poll() is not None:
            child.wait()
            raise AssertionError(f"child exited {child.returncode} before {path.name}:\n{child.stderr[-3000:]}")
        assert time.monotonic() < deadline, f"{path} did not appear within {timeout} s"
        time.sleep(0.05)
