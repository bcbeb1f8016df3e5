"""A kernel provisioner that forks Python kernels from the server's kernel parent.

A kernel started afresh (``python -m ipykernel_launcher``) imports ipykernel, IPython,
debugpy and jupyter_client at each start: most of the CPU a kernel costs. A server forked
by hubstack's fork server has a *kernel parent* beside it: a fork of the server's own
process, made before the server ran, in the server's account, cgroup and mount namespace,
with ipykernel imported and no event loop, thread or ZMQ context (see hubstack's
``backends/fork_server.py``). The fork server hands the server its end of an anonymous
socket pair with the parent through :func:`adopt`; no other process has it.

For a launch of this Python's own ipykernel, :class:`ForkedKernelProvisioner` sends the
parent one byte with a new socket of that launch alone; the parent forks, and the child
reads the launch (command, environment, directory) from that socket, takes them and runs
ipykernel as ``python -m ipykernel_launcher`` would. It answers with its pid and a pidfd
of itself, through which the server signals it (no pid reuse); the parent reports each
kernel's exit status on its own socket. Everything else (connection file, restarts,
interrupts, shutdown) is jupyter_client's ``LocalProvisioner``. Any other launch, a launch
whose variables Python or ipykernel read when they start, a server without a parent (one
started afresh, or a parent that has ended), or any error on the way, starts the kernel
afresh as ``LocalProvisioner`` does.
"""

from __future__ import annotations

import array
import asyncio
import json
import os
import select
import signal
import socket
import sys
import threading
from typing import Any

from jupyter_client.connect import KernelConnectionInfo
from jupyter_client.provisioning import LocalProvisioner

_LAUNCH_TIMEOUT_S = 30.0
_REPLY_LIMIT = 64 * 1024
# Read when Python, ipykernel, IPython or debugpy start or are imported: a fork, whose
# interpreter and modules are already set up, would not honour them.
START_TIME_PREFIXES = ("PYTHON", "LD_", "PYDEVD_", "DEBUGPY_", "IPYTHON_")
# A kernel whose exit the parent could not report (it ended first).
_UNKNOWN_STATUS = 1


class KernelParent:
    """The server's end of its kernel parent: launches, and the exits it reports."""

    def __init__(self, control: socket.socket) -> None:
        self.control = control
        self.gone = False
        self._exits: dict[int, int] = {}
        self._lock = threading.Lock()
        self._watching = False

    def exit_status(self, pid: int) -> int | None:
        self._read_reports()
        with self._lock:
            return self._exits.pop(pid, None)

    def _read_reports(self) -> None:
        """Take the parent's ``<pid> <status>`` reports waiting on the socket; its end
        (the parent gone) marks it gone."""
        while not self.gone:
            try:
                message = self.control.recv(64, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            except OSError:
                message = b""
            if not message:
                self.gone = True
                return
            pid, status = (int(part) for part in message.split())
            with self._lock:
                self._exits[pid] = status

    def launch(self, argv: list[str], env: dict[str, str], cwd: str) -> ForkedKernel:
        """Fork a kernel running ``argv`` in ``env`` and ``cwd``. Blocking (a thread)."""
        if self.gone:
            raise OSError("the kernel parent has ended")
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with ours:
            try:
                self.control.sendmsg([b"k"], [_rights(theirs.fileno())])
            finally:
                theirs.close()
            ours.settimeout(_LAUNCH_TIMEOUT_S)
            ours.sendall(json.dumps({"argv": argv, "env": env, "cwd": cwd}).encode())
            fds = array.array("i")
            data, ancillary, _flags, _addr = ours.recvmsg(
                _REPLY_LIMIT, socket.CMSG_SPACE(fds.itemsize)
            )
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
        reply = json.loads(data or b"{}")
        if "pid" not in reply or len(fds) != 1:
            for fd in fds:
                os.close(fd)
            raise OSError(reply.get("error", "the kernel parent closed the launch"))
        return ForkedKernel(int(reply["pid"]), fds[0], self)


def _rights(*fds: int) -> tuple[int, int, bytes]:
    return (socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())


class ForkedKernel:
    """What ``LocalProvisioner`` uses of a ``Popen``, for a kernel the parent forked."""

    stdin = stdout = stderr = None

    def __init__(self, pid: int, pidfd: int, parent: KernelParent) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._pidfd: int | None = pidfd
        self._parent = parent

    def running(self) -> bool:
        """Whether the kernel process has not ended: while it runs, its pid and process
        group cannot name another process."""
        if self._pidfd is None:
            return False
        readable, _, _ = select.select([self._pidfd], [], [], 0)
        return not readable

    def poll(self) -> int | None:
        if self.returncode is None:
            status = self._parent.exit_status(self.pid)
            if status is None and self._parent.gone and not self.running():
                status = _UNKNOWN_STATUS
            if status is not None:
                self.returncode = status
                self._close()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int | None:
        """``LocalProvisioner`` waits by polling first; this only returns the status."""
        return self.poll()

    def send_signal(self, signum: int) -> None:
        if self._pidfd is not None and self.running():
            signal.pidfd_send_signal(self._pidfd, signum)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def _close(self) -> None:
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None


_parent: KernelParent | None = None


def adopt(control: socket.socket) -> None:
    """Called by the fork server in the server's process, before the server runs."""
    global _parent
    _parent = KernelParent(control)


def forkable(cmd: list[str], kwargs: dict[str, Any]) -> bool:
    """Whether a launch is this Python's ipykernel, as the parent runs it, and nothing else."""
    if cmd[:3] != [sys.executable, "-m", "ipykernel_launcher"]:
        return False
    if kwargs.get("independent") or any(
        kwargs.get(name) is not None for name in ("stdin", "stdout", "stderr")
    ):
        return False
    env = os.environ if kwargs.get("env") is None else kwargs["env"]
    return not any(name.startswith(START_TIME_PREFIXES) for name in env)


class ForkedKernelProvisioner(LocalProvisioner):  # type: ignore[misc]
    """``LocalProvisioner`` whose kernels are forks of the kernel parent where they can be."""

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> KernelConnectionInfo:
        parent = _parent
        if parent is None or parent.gone:
            self.log.debug("No kernel parent: starting the kernel afresh")
            return await super().launch_kernel(cmd, **kwargs)
        if not forkable(cmd, kwargs):
            self.log.info("Not this Python's ipykernel, or start-time variables: started afresh")
            return await super().launch_kernel(cmd, **kwargs)
        cwd = str(kwargs.get("cwd") or os.getcwd())
        env = dict(os.environ if kwargs.get("env") is None else kwargs["env"])
        try:
            kernel = await asyncio.to_thread(parent.launch, cmd, env, cwd)
        except (OSError, ValueError) as exc:
            self.log.warning("Kernel parent failed (%s); starting the kernel afresh", exc)
            return await super().launch_kernel(cmd, **kwargs)
        self.process = kernel
        # The kernel leads its own session, as one started afresh does.
        self.pid = self.pgid = kernel.pid
        self.cwd = cwd
        return self.connection_info

    async def send_signal(self, signum: int) -> None:
        """The process group is signalled only while its leader, the kernel, runs."""
        process = self.process
        if isinstance(process, ForkedKernel) and not process.running():
            return
        await super().send_signal(signum)
