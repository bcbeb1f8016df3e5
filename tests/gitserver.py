"""Real git servers on loopback serving test repositories: ``git daemon`` and smart HTTP.

Repositories are plain (non-bare) repositories made with :func:`make_repo` under a server's
``base`` directory; both servers read them from disk on every request, so a commit added with
:func:`add_commit` is served at once. Register the fixtures ``git_daemon`` and ``git_http``
with ``pytest_plugins = ["gitserver"]``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import threading
from collections.abc import Collection, Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import IO
from urllib.parse import unquote

import pytest
from hubtest import Abort, Hub, free_port_block, wait_for

# Fixed identities and dates: the same files and messages always give the same commits.
_GIT_ENV = {
    "GIT_AUTHOR_NAME": "Test Author",
    "GIT_AUTHOR_EMAIL": "author@example.org",
    "GIT_AUTHOR_DATE": "2024-01-01T00:00:00Z",
    "GIT_COMMITTER_NAME": "Test Committer",
    "GIT_COMMITTER_EMAIL": "committer@example.org",
    "GIT_COMMITTER_DATE": "2024-01-01T00:00:00Z",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "LC_ALL": "C",
}
_START_TIMEOUT = 30


def git(path: Path, *args: str) -> str:
    """Run git in the repository at ``path`` and return its stripped stdout."""
    proc = subprocess.run(
        ["git", "-C", str(path), *args],
        env={**os.environ, **_GIT_ENV},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed in {path}: {proc.stderr}")
    return proc.stdout.strip()


def write_tree(
    path: Path,
    files: Mapping[str, str | bytes],
    executable: Collection[str] = (),
    symlinks: Mapping[str, str] | None = None,
) -> None:
    """Write ``files`` (relative paths) below ``path``: mode 755 for those in ``executable``,
    644 for the others; ``symlinks`` maps link names to their targets."""
    for name, content in files.items():
        target = path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content)
        target.chmod(0o755 if name in executable else 0o644)
    for name, pointee in (symlinks or {}).items():
        link = path / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.unlink(missing_ok=True)
        link.symlink_to(pointee)


def make_repo(
    path: Path,
    files: Mapping[str, str | bytes],
    *,
    executable: Collection[str] = (),
    symlinks: Mapping[str, str] | None = None,
    message: str = "init",
) -> str:
    """Create a repository at ``path`` (branch main) with one commit of ``files``; its sha.

    ``executable`` names files committed with mode 755; ``symlinks`` maps link names to their
    targets. No files gives an empty commit, as an empty repository on a forge has.
    """
    path.mkdir(parents=True)
    git(path, "init", "--quiet", "--initial-branch=main")
    write_tree(path, files, executable, symlinks)
    git(path, "add", "--all")
    git(path, "commit", "--quiet", "--allow-empty", f"--message={message}")
    return git(path, "rev-parse", "HEAD")


def add_commit(
    path: Path,
    files: Mapping[str, str | bytes],
    *,
    removed: Collection[str] = (),
    executable: Collection[str] = (),
    symlinks: Mapping[str, str] | None = None,
    message: str = "update",
) -> str:
    """Commit changed, new and ``removed`` files on the checked-out branch; the new sha."""
    write_tree(path, files, executable, symlinks)
    if removed:
        git(path, "rm", "--quiet", "--", *removed)
    git(path, "add", "--all")
    git(path, "commit", "--quiet", "--allow-empty", f"--message={message}")
    return git(path, "rev-parse", "HEAD")


def tag(path: Path, name: str, *, annotated: bool = False, target: str = "HEAD") -> str:
    """Tag ``target`` as ``name`` (an annotated tag object if asked); the tagged commit's sha."""
    args = ["--annotate", f"--message=release {name}"] if annotated else []
    git(path, "tag", *args, name, target)
    return git(path, "rev-parse", f"{name}^{{commit}}")


def branch(path: Path, name: str, *, target: str = "HEAD") -> str:
    """Create branch ``name`` at ``target`` without checking it out; its sha."""
    git(path, "branch", name, target)
    return git(path, "rev-parse", name)


def _listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
        return True
    return False


class GitDaemon:
    """``git daemon`` on 127.0.0.1 exporting every repository below ``base`` (git://).

    ``base`` is created if missing.
    """

    def __init__(self, base: Path) -> None:
        self.base = base
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    def url(self, name: str) -> str:
        return f"git://127.0.0.1:{self.port}/{name}"

    def __enter__(self) -> GitDaemon:
        self.base.mkdir(parents=True, exist_ok=True)
        self.port = free_port_block(1)
        self._proc = subprocess.Popen(
            [
                "git",
                "daemon",
                "--export-all",
                "--informative-errors",
                f"--base-path={self.base}",
                "--reuseaddr",
                "--listen=127.0.0.1",
                f"--port={self.port}",
                "--enable=upload-pack",
                str(self.base),
            ],
            env={**os.environ, **_GIT_ENV},
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # stop() ends the daemon and its per-connection children
        )
        proc = self._proc

        def ready() -> bool:
            if proc.poll() is not None:
                raise Abort(f"git daemon exited with {proc.returncode} (see its stderr)")
            return _listening(self.port)

        try:
            wait_for(ready, _START_TIMEOUT, f"git daemon on port {self.port}", interval=0.05)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self._proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._proc.pid, signal.SIGTERM)
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait()
        self._proc = None

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class _CgiHandler(BaseHTTPRequestHandler):
    """Runs ``git http-backend`` as a CGI program for each request.

    HTTP/1.0 (one request per connection, the body ends when the connection does) keeps the
    response framing trivial while the backend's output is streamed as it is produced.
    """

    protocol_version = "HTTP/1.0"
    server: _GitHttpServer

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: a fetch makes several requests and the tests assert on outcomes."""

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0], 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _serve(self) -> None:
        path, _, query = self.path.partition("?")
        name = unquote(path).lstrip("/").split("/", 1)[0]
        if name in self.server.redirects:
            rest = unquote(path).lstrip("/")[len(name) :]
            self.send_response(301)
            self.send_header("Location", f"{self.server.redirects[name]}{rest}?{query}")
            self.end_headers()
            return
        body = self._body()
        env = {
            **os.environ,
            **_GIT_ENV,
            "GIT_PROJECT_ROOT": str(self.server.base),
            "GIT_HTTP_EXPORT_ALL": "1",
            "GATEWAY_INTERFACE": "CGI/1.1",
            "SERVER_PROTOCOL": "HTTP/1.0",
            "REQUEST_METHOD": self.command,
            "PATH_INFO": unquote(path),
            "QUERY_STRING": query,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_ADDR": self.client_address[0],
        }
        if encoding := self.headers.get("Content-Encoding"):
            env["HTTP_CONTENT_ENCODING"] = encoding
        if self.server.protocol_v2 and (protocol := self.headers.get("Git-Protocol")):
            env["HTTP_GIT_PROTOCOL"] = protocol
        with subprocess.Popen(
            ["git", "http-backend"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
        ) as proc:
            assert proc.stdin is not None and proc.stdout is not None
            # Written from a thread: the backend may answer before it has read everything.
            feeder = threading.Thread(target=_feed, args=(proc.stdin, body), daemon=True)
            feeder.start()
            status, headers = 200, []
            while (line := proc.stdout.readline().rstrip(b"\r\n")) != b"":
                key, _, value = line.decode("latin-1").partition(":")
                if key.lower() == "status":
                    status = int(value.split()[0])
                else:
                    headers.append((key, value.strip()))
            self.send_response(status)
            for key, value in headers:
                self.send_header(key, value)
            self.end_headers()
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                shutil.copyfileobj(proc.stdout, self.wfile)
            feeder.join()


def _feed(pipe: IO[bytes], data: bytes) -> None:
    with contextlib.suppress(BrokenPipeError), pipe:
        pipe.write(data)


class _GitHttpServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, base: Path, protocol_v2: bool) -> None:
        super().__init__(("127.0.0.1", 0), _CgiHandler)
        self.base = base
        self.protocol_v2 = protocol_v2
        self.redirects: dict[str, str] = {}


class GitHttp:
    """Git's smart HTTP protocol on 127.0.0.1 for every repository below ``base`` (http://).

    ``protocol_v2=False`` makes the server speak only protocol v0, as older servers do: those
    refuse to send a commit no ref points at directly (e.g. the commit of an annotated tag).
    ``base`` is created if missing.
    """

    def __init__(self, base: Path, *, protocol_v2: bool = True) -> None:
        self.base = base
        self._server = _GitHttpServer(base, protocol_v2)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def redirect(self, name: str, to: str) -> None:
        """Answer every request for repository ``name`` with a redirect to the URL ``to``."""
        self._server.redirects[name] = to

    def __enter__(self) -> GitHttp:
        self.base.mkdir(parents=True, exist_ok=True)
        self._thread.start()
        wait_for(lambda: _listening(self.port), _START_TIMEOUT, f"git http on {self.port}")
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)


class SilentServer:
    """Accepts connections and never answers, like a server that hangs mid-request."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._connections: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def url(self, name: str, scheme: str = "git") -> str:
        return f"{scheme}://127.0.0.1:{self._listener.getsockname()[1]}/{name}"

    def _accept(self) -> None:
        with contextlib.suppress(OSError):  # the listener was closed
            while True:
                self._connections.append(self._listener.accept()[0])

    def connected(self) -> bool:
        return bool(self._connections)

    def all_closed_by_client(self) -> bool:
        """True once there were connections and each client has closed its end (e.g. died)."""
        if not self._connections:
            return False
        for conn in self._connections:
            conn.settimeout(0)
            try:
                while conn.recv(65536):
                    pass  # the request the client sent and never got an answer to
            except BlockingIOError:
                return False  # still open
            except OSError:
                pass  # reset by the client: closed too
        return True

    def __enter__(self) -> SilentServer:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
        self._listener.close()
        self._thread.join(10)
        for conn in self._connections:
            conn.close()


@pytest.fixture(scope="session")
def git_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GitDaemon]:
    """A git daemon for the test session; make repositories in ``git_daemon.base``."""
    with GitDaemon(tmp_path_factory.mktemp("git-daemon")) as daemon:
        yield daemon


@pytest.fixture(scope="session")
def git_http(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GitHttp]:
    """A smart HTTP git server for the test session; make repositories in ``git_http.base``."""
    with GitHttp(tmp_path_factory.mktemp("git-http")) as server:
        yield server


@pytest.fixture(scope="module", name="git")
def hub_git_daemon(hub: Hub) -> Iterator[GitDaemon]:
    """A git daemon beside the test module's hub (its ``hub`` fixture), for its repositories."""
    with GitDaemon(hub.root / "git") as daemon:
        yield daemon
