"""Environments built from repositories, for real: a git server on loopback, uv, the build
account, its limits, and the content-addressed cache. Each supported file and each
precedence rule has its own small repository; the tests look at what the environment can
import, not at how it was built."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from gitserver import GitDaemon, add_commit, make_repo
from hubtest import new_test_root, python_as_nobody, remove_later, startup_facts, wait_for
from prometheus_client import REGISTRY

from hubstack.config.models import Config
from hubstack.envs import repository
from hubstack.envs.builder import fetch_account_name
from hubstack.envs.cache import EnvCache
from hubstack.envs.declared import current_keys
from hubstack.envs.repository import Prepared, PrepareFailed, Repositories
from hubstack.launch.repo import repo_source
from hubstack.system import cgroups, volumes

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="builds run as their own account")

TABULATE = "tabulate==0.9.0"
TERMCOLOR = "termcolor==2.4.0"


@dataclass
class Site:
    """A hub's build setup without the hub: config, cache root and a git server."""

    root: Path
    git: GitDaemon
    overrides: dict[str, Any] = field(default_factory=dict)  # of binder's settings

    def config(self, **limits: Any) -> Config:
        binder = {
            "root": str(self.root / "binder"),
            "allowed_hosts": ["127.0.0.1:*"],
            "allowed_schemes": ["git"],
            "build_account": self.account,
            "limits": {"time": "5m", "size": "1G", **limits},
            # The public conda channels cannot be reached from here: environment.yml is
            # built from PyPI in this module, from a local channel in test_conda_builds.
            "conda": {"enabled": False},
            **self.overrides,
        }
        hub = {"data_dir": str(self.root / "data")}
        return Config.model_validate({"hub": hub, "binder": binder})

    @property
    def account(self) -> str:
        return f"hsb-{self.root.name[:6]}"

    def repo(self, files: dict[str, str], executable: tuple[str, ...] = ()) -> str:
        name = f"r{secrets.token_hex(4)}"
        make_repo(self.git.base / name, files, executable=executable)
        return name

    def prepare(
        self, name: str, settle: bool = False, **limits: Any
    ) -> tuple[Prepared, list[tuple[str, str]]]:
        """Launch ``name``; ``settle``: and wait until its wheels are kept and stored, as
        the hub does after the launch went on."""
        config = self.config(**limits)
        repositories = Repositories(config, cgroups.detect())
        source = repo_source(self.git.url(name), "main", config.binder)
        events: list[tuple[str, str]] = []

        async def launch() -> Prepared:
            prepared = await repositories.prepare(source, lambda p, m: events.append((p, m)))
            if settle:
                await repositories.settled()
            return prepared

        return asyncio.run(launch()), events

    def entries(self) -> set[str]:
        """The cache's entries but the server layers (a refused build may make the first)."""
        cache = EnvCache.of(self.config())
        layers = {layer.key for layer in cache.layers()}
        envs = self.root / "binder/envs"
        return {p.name for p in envs.iterdir()} - layers if envs.is_dir() else set()

    def remove(self) -> None:
        """Unmount what builds left mounted, delete the build accounts and the files."""
        for line in Path("/proc/self/mounts").read_text().splitlines():
            if line.split()[1].startswith(str(self.root)):
                volumes.unmount(Path(line.split()[1]))
        for account in (self.account, fetch_account_name(self.account)):
            subprocess.run(["userdel", account], check=False, capture_output=True)
        remove_later(self.root)

    def refused(self, name: str, **limits: Any) -> str:
        """The message of a launch that fails; it must leave nothing behind: no entry in
        the cache, no scratch image, no mount."""
        before = self.entries()
        with pytest.raises(PrepareFailed) as info:
            self.prepare(name, **limits)
        assert self.entries() == before
        assert list((self.root / "data-builds").glob("*.img")) == []
        assert str(self.root) not in Path("/proc/self/mounts").read_text()
        return info.value.message


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    root = new_test_root()
    (root / "data").mkdir(mode=0o700)  # as `hubstack up` leaves the hub's data dir
    with GitDaemon(root / "git") as git:
        made = Site(root, git)
        try:
            yield made
        finally:
            made.remove()


def python(prepared: Prepared, code: str) -> str:
    """Run ``code`` with the environment's Python, as users' servers would."""
    return python_as_nobody(prepared.env.prefix / "bin/python", code)


def has(prepared: Prepared, module: str) -> bool:
    code = f"import importlib.util as u; print(u.find_spec({module!r}) is not None)"
    return python(prepared, code) == "True"


def version(prepared: Prepared, dist: str) -> str:
    return python(prepared, f"import importlib.metadata as m; print(m.version({dist!r}))")


def phases(events: list[tuple[str, str]]) -> list[str]:
    return list(dict.fromkeys(phase for phase, _ in events))


# -- what each file does --------------------------------------------------------------------


def test_requirements_txt_is_installed_with_the_server(site: Site) -> None:
    prepared, events = site.prepare(site.repo({"requirements.txt": f"{TABULATE}\n"}))
    assert version(prepared, "tabulate") == "0.9.0"
    assert (prepared.env.prefix / "bin/jupyterhub-singleuser").exists()
    assert phases(events) == ["fetching", "building", "built"]
    assert prepared.env.snapshot is None  # no postBuild: content comes from the commit


def test_an_empty_repository_gets_the_default_environment(site: Site) -> None:
    prepared, _ = site.prepare(site.repo({}))
    assert has(prepared, "jupyterlab") and has(prepared, "ipykernel")
    assert not has(prepared, "tabulate")
    # Its users cannot write there: the server's bytecode is compiled at build time.
    python = prepared.env.prefix / "bin/python"
    assert startup_facts(python) == {"compiled": True, "rfc3987_syntax": False}


def test_environment_yml_pip_section_and_pypi_dependencies(site: Site) -> None:
    env = (
        "dependencies:\n  - python=3.11\n  - tabulate=0.9\n"
        "  - pip\n  - pip:\n    - termcolor==2.4.0\n"
    )
    prepared, _ = site.prepare(site.repo({"environment.yml": env}))
    assert version(prepared, "tabulate") == "0.9.0"
    assert version(prepared, "termcolor") == "2.4.0"


def test_environment_yml_needing_conda_is_refused_naming_the_packages(site: Site) -> None:
    env = "dependencies:\n  - r-base=4.3\n  - tabulate\n"
    message = site.refused(site.repo({"environment.yml": env}))
    assert "r-base" in message


def test_runtime_txt_with_a_python_this_host_lacks_is_refused(site: Site) -> None:
    message = site.refused(site.repo({"runtime.txt": "python-3.7\n"}))
    assert "3.7" in message and "3.11" in message


def test_runtime_txt_with_the_hosts_python(site: Site) -> None:
    files = {"runtime.txt": "python-3.11\n", "requirements.txt": f"{TABULATE}\n"}
    prepared, _ = site.prepare(site.repo(files))
    assert python(prepared, "import sys; print(sys.version_info[:2])") == "(3, 11)"
    assert has(prepared, "tabulate")


def test_pipfile(site: Site) -> None:
    pipfile = '[packages]\ntabulate = "==0.9.0"\n\n[dev-packages]\ntermcolor = "==2.4.0"\n'
    prepared, _ = site.prepare(site.repo({"Pipfile": pipfile}))
    assert version(prepared, "tabulate") == "0.9.0"
    assert version(prepared, "termcolor") == "2.4.0"


def test_pipfile_lock_wins_over_pipfile(site: Site) -> None:
    lock = {
        "_meta": {"requires": {"python_version": "3.11"}},
        "default": {"tabulate": {"version": "==0.9.0"}},
        "develop": {},
    }
    files = {"Pipfile": '[packages]\ntabulate = "==0.8.10"\n', "Pipfile.lock": json.dumps(lock)}
    prepared, _ = site.prepare(site.repo(files))
    assert version(prepared, "tabulate") == "0.9.0"


def test_pipfile_wins_over_requirements_txt(site: Site) -> None:
    files = {"Pipfile": '[packages]\ntabulate = "*"\n', "requirements.txt": f"{TERMCOLOR}\n"}
    prepared, _ = site.prepare(site.repo(files))
    assert has(prepared, "tabulate") and not has(prepared, "termcolor")


def test_environment_yml_wins_over_requirements_txt(site: Site) -> None:
    files = {
        "environment.yml": "dependencies:\n  - tabulate\n",
        "requirements.txt": f"{TERMCOLOR}\n",
    }
    prepared, _ = site.prepare(site.repo(files))
    assert has(prepared, "tabulate") and not has(prepared, "termcolor")


SETUP_PY = (
    "from setuptools import setup\n"
    "setup(name='hubstack-probe', version='0.3', py_modules=['hubstack_probe'])\n"
)


def test_setup_py_installs_the_repository(site: Site) -> None:
    files = {"setup.py": SETUP_PY, "hubstack_probe.py": "ANSWER = 42\n"}
    prepared, _ = site.prepare(site.repo(files))
    assert python(prepared, "import hubstack_probe; print(hubstack_probe.ANSWER)") == "42"


def test_pyproject_toml_installs_the_repository(site: Site) -> None:
    pyproject = (
        '[project]\nname = "hubstack-probe"\nversion = "0.4"\ndependencies = ["tabulate"]\n'
        '[build-system]\nrequires = ["setuptools>=61"]\nbuild-backend = "setuptools.build_meta"\n'
        "[tool.setuptools]\npy-modules = ['hubstack_probe']\n"
    )
    files = {"pyproject.toml": pyproject, "hubstack_probe.py": "ANSWER = 43\n"}
    prepared, _ = site.prepare(site.repo(files))
    assert version(prepared, "hubstack-probe") == "0.4"
    assert has(prepared, "tabulate")


def test_a_binder_folder_hides_the_root_files(site: Site) -> None:
    files = {
        "binder/requirements.txt": f"{TABULATE}\n",
        "requirements.txt": f"{TERMCOLOR}\n",
        "setup.py": SETUP_PY,
        "hubstack_probe.py": "ANSWER = 1\n",
    }
    prepared, _ = site.prepare(site.repo(files))
    assert has(prepared, "tabulate")
    assert not has(prepared, "termcolor") and not has(prepared, "hubstack_probe")


def test_dot_binder_folder_counts_too(site: Site) -> None:
    prepared, _ = site.prepare(site.repo({".binder/requirements.txt": f"{TABULATE}\n"}))
    assert has(prepared, "tabulate")


def test_binder_and_dot_binder_together_are_refused(site: Site) -> None:
    files = {"binder/requirements.txt": "tabulate\n", ".binder/requirements.txt": "termcolor\n"}
    message = site.refused(site.repo(files))
    assert "binder" in message and ".binder" in message


def test_post_build_changes_reach_the_launch_and_run_as_the_build_account(site: Site) -> None:
    post_build = "#!/bin/bash\nset -e\necho downloaded > data.txt\nid -un > builder.txt\n"
    prepared, events = site.prepare(
        site.repo({"postBuild": post_build, "README.md": "hi\n"}, executable=("postBuild",))
    )
    snapshot = prepared.env.snapshot
    assert snapshot is not None
    assert (snapshot / "data.txt").read_text() == "downloaded\n"
    assert (snapshot / "builder.txt").read_text().strip() == site.account
    assert any("Running postBuild" in message for _, message in events)
    # Built, it belongs to root: no later build (running as that account) can change it.
    assert (snapshot / "data.txt").stat().st_uid == 0
    assert prepared.env.prefix.stat().st_uid == 0


def test_apt_txt_and_dockerfile_are_named_not_ignored(site: Site) -> None:
    files = {
        "apt.txt": "cowsay\n",
        "Dockerfile": "FROM scratch\n",
        "requirements.txt": "tabulate\n",
    }
    _, events = site.prepare(site.repo(files))
    notes = " ".join(message for _, message in events if message.startswith("Note:"))
    assert "apt.txt" in notes and "cowsay" in notes
    assert "Dockerfile" in notes


def test_an_apt_package_that_does_not_exist_fails_the_build_naming_it(site: Site) -> None:
    message = site.refused(site.repo({"apt.txt": "figlet\nno-such-package-hs\n"}))
    assert "E: Unable to locate package no-such-package-hs" in message
    assert "apt.txt asks for packages that cannot be installed" in message


# -- the cache --------------------------------------------------------------------------------


def counted(name: str, **labels: str) -> float:
    """A metric of this process's registry, as the hub serves it at /hub/metrics."""
    return REGISTRY.get_sample_value(name, labels) or 0


def test_a_second_launch_and_a_readme_commit_do_not_rebuild(site: Site) -> None:
    builds = counted("hubstack_build_duration_seconds_count", outcome="success")
    hits = counted("hubstack_environment_lookups_total", result="cache_hit")
    # A requirements file of its own: other tests' builds of the same packages are in the
    # cache too, and this one must build once.
    unique = f"{TABULATE}\n# {secrets.token_hex(4)}\n"
    name = site.repo({"requirements.txt": unique, "README.md": "v1\n"})
    first, _ = site.prepare(name)
    again, events = site.prepare(name)
    assert again.env.key == first.env.key
    assert counted("hubstack_build_duration_seconds_count", outcome="success") == builds + 1
    assert counted("hubstack_environment_lookups_total", result="cache_hit") == hits + 1
    assert "building" not in phases(events)
    assert ("built", f"Found the environment {first.env.key[:12]}, built before") in events

    add_commit(site.git.base / name, {"README.md": "v2\n", "intro.ipynb": "{}"})
    readme, events = site.prepare(name)
    assert readme.commit != first.commit
    assert readme.env.key == first.env.key
    assert "building" not in phases(events)

    add_commit(site.git.base / name, {"requirements.txt": f"{TABULATE}\n{TERMCOLOR}\n"})
    changed, events = site.prepare(name)
    assert changed.env.key != first.env.key
    assert "building" in phases(events)
    assert has(changed, "termcolor")


def test_a_resolved_branch_is_launched_again_until_binder_ref_cache_has_passed(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Within ``binder.ref_cache`` a branch launched before is launched at the commit it was
    resolved to, without asking the repository or reading the commit's files again; once
    that time has passed, at the branch's new commit."""
    name = site.repo({"requirements.txt": f"{TABULATE}\n"})
    exports = []
    real_export = repository.export

    async def export(*args: Any, **kwargs: Any) -> None:
        exports.append(args[1])
        await real_export(*args, **kwargs)

    monkeypatch.setattr(repository, "export", export)

    def launcher(ref_cache: str) -> Callable[[], tuple[Prepared, list[tuple[str, str]]]]:
        config = Site(site.root, site.git, {**site.overrides, "ref_cache": ref_cache}).config()
        repositories = Repositories(config, cgroups.detect())
        source = repo_source(site.git.url(name), "main", config.binder)

        def launch() -> tuple[Prepared, list[tuple[str, str]]]:
            events: list[tuple[str, str]] = []
            prepared = asyncio.run(repositories.prepare(source, lambda *e: events.append(e)))
            return prepared, events

        return launch

    launch = launcher("1h")
    first, _ = launch()
    add_commit(site.git.base / name, {"README.md": "new\n"})
    again, events = launch()
    assert again.commit == first.commit and exports == [first.commit]
    assert ("fetching", f"main is commit {first.commit[:12]}, resolved just before") in events
    assert not any(message.startswith("Resolving") for _, message in events)

    quick = launcher("1s")
    newer, _ = quick()
    assert newer.commit != first.commit and newer.env.key == first.env.key
    latest = add_commit(site.git.base / name, {"README.md": "newer\n"})
    wait_for(lambda: quick()[0].commit == latest, 60, "the branch's new commit to be launched")


def test_a_post_build_makes_every_file_count(site: Site) -> None:
    name = site.repo(
        {"postBuild": "#!/bin/sh\ncat README.md\n", "README.md": "v1\n"}, executable=("postBuild",)
    )
    first, _ = site.prepare(name)
    add_commit(site.git.base / name, {"README.md": "v2\n"})
    second, _ = site.prepare(name)
    assert second.env.key != first.env.key


def test_two_concurrent_launches_build_once(site: Site) -> None:
    name = site.repo({"requirements.txt": f"{TABULATE}\n# concurrent\n"})
    config = site.config()
    repositories = Repositories(config, cgroups.detect())
    source = repo_source(site.git.url(name), "main", config.binder)
    logs: list[list[tuple[str, str]]] = [[], []]

    async def both() -> list[Prepared]:
        return await asyncio.gather(
            *(
                repositories.prepare(source, lambda p, m, i=i: logs[i].append((p, m)))
                for i in range(2)
            )
        )

    first, second = asyncio.run(both())
    assert first.env.key == second.env.key
    joined = [log for log in logs if any("Another launch is building" in m for _, m in log)]
    assert len(joined) == 1
    started = [m for log in logs for _, m in log if m.startswith("Building the environment")]
    assert len(started) == 2  # one build, whose log both launches follow


# -- limits: each stopped with a message, nothing left in the cache ---------------------------


def test_a_post_build_that_loops_is_stopped_at_the_time_limit(site: Site) -> None:
    failed = counted("hubstack_build_duration_seconds_count", outcome="failure")
    name = site.repo({"postBuild": "#!/bin/sh\nwhile :; do :; done\n"}, executable=("postBuild",))
    message = site.refused(name, time="20s")
    assert "took longer than the limit of 20s" in message
    assert counted("hubstack_build_duration_seconds_count", outcome="failure") == failed + 1


def test_a_post_build_that_fills_the_disk_is_stopped_at_the_size_limit(site: Site) -> None:
    fill = "#!/bin/sh\nset -e\ndd if=/dev/zero of=big bs=1M count=2000 status=none\n"
    name = site.repo({"postBuild": fill}, executable=("postBuild",))
    message = site.refused(name, size="500M")
    assert "size limit of 500M" in message


def test_a_post_build_that_forks_without_end_is_stopped(site: Site) -> None:
    bomb = "#!/bin/bash\nbomb() { bomb | bomb & }; bomb\nwait\n"
    name = site.repo({"postBuild": bomb}, executable=("postBuild",))
    message = site.refused(name, time="30s", processes=64)
    assert "more than 64 processes" in message
    running = subprocess.run(
        ["pgrep", "--runstates", "RSDT", "-u", site.account], check=False, capture_output=True
    )
    assert running.returncode == 1, running.stdout


def test_a_post_build_that_uses_too_much_memory_is_stopped(site: Site) -> None:
    hog = "#!/bin/sh\npython3 -c 'x = bytearray(2 * 1024**3); print(len(x))'\n"
    name = site.repo({"postBuild": hog}, executable=("postBuild",))
    message = site.refused(name, memory="600M")
    assert "ran out of memory (limit 600M)" in message


# -- the champion's command line ---------------------------------------------------------------


def hubstack(site: Site, *args: str) -> subprocess.CompletedProcess[str]:
    config = site.root / "hubstack.yaml"
    config.write_text(json.dumps(site.config().model_dump(mode="json")))
    return subprocess.run(
        [sys.executable, "-m", "hubstack.cli", "env", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_env_list_rebuild_and_prune(site: Site) -> None:
    prepared, _ = site.prepare(site.repo({"requirements.txt": f"{TABULATE}\n# cli\n"}))
    key = prepared.env.key

    listed = hubstack(site, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    entry = next(e for e in json.loads(listed.stdout) if e["key"] == key)
    assert entry["commit"] == prepared.commit and entry["size"] > 10_000_000
    table = hubstack(site, "list")
    assert key[:12] in table.stdout and "REPOSITORY" in table.stdout

    rebuilt = hubstack(site, "rebuild", key[:12])
    assert rebuilt.returncode == 0, rebuilt.stdout + rebuilt.stderr
    assert "Installing requirements.txt" in rebuilt.stdout
    again = EnvCache.of(site.config()).get(key)
    assert again is not None and again.built_at > prepared.env.built_at
    assert hubstack(site, "rebuild", "nothing-like-this").returncode == 1
    # The rebuild kept its wheels (checked against PyPI's hashes) for later builds.
    wheels = site.root / "binder/packages/wheels"
    assert (wheels / "tabulate-0.9.0-py3-none-any.whl").is_file()
    assert "package cache: " in hubstack(site, "list").stdout

    kept = hubstack(site, "prune", "--unused-for", "30d")
    assert kept.returncode == 0 and key[:12] not in kept.stdout
    month_ago = time.time() - 31 * 86400
    os.utime(site.root / "binder/used" / key, (month_ago, month_ago))
    for wheel in wheels.iterdir():
        os.utime(wheel, (month_ago, month_ago))
    shown = hubstack(site, "prune", "--unused-for", "30d", "--dry-run")
    assert f"would remove {key[:12]}" in shown.stdout
    assert f"would remove {len(list(wheels.iterdir()))} wheel(s)" in shown.stdout
    assert EnvCache.of(site.config()).get(key) is not None
    pruned = hubstack(site, "prune", "--unused-for", "30d")
    assert f"removed {key[:12]}" in pruned.stdout
    assert list(wheels.iterdir()) == [] and "package cache: 0 wheels" in pruned.stdout
    assert EnvCache.of(site.config()).get(key) is None
    assert not (site.root / "binder/envs" / key).exists()


def test_a_repository_of_known_packages_takes_them_from_the_package_store(site: Site) -> None:
    """A build's kept wheels are unpacked and compiled into the store; a new repository
    asking for them references them instead of installing them, and prune keeps the store
    entries environments use."""
    first, _ = site.prepare(site.repo({"requirements.txt": f"{TABULATE}\n# store\n"}), True)
    cache = EnvCache.of(site.config())
    [entry] = [e for e in cache.stores() if "tabulate==0.9.0" in e.packages]
    assert entry.layer == first.env.layer
    stored = entry.path / "packages" / entry.packages["tabulate==0.9.0"]
    assert list(stored.glob("tabulate/__pycache__/__init__.cpython-*.pyc"))

    files = {"requirements.txt": f"{TABULATE}\n{TERMCOLOR}\n# known\n"}
    second, events = site.prepare(site.repo(files), True)
    log = [message for _, message in events]
    assert any(line.endswith("packages from the package store") for line in log), log[-20:]
    [site_packages] = second.env.prefix.glob("lib/python*/site-packages")
    assert not (site_packages / "tabulate").exists() and (site_packages / "termcolor").is_dir()
    assert python(second, "import tabulate; print(tabulate.__file__)").startswith(f"{stored}/")
    assert version(second, "tabulate") == "0.9.0" and has(second, "termcolor")
    listed = python(
        second,
        "import subprocess, sys; print(subprocess.run([sys.executable, "
        "'-m', 'pip', 'list'], capture_output=True, text=True).stdout)",
    )
    assert "tabulate" in listed and "termcolor" in listed
    script = (second.env.prefix / "bin/tabulate").read_text()
    assert script.startswith(f"#!{second.env.prefix}/bin/python")
    assert entry.key in second.env.stores
    pip = python(second, "import pip; print(pip.__file__)")  # pip as well, like --seed
    assert any(pip.startswith(f"{e.path}/packages/") for e in cache.stores()), pip

    # The second build's termcolor went into an entry of its own, which nothing uses.
    [unused] = [e for e in cache.stores() if "termcolor==2.4.0" in e.packages]
    month_ago = time.time() - 31 * 86400
    for key in (entry.key, unused.key):
        os.utime(site.root / "binder/used" / key, (month_ago, month_ago))
    cache.prune(30 * 86400)
    kept = [e.key for e in cache.stores()]
    assert entry.key in kept and unused.key not in kept
    assert python(second, "import tabulate; print('ok')") == "ok"


# -- declared environments ------------------------------------------------------------------


def test_a_declared_spec_builds_into_the_cache_the_same_files_in_a_repository_use(
    site: Site,
) -> None:
    """``hubstack env build`` with its progress, of the files of the first test's repository
    (built there in a whole run, so found here; built here when this test runs alone)."""
    declared = {"id": "python", "display": "Python", "spec": {"requirements": TABULATE}}
    config = {**site.config().model_dump(mode="json"), "environments": [declared]}
    path = site.root / "declared.yaml"
    path.write_text(json.dumps(config))
    cli = [sys.executable, "-m", "hubstack.cli", "env", "build", "--config", str(path)]
    built = subprocess.run([*cli, "python"], capture_output=True, text=True, timeout=900)
    assert built.returncode == 0, built.stdout + built.stderr
    lines = built.stdout.splitlines()
    assert lines[0] == "==> environment python (1 of 1)"
    assert any(line.startswith("  python | ") for line in lines)
    [key] = current_keys(Config.model_validate(config))
    assert lines[-1].startswith(f"python: ready, {key[:12]}")
    env = EnvCache.of(site.config()).get(key)
    assert env is not None
    assert python_as_nobody(env.prefix / "bin/python", "import tabulate; print('ok')") == "ok"
    prepared, events = site.prepare(site.repo({"requirements.txt": f"{TABULATE}\n"}))
    assert prepared.env.key == key and "building" not in phases(events)
    unknown = subprocess.run([*cli, "nope"], capture_output=True, text=True, timeout=120)
    assert unknown.returncode == 1 and "declared: python" in unknown.stderr
