"""The operator's limits on named servers: which names are allowed and how many.

The name rule is JupyterHub 6's own (a "safe slug"), so every name accepted here is
also accepted by JupyterHub and usable unchanged in URLs, unit and directory names;
checking it here lets the user see *what* is allowed instead of a bare 400.
"""

from __future__ import annotations

import re
from collections.abc import Collection

from hubstack.config.models import Config, NamedServers
from hubstack.errors import Explained
from hubstack.untrusted import quote_untrusted

# Lowercase ASCII letters and digits, single hyphens between them, starting with a letter.
NAME_RE = re.compile(r"\A[a-z](?:-?[a-z0-9])*\Z")
# The default server's volume and unit are labelled "default", so no named server may be.
RESERVED_NAMES = frozenset({"default"})


class PolicyViolation(Explained, ValueError):
    """A request broke the hub's policy; ``message`` is a sentence to show the user."""


def check_server_name(name: str, policy: NamedServers) -> None:
    """Refuse a name that breaks the rule or is longer than ``policy.name_max_length``."""
    if len(name) > policy.name_max_length or not NAME_RE.match(name):
        raise PolicyViolation(
            f"Server name {quote_untrusted(name)} is not allowed: use lowercase letters, "
            "digits and single hyphens, starting with a letter and ending with a letter "
            f"or digit, at most {policy.name_max_length} characters."
        )
    if name in RESERVED_NAMES:
        raise PolicyViolation(
            f"Server name {quote_untrusted(name)} is reserved for your default server; "
            "choose another name."
        )


def check_new_server(name: str, existing_named: Collection[str], policy: NamedServers) -> None:
    """Allow starting server ``name`` unless it would be a new one the policy forbids.

    An existing server is always allowed (it was accepted when created, and renaming
    rules later must not lock users out of it). The default server ``""`` in
    ``existing_named`` is ignored when counting.
    """
    if name in existing_named:
        return
    if policy.max == 0:
        raise PolicyViolation("Named servers are disabled on this hub.")
    check_server_name(name, policy)
    count = len(set(existing_named) - {""})
    if count >= policy.max:
        # The maximum may have been lowered below what a user already has.
        noun = "named server" if count == 1 else "named servers"
        limit = "the maximum" if count == policy.max else f"the maximum is {policy.max}"
        to_delete = count - policy.max + 1
        delete = "one" if to_delete == 1 else str(to_delete)
        raise PolicyViolation(
            f"You already have {count} {noun} ({limit}); delete {delete} to create another."
        )


def repository_launch_timeout(config: Config) -> int:
    """Longest a launch from a repository may take, in seconds: fetching and building (each
    within the build time limit), a Slurm job's wait in the queue, and the server's start."""
    queue = config.backend.slurm.start_timeout if config.backend.type == "slurm" else 0
    return 2 * config.binder.limits.time + queue + 120
