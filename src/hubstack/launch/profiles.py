"""Turn what a user sends (spawn form or REST ``user_options``) into a launch request.

Everything a user sends is untrusted: a request may only *choose* among the machine
types and environments the operator configured, and, on Slurm, set the job fields the
operator offers within their limits; any key or value that is not exactly that is refused
rather than ignored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from hubstack.config.interfaces import INTERFACES
from hubstack.config.models import REPOSITORY_ENVIRONMENT, Config, Environment, Machine
from hubstack.launch.access import NO_GROUPS, Access, offered_items, pick
from hubstack.launch.repo import COMMIT, RepoSource, repo_source
from hubstack.launch.slurm_fields import SlurmRequest, resolve_slurm, slurm_fields, slurm_label
from hubstack.untrusted import InvalidLaunch, json_kind, quote_untrusted

FIELDS = ("machine", "environment", "interface")
# With environment "repository": the repository, the ref asked for, and (set by the hub
# once resolved, so a restart of the server gets the same files) the commit.
REPO_FIELDS = ("repo", "ref", "commit")
XSRF_FIELD = "_xsrf"

LABELS = {
    "machine": "machine type",
    "environment": "environment",
    "interface": "interface",
    "repo": "repository",
    "ref": "branch, tag or commit",
    "commit": "commit",
}


@dataclass(frozen=True)
class LaunchRequest:
    """A validated choice of configured machine type and environment (and, on Slurm, job)."""

    machine: Machine
    environment: Environment
    slurm: SlurmRequest | None = None
    repo: RepoSource | None = None
    commit: str | None = None
    interface: str = "lab"

    @property
    def url(self) -> str:
        """Where the server opens: its interface's page (JupyterHub's ``default_url``)."""
        return INTERFACES[self.interface].url or self.environment.default_url

    def as_user_options(self) -> dict[str, str]:
        """What JupyterHub stores and shows back, resolvable again later: ids and the
        canonical values of the Slurm fields."""
        options = {"machine": self.machine.id, "environment": self.environment.id}
        if self.interface != self.environment.interfaces[0]:
            options["interface"] = self.interface  # else omitted, as the form may omit it
        if self.repo is not None:
            options.update(repo=self.repo.url, ref=self.repo.ref)
        if self.commit is not None:
            options["commit"] = self.commit
        if self.slurm is not None:
            options.update(self.slurm.as_user_options())
        return options


def interface_names(environment: Environment) -> str:
    """``JupyterLab (lab), VS Code (vscode)``: what a refusal lists as allowed."""
    return ", ".join(f"{INTERFACES[i].display} ({i})" for i in environment.interfaces)


def resolve_interface(environment: Environment, user_options: Mapping[str, object]) -> str:
    """The interface asked for, if ``environment`` offers it; omitted: its first."""
    interface = user_options.get("interface", environment.interfaces[0])
    if not isinstance(interface, str):
        raise InvalidLaunch(
            f"The interface must be text, one of: {interface_names(environment)}; "
            f"got {json_kind(interface)}."
        )
    if interface not in environment.interfaces:
        raise InvalidLaunch(
            f"The environment {environment.display} does not offer the interface "
            f"{quote_untrusted(interface)}; it offers: {interface_names(environment)}."
        )
    return interface


def repository_environment(config: Config, source: RepoSource | None = None) -> Environment:
    """The environment choice "from a repository"; its prefix is known once it is built."""
    return Environment(
        id=REPOSITORY_ENVIRONMENT,
        display=f"{source.name} (from a repository)" if source else "Other… (from a repository)",
        description=source.url if source else "An environment built from a git repository",
        prefix=config.binder.root,
    )


def allowed_fields(config: Config) -> tuple[str, ...]:
    """The user_options keys this config accepts: its spawn form's fields."""
    repo = REPO_FIELDS if config.binder.enabled else ()
    return FIELDS + repo + slurm_fields(config)


def _label(config: Config | None, field: str) -> str:
    return LABELS[field] if config is None or field in LABELS else slurm_label(config, field)


def _unknown_option(key: object, allowed: Sequence[str]) -> InvalidLaunch:
    return InvalidLaunch(
        f"Unknown option {quote_untrusted(str(key))}. Allowed options: {', '.join(allowed)}."
    )


def offered_environments(config: Config) -> list[Environment]:
    """The environments of the form: the configured ones, then "from a repository"."""
    environments = list(config.environments)
    if config.binder.enabled:
        environments.append(repository_environment(config))
    return environments


def resolve(
    config: Config, user_options: Mapping[str, object] | None, access: Access = NO_GROUPS
) -> LaunchRequest:
    """Validate ``user_options`` against the config for the person ``access`` describes;
    omitted fields take the first choice open to them (the configured default if it is).

    Raises :class:`InvalidLaunch` for anything else: unknown keys (e.g. ``cpu``, or a Slurm
    field the config does not offer), values of the wrong type, ids the config does not
    define or that are for groups the person is not in, and numbers outside the
    configured limits.
    """
    allowed = allowed_fields(config)
    if not user_options:
        user_options = {}
    if not isinstance(user_options, Mapping):
        raise InvalidLaunch(
            f"Launch options must be an object with the keys: {', '.join(allowed)}; "
            f"got {json_kind(user_options)}."
        )
    for key in user_options:
        if key not in allowed:
            raise _unknown_option(key, allowed)
    machines = {m.id: m for m in config.machines}
    environments = {e.id: e for e in offered_environments(config)}
    machine_id = pick(
        LABELS["machine"], user_options, "machine", offered_items(config.machines), access
    )
    env_id = pick(
        LABELS["environment"],
        user_options,
        "environment",
        offered_items(environments.values()),
        access,
    )
    machine = machines[machine_id]
    slurm = None
    if config.backend.type == "slurm":
        slurm = resolve_slurm(config, machine, user_options, access)
    if env_id != REPOSITORY_ENVIRONMENT:
        for key in REPO_FIELDS:
            if key in user_options:
                raise InvalidLaunch(
                    f"The {LABELS[key]} is only used with the environment "
                    f"{REPOSITORY_ENVIRONMENT!r} (from a repository)."
                )
        environment = environments[env_id]
        return LaunchRequest(
            machine=machine,
            environment=environment,
            slurm=slurm,
            interface=resolve_interface(environment, user_options),
        )
    if "repo" not in user_options:
        raise InvalidLaunch("Give the URL of the git repository to build the environment from.")
    source = repo_source(user_options["repo"], user_options.get("ref"), config.binder)
    commit = user_options.get("commit")
    if commit is not None and not (isinstance(commit, str) and COMMIT.fullmatch(commit)):
        raise InvalidLaunch("The commit must be a full 40-character commit id (hexadecimal).")
    environment = repository_environment(config, source)
    return LaunchRequest(
        machine=machine,
        environment=environment,
        slurm=slurm,
        repo=source,
        commit=commit,
        interface=resolve_interface(environment, user_options),
    )


def _form_text(label: str, value: object) -> str:
    """Decode one posted value; JupyterHub 6 passes str, older code paths bytes."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidLaunch(f"The {label} sent is not valid UTF-8 text.") from None
    if isinstance(value, str):
        return value
    raise InvalidLaunch(f"The {label} must be sent as text, not {json_kind(value)}.")


def options_from_form(
    formdata: Mapping[str, Sequence[bytes | str]], config: Config | None = None
) -> dict[str, str]:
    """Reduce JupyterHub's ``{name: [values...]}`` form data to ``{field: value}``.

    Strict, because our form only ever posts our own fields (plus JupyterHub's
    ``_xsrf``): an unknown field or a field sent twice means a hand-crafted request.
    The fields are those of ``config``'s form (without a config: machine and
    environment only). The values are not checked here; :func:`resolve` does that.
    """
    allowed = FIELDS if config is None else allowed_fields(config)
    options: dict[str, str] = {}
    for key, raw in formdata.items():
        if key == XSRF_FIELD:
            continue
        if key not in allowed:
            raise _unknown_option(key, allowed)
        label = _label(config, key)
        values = [raw] if isinstance(raw, str | bytes) else list(raw)
        if len(values) != 1:
            raise InvalidLaunch(f"Choose exactly one {label}; the form sent {len(values)} values.")
        options[key] = _form_text(label, values[0])
    # The form always posts its repository fields; left empty, they mean nothing unless
    # the environment is "from a repository" (where resolve() says what is missing).
    if options.get("environment") != REPOSITORY_ENVIRONMENT:
        for key in REPO_FIELDS:
            if key in options and not options[key].strip():
                del options[key]
    return options
