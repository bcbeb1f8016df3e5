"""Mount points whose mounts and unmounts reach the servers' own mount namespaces.

Each local server runs in a mount namespace of its own, a slave copy of the hub's taken when
it starts (backends/local.py). The kernel passes a mount or an unmount on to such copies
only when the mount's *parent* is shared. systemd makes every mount shared at boot; without
systemd as PID 1 (containers, small VMs) the root is often private, and then a home the hub
unmounts lives on in the namespace of every server started while it was mounted, whoever's:
its loop device stays busy and its account's next start has to wait for those servers to end.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from hubstack.system import run


def share(directory: Path) -> bool:
    """Make the mounts below ``directory`` (root's, trusted) reach the servers' namespaces.

    Nothing to do when the mount holding ``directory`` is shared already; a mount point of
    its own is made shared; otherwise it becomes one, a bind of itself, made shared. That
    bind would hide what is mounted below it, so with mounts there (servers that outlived an
    older hub) it is left as it is and False returned.
    """
    target = os.path.realpath(directory)  # as findmnt names mount points
    holder = _mounts("--target", target)[0]
    if "shared" in holder["propagation"].split(","):
        return True
    if holder["target"] != target:
        below = f"{target.rstrip('/')}/"
        if any(m["target"].startswith(below) for m in _mounts("--list")):
            return False
        run(["mount", "--no-canonicalize", "--bind", target, target])
    run(["mount", "--no-canonicalize", "--make-shared", target])
    return True


def _mounts(*options: str) -> list[dict[str, str]]:
    """findmnt's mounts (target and propagation) for ``options``: its JSON has no escapes
    to undo, unlike /proc/self/mountinfo."""
    argv = ["findmnt", "--json", "--output", "TARGET,PROPAGATION", *options]
    found: list[dict[str, str]] = json.loads(run(argv).stdout)["filesystems"]
    return found
