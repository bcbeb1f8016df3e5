"""The interfaces a server can open in, and the software each needs in its environment.

JupyterLab is the server itself; VS Code (code-server) and RStudio (rserver) run beside it
through jupyter-server-proxy, which starts them on first visit in the server's own
process tree (so inside its limits, as the user) and serves them under the server's URL;
Voilà is a Jupyter server extension. hubstack writes none of these: it only names them,
opens the server in the chosen one and checks that the environment has them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from hubstack.config.models import Config

InterfaceId = Literal["lab", "vscode", "voila", "rstudio"]


@dataclass(frozen=True)
class Software:
    """One thing an interface needs: found when any of ``paths`` exists. Relative paths
    (glob patterns) are inside the environment's prefix, absolute ones on the machine."""

    name: str
    paths: tuple[str, ...]

    def found(self, prefix: Path) -> bool:
        return any(
            Path(path).exists() if path.startswith("/") else any(prefix.glob(path))
            for path in self.paths
        )


SITE_PACKAGES = "lib/python3*/site-packages"


@dataclass(frozen=True)
class Interface:
    id: str
    display: str
    # Where the server opens; None: the environment's default_url (JupyterLab's page).
    url: str | None
    # The Jupyter server extension that serves it, enabled in servers of environments
    # that offer it (the default environment has it off: importing it costs every
    # other server's start).
    extension: str | None
    needs: tuple[Software, ...]


INTERFACES: dict[str, Interface] = {
    interface.id: interface
    for interface in (
        Interface("lab", "JupyterLab", None, None, (Software("jupyterlab", ("bin/jupyter-lab",)),)),
        Interface(
            "vscode",
            "VS Code",
            "/vscode/",
            "jupyter_server_proxy",
            (
                Software("jupyter-vscode-proxy", (f"{SITE_PACKAGES}/jupyter_vscode_proxy",)),
                Software("code-server", ("bin/code-server",)),
            ),
        ),
        Interface(
            "voila",
            "Voilà",
            "/voila/",
            "voila.server_extension",
            (Software("voila", ("bin/voila",)),),
        ),
        Interface(
            "rstudio",
            "RStudio",
            "/rstudio/",
            "jupyter_server_proxy",
            (
                Software("jupyter-rsession-proxy", (f"{SITE_PACKAGES}/jupyter_rsession_proxy",)),
                Software("R", ("bin/R", "/usr/bin/R", "/usr/local/bin/R")),
                # Where jupyter-rsession-proxy looks for it, besides the server's PATH.
                Software(
                    "rstudio-server",
                    (
                        "bin/rserver",
                        "/usr/lib/rstudio-server/bin/rserver",
                        "/usr/lib/rstudio/bin/rserver",
                        "/usr/local/bin/rserver",
                        "/usr/bin/rserver",
                    ),
                ),
            ),
        ),
    )
}


def missing_software(interface_id: str, prefix: Path) -> list[str]:
    """The names of what ``interface_id`` needs that the environment at ``prefix`` (and
    the machine) lacks."""
    return [s.name for s in INTERFACES[interface_id].needs if not s.found(prefix)]


def interface_warnings(config: Config) -> list[str]:
    """``hubstack check``'s warnings for interfaces whose software an environment lacks.

    Warnings, not errors: an environment may be built, or its prefix mounted, after the
    config is written (on Slurm it may be a path only the nodes see), and a missing piece
    breaks only that interface's page, not the hub.
    """
    warnings = []
    for index, environment in enumerate(config.environments):
        if environment.prefix is None:
            continue  # declared: its software is whatever its build installs
        for interface_id in environment.interfaces:
            missing = missing_software(interface_id, environment.prefix)
            if missing:
                warnings.append(
                    f"environments[{index}].interfaces: {interface_id!r} needs "
                    f"{', '.join(missing)}, not found in {environment.prefix} or on this "
                    f"machine; install it there or remove {interface_id!r} from "
                    f"environment {environment.id!r}."
                )
    return warnings
