"""configurable-http-proxy as JupyterHub runs it, with a pid file that cannot misdirect a kill."""

from __future__ import annotations

import os
from pathlib import Path

from jupyterhub.proxy import ConfigurableHTTPProxy

from hubstack.hub import metrics


class HubstackProxy(ConfigurableHTTPProxy):
    """JupyterHub's proxy, ending a proxy left by a killed hub only if it is one.

    At start JupyterHub ends the proxy a previous hub left running, found through its pid
    file. On Linux it only checks that some process has that pid; after a crash, a reboot
    or a pid wrap-around that can be anyone's process, which the hub (root) would kill.
    This override of JupyterHub's check also asks that the process be the hub's own and run
    the proxy command, as JupyterHub's own check does on Windows.
    """

    def _check_pid(self, pid: int) -> None:
        process = Path(f"/proc/{pid}")
        try:
            owner = process.stat().st_uid
            argv = (process / "cmdline").read_bytes().split(b"\0")
        except OSError:
            raise ProcessLookupError(pid) from None
        if owner != os.geteuid() or os.fsencode(self.command[0]) not in argv:
            raise ProcessLookupError(pid)

    async def check_running(self) -> None:
        """JupyterHub's check, which starts a stopped proxy again; counted for the metrics
        and the proxy-restarted alert."""
        stopped = self.proxy_process is not None and self.proxy_process.poll() is not None
        await super().check_running()
        if stopped:
            metrics.proxy_restarted()
