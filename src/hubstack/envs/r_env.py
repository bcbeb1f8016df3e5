"""R environments, as repo2docker's R buildpack makes them, from conda packages.

A repository asks for R with ``runtime.txt`` ``r-<version>[-<date>]`` or ``r-<date>``, or with a
top-level ``DESCRIPTION`` (an R package) when it has no binder folder. Its environment gets
``r-base`` and ``r-irkernel`` from the site's first conda channel (rattler installs them as for
an ``environment.yml``: no R of the host's is used, so any R version a channel has can be
asked for), a Python for the Jupyter server, and:

- the CRAN-like repository ``binder.r.repos`` as R's ``repos`` option, in the environment's
  ``Rprofile.site`` (so ``install.R`` and the users' ``install.packages`` read the same one);
  without one, Posit Package Manager's CRAN snapshot of ``runtime.txt``'s date, else CRAN;
  users' own packages go to their ``R_LIBS_USER``;
- ``install.R`` run with ``Rscript`` as the build account, from the repository's root;
- ``DESCRIPTION``: the repository installed as an R package with its dependencies by
  ``remotes::install_local`` (``r-remotes`` from the channel), as repo2docker does;
- an R kernel registered in the environment by ``IRkernel::installspec``, which the server
  finds before any kernel of the host's with the same name.

An ``environment.yml`` with R packages (``r-...``) gets ``r-irkernel``, the repository
setting and the kernel too, as in repo2docker's conda buildpack.
"""

from __future__ import annotations

import datetime
import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from hubstack.config.models import RSettings
from hubstack.envs.conda import package_name
from hubstack.envs.rees_files import RepoTree, SpecError
from hubstack.untrusted import quote_untrusted

CRAN = "https://cloud.r-project.org"
POSIT_SNAPSHOT = "https://packagemanager.posit.co/cran/{date}"
_RUNTIME = re.compile(
    r"r-(?:(?P<version>[0-9]+\.[0-9]+(?:\.[0-9]+)?)(?:-(?P<date>[0-9]{4}-[0-9]{2}-[0-9]{2}))?"
    r"|(?P<only_date>[0-9]{4}-[0-9]{2}-[0-9]{2}))"
)
# Started with none of the user's or site's start-up files but the environment's Rprofile.site.
_R_FLAGS = "--no-save --no-restore --no-init-file --no-environ"


# In the environment's Rprofile.site: where the library is not writable (a server's user; the
# environment is root's and shared), packages a user installs go to R_LIBS_USER in their home,
# made on first start, as R would only offer to in an interactive session.
_USER_LIBRARY = """local({
  lib <- Sys.getenv("R_LIBS_USER")
  if (nzchar(lib) && file.access(.Library, 2) != 0) {
    dir.create(lib, recursive = TRUE, showWarnings = FALSE)
    .libPaths(c(lib, .libPaths()))
  }
})"""


@dataclass(frozen=True)
class RPlan:
    """What an R build installs and runs; paths are relative to the repository's root."""

    version: str | None  # "4.2" or "4.2.3"; None: the newest the channel has
    repos: str  # the CRAN-like repository R installs packages from
    install_r: str | None  # install.R, run with Rscript
    description: bool  # install the repository as an R package (root DESCRIPTION)


@dataclass(frozen=True)
class RRuntime:
    """An R ``runtime.txt``: the version (None: any) and the CRAN snapshot date (None: now)."""

    version: str | None
    date: str | None


def read_r_runtime(tree: RepoTree, rel: str) -> RRuntime | None:
    """The R that ``runtime.txt`` asks for; None when it does not ask for R."""
    text = tree.read(rel).strip()
    if not text.startswith("r-"):
        return None
    match = _RUNTIME.fullmatch(text)
    if match is None:
        raise SpecError(
            f"{rel} asks for R as {quote_untrusted(text)}; write r-<version>, "
            "r-<version>-<YYYY-MM-DD> or r-<YYYY-MM-DD>, e.g. r-4.3-2024-01-10."
        )
    date = match["date"] or match["only_date"]
    try:
        datetime.date.fromisoformat(date or "2000-01-01")
    except ValueError:
        raise SpecError(f"{rel} names the date {date}, which is not a date.") from None
    return RRuntime(match["version"], date)


def plan(
    runtime: RRuntime | None, install_r: str | None, description: bool, settings: RSettings
) -> RPlan:
    """The R build: ``settings.repos`` if the site set one, else the public snapshot."""
    date = runtime.date if runtime else None
    repos = settings.repos or (POSIT_SNAPSHOT.format(date=date) if date else CRAN)
    version = runtime.version if runtime else None
    return RPlan(version, repos, install_r, description)


def conda_specs(r: RPlan) -> tuple[str, ...]:
    """The conda packages every R environment needs (``r-base`` pinned as asked)."""
    if r.version is None:
        base = "r-base"
    else:  # 4.2: any 4.2.x; 4.2.3: that one
        base = f"r-base {r.version}.*" if r.version.count(".") == 1 else f"r-base {r.version}"
    return (base, "r-irkernel", *(["r-remotes"] if r.description else []))


def uses_r(specs: tuple[str, ...]) -> bool:
    """An environment.yml with R packages (``r-``), by repo2docker's rule: it gets an R kernel."""
    return any(package_name(spec).startswith("r-") for spec in specs)


def with_kernel(specs: tuple[str, ...]) -> tuple[str, ...]:
    """``specs`` with ``r-irkernel``, unless they name it already (with a pin, say)."""
    if any(package_name(spec) == "r-irkernel" for spec in specs):
        return specs
    return (*specs, "r-irkernel")


def setup_steps(r: RPlan, env: Path) -> list[str]:
    """Build script lines run in the repository's root before the Jupyter server is
    installed: the repository setting, then install.R and the DESCRIPTION package."""
    q = shlex.quote
    site = env / "lib/R/etc/Rprofile.site"
    # A new file, not an append: the installed one may be a link into a package cache.
    profile = f"options(repos = c(CRAN = {json.dumps(r.repos)}))\n{_USER_LIBRARY}"
    lines = [
        f"echo {q(f'R installs packages from {r.repos}')}",
        f"{{ cat {q(str(site))} 2>/dev/null || true; printf '%s\\n' {q(profile)}; }}"
        f" > {q(str(site))}.new",
        f"rm -f {q(str(site))} && mv {q(str(site))}.new {q(str(site))}",
    ]
    if r.install_r:
        lines += [
            f"echo {q(f'Running {r.install_r}')}",
            f"{q(str(env / 'bin/Rscript'))} {_R_FLAGS} {q(r.install_r)}",
        ]
    if r.description:
        # upgrade = "never": the conda packages already there stay as the channel made them.
        # remotes only warns when an install fails: the package must load afterwards.
        install = (
            'remotes::install_local(upgrade = "never"); '
            'package <- read.dcf("DESCRIPTION")[1, "Package"]; '
            "if (!requireNamespace(package, quietly = TRUE)) "
            'stop("the package ", package, " of DESCRIPTION could not be installed (see above)")'
        )
        lines += [
            "echo 'Installing the repository as an R package (DESCRIPTION)'",
            f"{q(str(env / 'bin/R'))} {_R_FLAGS} --quiet -e {q(install)}",
        ]
    return lines


def kernel_steps(env: Path) -> list[str]:
    """Register the environment's R kernel in the environment (IRkernel runs ``jupyter
    kernelspec install``, so the environment's ``bin`` goes first on ``PATH``)."""
    q = shlex.quote
    register = 'IRkernel::installspec(user = FALSE, prefix = Sys.getenv("R_KERNEL_PREFIX"))'
    return [
        "echo 'Registering the R kernel'",
        f'PATH={q(str(env / "bin"))}:"$PATH" R_KERNEL_PREFIX={q(str(env))} '
        f"{q(str(env / 'bin/R'))} {_R_FLAGS} --quiet -e {q(register)}",
    ]
