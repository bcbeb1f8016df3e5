"""Run inside a server's process on the hub's machine: serve on the socket the hub handed over.

Only the standard library and the environment's own Jupyter Server: the local backend
passes this file's text to the environment's ``python3 -c``, followed by the server's
command line. The hub binds the server's port itself (the kernel picks a free one and the
socket holds it from then on) and passes the listening socket as the descriptor named in
``HUBSTACK_LISTEN_FD``; no other program can take the port between the hub choosing it and
the server listening on it, as it could when the hub chose a port, closed it and the server
bound it again seconds later.

Jupyter Server can only bind a port itself (``ServerApp.sock`` is a Unix socket, which
JupyterHub's route to a spawner's server cannot name), so its two methods that pick and bind
the port are replaced here. They are private: an environment whose Jupyter Server lacks
them stops at once with the reason, rather than listening somewhere the hub does not know.
"""

import os
import runpy
import socket
import sys

VARIABLE = "HUBSTACK_LISTEN_FD"


def adopt(fd: int) -> None:
    """Make every Jupyter Server in this process serve on ``fd`` instead of binding."""
    from jupyter_server.serverapp import ServerApp

    for method in ("_find_http_port", "_bind_http_server_tcp"):
        if not callable(getattr(ServerApp, method, None)):
            sys.exit(
                f"hubstack: this Jupyter Server has no ServerApp.{method}, so it cannot serve "
                "on the socket the hub bound for it; use jupyter-server 2.x"
            )
    os.set_inheritable(fd, False)  # kernels and terminals must not hold the server's port
    listening = socket.socket(fileno=fd)
    listening.setblocking(False)
    port = listening.getsockname()[1]

    def find_port(app: ServerApp) -> None:
        app.port = port

    def bind(app: ServerApp) -> bool:
        app.http_server.add_sockets([listening])
        return True

    ServerApp._find_http_port = find_port
    ServerApp._bind_http_server_tcp = bind


def main() -> None:
    """``python3 -c <this> <server script> <arguments>``: adopt the socket, run the script."""
    adopt(int(os.environ.pop(VARIABLE)))
    script = sys.argv[1]
    sys.argv = sys.argv[1:]
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
