"""Named crash windows, where a test process can make itself die as ``kill -9`` would kill it.

The registry writes of a gate and the end of a training run each leave a state that the next run
must repair (see :mod:`opsfabric.ml.promotion`). To prove it, a test starts a child process with
``OPSFABRIC_TEST_KILL_AT=<point>``; at that point the child sends itself SIGKILL: no ``finally``,
no roll back, no atexit, exactly like the OOM killer or a lost machine. Unset (production), a
point is one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

ENV = "OPSFABRIC_TEST_KILL_AT"

# Every point, in the order a gate reaches them; tests iterate over these.
CANDIDATE_RUN_OPEN = "candidate-run-open"  # the candidate's run has params, metrics and data, no model; still RUNNING
VERSION_CREATED = "version-created"  # the version exists (tagged promoting or rejected); alias not moved
ALIAS_MOVED = "alias-moved"  # the alias points at the new version, still tagged promoting
VERSION_CONFIRMED = "version-confirmed"  # version tagged promoted; its run not told yet
POINTS = (CANDIDATE_RUN_OPEN, VERSION_CREATED, ALIAS_MOVED, VERSION_CONFIRMED)


def kill_point(name: str) -> None:
    """SIGKILL this process if ``OPSFABRIC_TEST_KILL_AT`` names this point."""
    if os.environ.get(ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
