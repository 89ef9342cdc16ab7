"""Where workers fetch the deployments' code: a git repository and branch (``orchestration.source``).

A deployment registered from a git source runs on any machine whose worker can clone the URL: the
worker clones it for every flow run (``git_clone`` pull step). The defaults follow this checkout:
its ``origin`` remote, or, without one, a ``file://`` URL of the checkout itself (this machine
only); the branch is the checkout's current one. A worker runs *committed* code: changes not yet
committed in this checkout are not in the clone (the control room logs how many there are).
"""

from __future__ import annotations

import logging
import subprocess
from dataclasses import dataclass
from pathlib import Path

from opsfabric.errors import ConfigError
from opsfabric.settings import PROJECT_ROOT, Settings

log = logging.getLogger("opsfabric.deployments")


@dataclass(frozen=True)
class GitSource:
    """A repository URL, a branch, and why this URL was chosen (for the log)."""

    url: str
    ref: str
    chosen_because: str

    def storage(self):
        """The Prefect storage object for ``flow.from_source``."""
        from prefect.runner.storage import GitRepository

        return GitRepository(url=self.url, branch=self.ref, pull_interval=None)


def _git(args: list[str], checkout: Path) -> str | None:
    """Output of a read-only git command in ``checkout``; None if git fails (no repo, no remote)."""
    try:
        done = subprocess.run(["git", "--no-optional-locks", "-C", str(checkout), *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def resolve_git_source(settings: Settings, checkout: Path = PROJECT_ROOT) -> GitSource:
    """The configured source, with the checkout's origin (or file:// URL) and current branch as defaults.

    Raises:
        ConfigError: no URL is configured and ``checkout`` is not a git repository, or no branch is
            configured and the checkout's HEAD is detached.
    """
    configured = settings.orchestration.source
    if configured.url:
        url, because = configured.url, "orchestration.source.url"
    elif origin := _git(["remote", "get-url", "origin"], checkout):
        url, because = origin, f"the origin remote of {checkout}"
    elif _git(["rev-parse", "--git-dir"], checkout) is not None:
        url, because = checkout.resolve().as_uri(), f"{checkout} has no origin remote: its own file:// URL (this machine only)"
    else:
        raise ConfigError(
            f"{checkout} is not a git checkout and orchestration.source.url is not set: workers have nowhere to clone the flows from",
            hint="set OPSFABRIC_ORCHESTRATION__SOURCE__URL (and __REF) to the repository workers should clone",
        )
    ref = configured.ref or _git(["rev-parse", "--abbrev-ref", "HEAD"], checkout)
    if not ref or ref == "HEAD":
        raise ConfigError(
            f"cannot tell which branch of {url} workers should clone: {checkout} has a detached HEAD",
            hint="set OPSFABRIC_ORCHESTRATION__SOURCE__REF=<branch>",
        )
    return GitSource(url=url, ref=ref, chosen_because=because)


def uncommitted_changes(checkout: Path = PROJECT_ROOT) -> int | None:
    """How many paths differ from the last commit (modified or untracked); None if git cannot tell."""
    status = _git(["status", "--porcelain"], checkout)
    return None if status is None else len([line for line in status.splitlines() if line.strip()])
