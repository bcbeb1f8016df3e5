"""Where things are in an environment built from a repository, and the search paths that
find them: one place for the build (its ``postBuild`` sees what the server will) and for the
launch plan (the server, its kernels and terminals).

An entry of the cache (``envs/<key>/``) holds ``env/`` (the Python environment; ``npm
install -g`` in a ``postBuild`` lands there too), ``env/apt/`` (the Debian packages of
``apt.txt``, unpacked as they would be in ``/``) and ``home/`` (what the build left in its
home, copied into a user's home at a launch, see :mod:`hubstack.envs.checkout`).
"""

from __future__ import annotations

import platform
import sysconfig
from pathlib import Path

ENV = "env"
HOME = "home"
APT = "apt"
# Debian's multiarch folder (x86_64-linux-gnu): where packages put their shared libraries.
MULTIARCH = sysconfig.get_config_var("MULTIARCH") or f"{platform.machine()}-linux-gnu"
# What a build's home may hold that no server needs: package managers' download caches.
HOME_CACHES = (".cache", ".npm")


def search_paths(
    prefix: Path, home: Path, repo_dir: Path | None, apt: bool, layer: Path | None = None
) -> dict[str, str]:
    """``PATH`` (and with Debian packages ``LD_LIBRARY_PATH`` and ``MANPATH``) for what runs
    from the environment at ``prefix`` as the account whose home is ``home``; with the
    prefix of a server ``layer``, where Jupyter finds the layer's data and config.

    The environment's ``bin`` comes first, then the packages' and the user's own
    ``~/.local/bin`` and ``$REPO_DIR/.local/bin`` (as repo2docker has them), then the system.
    ``MANPATH`` ends with ``:`` so that man still reads the system's pages too.
    """
    root = prefix / APT
    paths = [prefix / "bin"]
    if apt:
        paths += [root / "usr/local/bin", root / "usr/bin", root / "bin"]
    paths.append(home / ".local/bin")
    if repo_dir is not None:
        paths.append(repo_dir / ".local/bin")
    found = {"PATH": ":".join([*map(str, paths), "/usr/local/bin:/usr/bin:/bin"])}
    if apt:
        libraries = [root / "usr/lib" / MULTIARCH, root / "usr/lib", root / "lib" / MULTIARCH]
        found["LD_LIBRARY_PATH"] = ":".join(map(str, libraries))
        found["MANPATH"] = f"{root / 'usr/share/man'}:"
    if layer is not None:
        # What jupyter_core and JupyterLab look for under sys.prefix, the environment's:
        # JUPYTER_PATH and JUPYTER_CONFIG_PATH come before the environment's own folders in
        # their search (a package in both is at the same version in both, see server_layer).
        found |= {
            "JUPYTER_PATH": str(layer / "share/jupyter"),
            "JUPYTER_CONFIG_PATH": str(layer / "etc/jupyter"),
            "JUPYTERLAB_DIR": str(layer / "share/jupyter/lab"),
        }
    return found
