"""A cloud machine's boot script: cloud-init user data that gives it the cluster's munge
key and Slurm config and starts its slurmd under its Slurm node name.

Pure: values in, text out. cloud-init (on every major cloud's images) does the work, so
the script is data (files and an argv list), never shell text built from values. The image
must have munge and slurmd installed, as every elastic Slurm's images have.
"""

from __future__ import annotations

import base64
from pathlib import Path

import yaml


def boot_script(node: str, munge_key: bytes, slurm_files: dict[Path, str], slurm_conf: Path) -> str:
    """The user data for ``node``: ``slurm_files`` are written where slurmctld has them
    (slurm.conf includes others by absolute path), then munge and slurmd start."""
    files = [
        {
            "path": "/etc/munge/munge.key",
            "encoding": "b64",
            "content": base64.b64encode(munge_key).decode(),
            "owner": "munge:munge",
            "permissions": "0400",
        },
        *(
            {"path": str(path), "content": text, "permissions": "0644"}
            for path, text in slurm_files.items()
        ),
    ]
    commands = [
        ["systemctl", "restart", "munge"],
        ["/usr/sbin/slurmd", "-N", node, "-f", str(slurm_conf)],
    ]
    data = {"write_files": files, "runcmd": commands}
    return "#cloud-config\n" + yaml.safe_dump(data, sort_keys=False)
