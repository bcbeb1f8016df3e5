"""From what a user sends to a validated launch: profiles, server-name policy, options form,
Slurm job fields and job scripts.

Pure functions over the config and plain data, so every refusal a user can meet is unit
tested here; the spawner only wires them to JupyterHub.
"""

from hubstack.launch.form import machine_summary, render_options_form
from hubstack.launch.policy import NAME_RE, PolicyViolation, check_new_server, check_server_name
from hubstack.launch.profiles import (
    FIELDS,
    LaunchRequest,
    allowed_fields,
    options_from_form,
    resolve,
)
from hubstack.launch.repo import (
    RepoSource,
    check_ref,
    repo_source,
    server_name,
    server_path,
    share_links,
    source_from_spec,
)
from hubstack.launch.slurm_fields import SlurmRequest
from hubstack.untrusted import InvalidLaunch, quote_untrusted

__all__ = [
    "FIELDS",
    "NAME_RE",
    "InvalidLaunch",
    "LaunchRequest",
    "PolicyViolation",
    "RepoSource",
    "SlurmRequest",
    "allowed_fields",
    "check_new_server",
    "check_ref",
    "check_server_name",
    "machine_summary",
    "options_from_form",
    "quote_untrusted",
    "render_options_form",
    "repo_source",
    "resolve",
    "server_name",
    "server_path",
    "share_links",
    "source_from_spec",
]
