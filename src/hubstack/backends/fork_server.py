"""Run by an environment's Python as root: fork servers that have Jupyter imported already.

Only the standard library: the local backend starts ``python3 -I -c <this file's text>
<listen_fd.py's text> <descriptor>`` from a root-owned environment once, and keeps the
other end of the control socket (a SOCK_SEQPACKET pair, so each message arrives whole).
Importing Jupyter Server, JupyterLab and the JupyterHub extension costs about a CPU-second
per server start; here it is paid once, and every server is a fork.

The parent never reads anything of a user: for each start the hub sends one byte with a
new socket of that start alone (SCM_RIGHTS), and the parent only forks. The child reads
the start from that socket and becomes the server exactly where the local backend's usual
command chain has put a stand-in process (``unshare``, the private /tmp binds, ``setpriv``,
``env --chdir``): it joins the server's cgroups, enters the stand-in's mount namespace,
takes its user, group and supplementary groups and its directory, then closes every other
descriptor, replaces the environment and runs ``jupyterhub-singleuser`` on the handed
socket. What a fork carries over is therefore imported code only: ``random`` reseeds
itself after fork, Jupyter makes its secrets after this point from ``os.urandom``. The
parent reports each child's exit status on the control socket (``<pid> <status>``).

Where the environment has ``hubstack_kernels`` (default-environment/kernels), the parent
also imports ipykernel, and each server, once it has become the user and before it runs,
forks a *kernel parent* of itself: the same account, cgroup, mount namespace and
directory, no descriptor but its own end of an anonymous socket pair with the server
(which hands the other to ``hubstack_kernels.provisioner``). It serves kernels as this
parent serves servers: each launch comes on a socket of its own, read only by the forked
child, which takes the launch's environment and directory and runs ipykernel.
"""

import array
import atexit
import contextlib
import ctypes
import gc
import importlib.machinery
import importlib.metadata
import json
import os
import re
import runpy
import select
import signal
import site
import socket
import sys
import threading
from collections.abc import Callable
from typing import NoReturn

CLONE_NEWNS = 0x00020000
LISTEN_FD = "HUBSTACK_LISTEN_FD"  # listen_fd.VARIABLE
PRELOAD = (
    "jupyterhub.singleuser",
    "jupyterhub.singleuser.extension",
    "jupyter_server.serverapp",
    "jupyterlab.labapp",
)
# Imported by every server after the fork, at its start or its first requests (measured:
# benchmarks/start_cpu.py and the modules a server has that its fork server had not):
# httpx's transport (JupyterLab's extension manager makes a client at start), the asyncio
# backend of anyio, what the enabled extensions import when they load or first answer, and
# IPython (notebook_shim's link reads every property of its traits, one of which imports
# IPython.paths: with IPython 8 all of IPython, prompt_toolkit and jedi, 0.3 s).
LAZY = (
    "httpcore",
    "IPython.paths",
    "anyio._backends._asyncio",
    "tornado.platform.asyncio",
    "jinja2.ext",
    "jupyter_core.migrate",
    "ipykernel.kernelspec",
    "notebook_shim.nbserver",
    "jupyter_lsp.virtual_documents_shadow",
)
# What a kernel imports until it runs a cell (the modules a kernel has that a server has
# not), for environments whose servers fork their kernels (``hubstack_kernels``). None
# starts a thread, an event loop or a ZMQ context on import (checked in main()).
KERNEL = (
    "ipykernel.kernelapp",
    "ipykernel.ipkernel",
    "ipykernel.zmqshell",
    "ipykernel.debugger",
    "ipykernel.comm",
    "IPython.core.debugger",
    "IPython.core.oinspect",
    "IPython.core.completerlib",
    "IPython.extensions.storemagic",
    "IPython.utils.wildcard",
    "faulthandler",
)
KERNEL_PROVISIONER = "hubstack_kernels.provisioner"
# Variables the preloaded modules set on import (debugpy sets PYDEVD_USE_FRAME_EVAL): a kernel
# started afresh has them, as it imports those modules itself.
IMPORT_ENV: dict[str, str] = {}
# Top-level module: the distributions that provide it, of what the parent imported.
DISTRIBUTIONS: dict[str, set[tuple[str, str]]] = {}


def preload() -> None:
    """Import what every server imports, and the server extensions the environment enables
    (names from its ``jupyter_server_config.d``), and what those import later; one that
    fails (an environment without it) is left to the server."""
    names = list(PRELOAD)
    config_d = os.path.join(sys.prefix, "etc/jupyter/jupyter_server_config.d")
    for entry in sorted(os.listdir(config_d)) if os.path.isdir(config_d) else []:
        try:
            with open(os.path.join(config_d, entry)) as f:
                enabled = json.load(f)["ServerApp"]["jpserver_extensions"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        names += [name for name, on in enabled.items() if on is True]
    names += LAZY
    with contextlib.suppress(Exception):
        # The handler modules of Jupyter Server's own services, which it imports at start.
        from jupyter_server.serverapp import JUPYTER_SERVICE_HANDLERS

        names += [name for found in JUPYTER_SERVICE_HANDLERS.values() for name in found or ()]
    with contextlib.suppress(Exception):
        __import__(KERNEL_PROVISIONER)
        names += KERNEL
    for name in names:
        # One that fails is reported by the server when it imports it itself.
        with contextlib.suppress(Exception):
            __import__(name)


def _receive_fds(sock: socket.socket, size: int, count: int) -> tuple[bytes, list[int]]:
    fds = array.array("i")
    data, ancillary, _flags, _addr = sock.recvmsg(size, socket.CMSG_SPACE(count * fds.itemsize))
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
    return data, list(fds)


def _ids(status: str, key: str) -> list[int]:
    for line in status.splitlines():
        if line.startswith(key + ":"):
            return [int(value) for value in line.split()[1:]]
    raise ValueError(f"no {key} in the stand-in's status")


def show_as(argv: list) -> None:
    """Write the server's own command line over the fork server's in this process's memory,
    where ``/proc/<pid>/cmdline`` (what ps, pgrep and admins read) finds it: a server
    started afresh shows ``jupyterhub-singleuser`` there too. The parent's arguments (its
    code) are far longer than a server's; what would not fit is cut. (prctl's PR_SET_MM
    could point elsewhere, but needs CAP_SYS_RESOURCE, which a container may lack.)"""
    with open("/proc/self/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    # arg_start and arg_end, fields 48 and 49 of stat(5); this list starts at field 3.
    begin, end = int(fields[45]), int(fields[46])
    text = b"\0".join(os.fsencode(arg) for arg in argv)[: end - begin - 1]
    ctypes.memmove(begin, text.ljust(end - begin, b"\0"), end - begin)


def become(start: dict, listen_fd: int, log_fd: int, channel: socket.socket) -> None:
    """In the forked child (root, one thread): take the stand-in's place, then drop root."""
    standin = int(start["standin"])
    for path in start["cgroup_procs"]:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, b"%d" % os.getpid())
        finally:
            os.close(fd)
    os.setsid()
    # Opened from the hub's namespace, before entering the user's: the stand-in is the
    # hub's unreaped child, so its number cannot have passed to another process.
    with open(f"/proc/{standin}/status") as f:
        status = f.read()
    uid, gid, groups = _ids(status, "Uid")[0], _ids(status, "Gid")[0], _ids(status, "Groups")
    if uid != start["uid"] or gid != start["gid"]:
        raise PermissionError(f"the stand-in runs as {uid}:{gid}, not the server's account")
    mount_ns = os.open(f"/proc/{standin}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    workdir = os.open(f"/proc/{standin}/cwd", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(mount_ns, CLONE_NEWNS) != 0:
        raise OSError(ctypes.get_errno(), "setns into the server's mount namespace")
    os.close(mount_ns)
    show_as(start["argv"])
    # From here on, nothing is opened or resolved as root.
    os.setgroups(groups)
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    os.fchdir(workdir)
    os.close(workdir)
    null = os.open("/dev/null", os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    _close_all_but(listen_fd, channel.fileno())
    os.environ.clear()
    os.environ.update(start["env"])
    channel.sendall(json.dumps({"pid": os.getpid()}).encode())
    channel.close()
    os.environ[LISTEN_FD] = str(listen_fd)


def add_user_site() -> list[str]:
    """Put the user's own site-packages (~/.local) where Python would have, before the
    environment's: the parent runs isolated (-I), as root, without one. The folders placed."""
    site.ENABLE_USER_SITE = True
    site.USER_BASE = site.USER_SITE = None  # found again from this user's HOME
    user_site = site.getusersitepackages()
    if not os.path.isdir(user_site):
        return []
    before = next((i for i, p in enumerate(sys.path) if p.endswith("site-packages")), None)
    sys.path.insert(len(sys.path) if before is None else before, user_site)
    return [user_site]


def enter_environment(prefix: str, python: str, alone: bool = False) -> list[str]:
    """Become a server of the environment at ``prefix``, built on this parent's server layer
    (``envs/server_layer.py``), as its own ``python`` started afresh would be: its
    site-packages, and what its ``.pth`` files add, ahead of the layer's (in place of the
    layer's, ``alone``: a conda environment of this parent's Python, see
    ``envs/conda_layer.py``), and its prefix and interpreter for what asks (kernel specs,
    Jupyter's search paths). The folders placed."""
    layer_site = next(p for p in sys.path if p.endswith("site-packages"))
    version = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    known = list(sys.path)
    sys.prefix = sys.exec_prefix = prefix
    sys.executable = python
    site.addsitedir(os.path.join(prefix, "lib", version, "site-packages"))
    added = [p for p in sys.path if p not in known]
    at = known.index(layer_site)
    sys.path[:] = [*known[:at], *added, *known[at + 1 if alone else at :]]
    # Computed from sys.prefix when the parent imported them.
    paths = sys.modules.get("jupyter_core.paths")
    if paths is not None:
        paths.ENV_JUPYTER_PATH[:] = [os.path.join(prefix, "share", "jupyter")]
        paths.ENV_CONFIG_PATH[:] = [os.path.join(prefix, "etc", "jupyter")]
    spawn = sys.modules.get("multiprocessing.spawn")
    if spawn is not None:
        spawn.set_executable(python)
    return added


def add_python_path() -> list[str]:
    """``PYTHONPATH`` first on the path, where Python puts it at start (the parent ignored
    it under -I). The folders placed."""
    found = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    sys.path[:0] = found
    return found


def _module_name(entry: str) -> str | None:
    """The top-level module a folder's entry would be imported as, if any."""
    if entry.endswith(tuple(importlib.machinery.all_suffixes())):
        entry = entry.split(".", 1)[0]
    return entry if entry.isidentifier() else None


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def imported_distributions() -> dict[str, set[tuple[str, str]]]:
    """The distributions (name, version) that provide each top-level module imported here:
    what a folder placed ahead of them must hold at the same version to change nothing."""
    imported = {name.partition(".")[0] for name in sys.modules}
    found: dict[str, set[tuple[str, str]]] = {}
    for dist in importlib.metadata.distributions():
        declared = (dist.read_text("top_level.txt") or "").split()
        tops = declared or {str(f).split("/", 1)[0] for f in dist.files or ()}
        for top in filter(None, map(_module_name, tops)):
            if top in imported:
                found.setdefault(top, set()).add((_canonical(dist.metadata["Name"]), dist.version))
    return found


def imported_modules() -> dict[str, str | None]:
    """Each top-level module imported so far (not built in), with its file."""
    found = {}
    for name, module in list(sys.modules.items()):
        if "." not in name and name not in sys.builtin_module_names:
            found[name] = getattr(module, "__file__", None)
    return found


def _same_file(path: str, other: str | None) -> bool:
    if other is None or not os.path.isfile(path):
        return False
    try:
        with open(path, "rb") as mine, open(other, "rb") as theirs:
            return mine.read(1 << 20) == theirs.read(1 << 20) and not mine.read(1)
    except OSError:
        return False


def shadowed(folders: list[str], imported: dict[str, str | None]) -> str | None:
    """The first module in ``folders`` (placed ahead of this parent's) that a server started
    afresh would import instead of one of ``imported``, unless it is the same: from the same
    distribution at the same version, or the same single file; None if there is none."""
    for folder in folders:
        try:
            entries = os.listdir(folder)
        except OSError:
            continue
        installed = set()
        for entry in entries:
            if entry.endswith((".dist-info", ".egg-info")):
                name, _, version = entry.rsplit(".", 1)[0].partition("-")
                installed.add((_canonical(name), version.partition("-")[0]))
        for entry in entries:
            name = _module_name(entry)
            if name not in imported:
                continue
            path = os.path.join(folder, entry)
            if DISTRIBUTIONS.get(name, {("", "")}) <= installed:
                continue
            if not _same_file(path, imported[name]):
                return path
    return None


def start_afresh(start: dict, listen_fd: int, reason: str) -> NoReturn:
    """Run the server's usual command (never returns): what this process imported before the
    fork is not what the server would import."""
    print(f"hubstack: {reason}: starting the server afresh", file=sys.stderr, flush=True)
    os.set_inheritable(listen_fd, True)
    os.environ[LISTEN_FD] = str(listen_fd)
    argv = [str(arg) for arg in start["exec"]]
    os.execv(argv[0], argv)


def _default_signals() -> None:
    """A forked child's signals as a process started afresh has them."""
    for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    signal.set_wakeup_fd(-1)


def _close_all_but(*keep: int) -> None:
    low = 3
    for fd in sorted(set(keep)):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, os.sysconf("SC_OPEN_MAX"))


def _run(main: Callable[[], object]) -> int:
    """Run a program's main as the interpreter would; its exit status."""
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # printed as Python would, exit 1
        import traceback

        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    return code


def child(control: socket.socket, channel_fd: int, listen_code: str) -> None:
    """The forked child: set up, report, then run the server (never returns)."""
    _default_signals()
    control.close()
    channel = socket.socket(fileno=channel_fd)
    try:
        data, fds = _receive_fds(channel, 1 << 20, 2)
        listen_fd, log_fd = fds
        start = json.loads(data)
        become(start, listen_fd, log_fd, channel)
    except BaseException as exc:  # the hub gets the reason; the child ends
        try:
            channel.sendall(json.dumps({"error": f"{type(exc).__name__}: {exc}"}).encode())
        finally:
            os._exit(1)
    listen_fd = int(os.environ.pop(LISTEN_FD))
    imported = imported_modules()
    try:
        if "environment" in start:
            placed = enter_environment(**start["environment"])
        else:
            placed = add_user_site()
        found = shadowed(add_python_path() + placed, imported)
    except Exception as exc:  # any reason is one to start afresh
        start_afresh(start, listen_fd, f"{type(exc).__name__}: {exc}")
    if found is not None:
        start_afresh(start, listen_fd, f"{found} is not what the fork server imported")
    if start.get("kernel_parent"):
        start_kernel_parent()
    # As the user, as listen_fd.py does in a server started without this parent.
    namespace: dict = {"__name__": "hubstack_listen_fd"}
    exec(compile(listen_code, "listen_fd.py", "exec"), namespace)
    namespace["adopt"](listen_fd)
    sys.argv = list(start["argv"])
    os._exit(_run(lambda: runpy.run_path(sys.argv[0], run_name="__main__")))


def start_kernel_parent() -> None:
    """Fork the server's kernel parent (as the user, before the server runs: one thread, no
    event loop) and hand the server its end, unless the environment lacks
    ``hubstack_kernels``: then its kernels start afresh."""
    try:
        provisioner = sys.modules[KERNEL_PROVISIONER]
    except KeyError:
        return
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sys.stdout.flush()
    sys.stderr.flush()
    if _fork() == 0:
        ours.close()
        kernel_parent(theirs)
    theirs.close()
    provisioner.adopt(ours)


def kernel_parent(control: socket.socket) -> None:
    """Fork a kernel per launch until the server's end closes (never returns). The server's
    stop signals its process group, this one too: it stays until the server has ended, so
    the server can still learn how its kernels ended."""
    show_as(["hubstack-kernel-parent"])
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    _close_all_but(control.fileno())  # the server's listening socket too
    serve(control, kernel_child)
    os._exit(0)


def kernel_child(control: socket.socket, channel_fd: int) -> None:
    """A kernel forked by the kernel parent: take the launch, run ipykernel (never returns).

    As ``python -m ipykernel_launcher`` started by the server would be: its own session
    (interrupts signal its process group), the launch's directory (``""``) on
    ``sys.path``, the launch's variables, and ``JPY_PARENT_PID`` naming the process whose
    end ends it."""
    _default_signals()
    signal.signal(signal.SIGINT, signal.default_int_handler)
    control.close()
    channel = socket.socket(fileno=channel_fd)
    try:
        launch = json.loads(channel.recv(1 << 20))
        argv, cwd = [str(arg) for arg in launch["argv"]], str(launch["cwd"])
        os.setsid()
        os.chdir(cwd)
        null = os.open("/dev/null", os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        _close_all_but(channel.fileno())
        os.environ.clear()
        os.environ.update(launch["env"])
        for name, value in IMPORT_ENV.items():
            os.environ.setdefault(name, value)
        os.environ["JPY_PARENT_PID"] = str(os.getppid())
        show_as(argv)
        pidfd = os.pidfd_open(os.getpid())
        channel.sendmsg([json.dumps({"pid": os.getpid()}).encode()], [_rights(pidfd)])
        os.close(pidfd)
    except BaseException as exc:  # the server gets the reason and starts the kernel afresh
        try:
            channel.sendall(json.dumps({"error": f"{type(exc).__name__}: {exc}"}).encode())
        finally:
            os._exit(1)
    channel.close()
    # The working directory, where IPython puts it in a kernel started afresh (before the
    # site-packages); IPython leaves it out under the parent's -I, so it is added here.
    site_dirs = ("site-packages", "dist-packages")
    first_site = (i for i, path in enumerate(sys.path) if os.path.basename(path) in site_dirs)
    sys.path.insert(next(first_site, 0), "")
    # ipykernel read JPY_PARENT_PID when the parent imported it; its value is given here.
    sys.argv = [argv[0], *argv[3:], f"--IPKernelApp.parent_handle={os.getppid()}"]
    code = _run(lambda: runpy.run_module(argv[2], run_name="__main__", alter_sys=True))
    # A kernel registers its cleanups (history, connection file) with atexit.
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _rights(*fds: int) -> tuple[int, int, bytes]:
    return (socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())


def _fork() -> int:
    """``os.fork``, with every object made so far left out of the child's garbage
    collections (``gc.freeze``): a collection walks and writes the objects it tracks, so the
    child's first one would copy the pages of nearly all the memory the fork shares (50 ms
    in a server's first second, measured)."""
    gc.freeze()
    return os.fork()


def serve(control: socket.socket, run_child: Callable[[socket.socket, int], None]) -> None:
    """Fork a child per request until the other end closes the control socket; report its
    children's exits there."""
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    while True:
        ready, _, _ = select.select([control, wake_r], [], [])
        if wake_r in ready:
            while True:
                try:
                    os.read(wake_r, 512)
                except BlockingIOError:
                    break
            while True:
                try:
                    pid, status = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    break
                if pid == 0:
                    break
                try:
                    control.sendall(b"%d %d\n" % (pid, os.waitstatus_to_exitcode(status)))
                except OSError:
                    return  # the hub is gone; its servers go on without this parent
        if control in ready:
            try:
                data, fds = _receive_fds(control, 16, 1)
            except OSError:
                return
            if not data:
                return
            if len(fds) != 1:
                for fd in fds:
                    os.close(fd)
                continue
            if _fork() == 0:
                os.close(wake_r)
                os.close(wake_w)
                run_child(control, fds[0])
            os.close(fds[0])


def main() -> None:
    """``python3 -I -c <this> <listen code> <control socket's descriptor>``."""
    control = socket.socket(fileno=int(sys.argv[2]))
    listen_code = sys.argv[1]
    sys.argv = sys.argv[:1]
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    before = dict(os.environ)
    preload()
    IMPORT_ENV.update((k, v) for k, v in os.environ.items() if before.get(k) != v)
    DISTRIBUTIONS.update(imported_distributions())
    if threading.active_count() != 1:
        sys.exit("hubstack: importing Jupyter started a thread; forking it is not safe")
    control.sendall(b"ready\n")
    serve(control, lambda control, fd: child(control, fd, listen_code))


if __name__ == "__main__":
    main()
