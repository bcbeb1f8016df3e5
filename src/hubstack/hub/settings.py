"""Turn a validated hubstack config into JupyterHub's traitlets config.

This is the only module that knows JupyterHub's configuration names.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any

from traitlets.config import Config as TraitletsConfig

from hubstack.config import Config
from hubstack.config.models import DEFAULT_PREFIX
from hubstack.envs.builder import PASSED_ENV
from hubstack.hub import (
    audit_log,
    budget_admin,
    cluster_page,
    invitations,
    storage,
    storage_jobs,
    usage_api,
    usage_page,
)
from hubstack.hub.address import ROUTE, ServerAddressHandler
from hubstack.hub.database import db_url
from hubstack.hub.groups import configure_groups
from hubstack.hub.home import home_template_var
from hubstack.hub.login import configure_login
from hubstack.hub.logs import JUPYTERHUB_LOGGING
from hubstack.hub.named_servers import named_server_policy
from hubstack.system import tool

TEMPLATES = Path(__file__).with_name("templates")
CULLER_SCOPES = ["list:users", "read:users:activity", "read:servers", "delete:servers"]
# The binder service starts and stops users' repository servers and hands Binder API
# clients a token for the one server launched.
BINDER_SCOPES = ["read:users", "admin:servers", "tokens"]
BINDER_SERVICE = "binder"


def proxy_command() -> str:
    """configurable-http-proxy as installed by scripts/setup.sh, else where root runs system
    tools from (dev mode: from PATH)."""
    installed = DEFAULT_PREFIX / "node/node_modules/.bin/configurable-http-proxy"
    if installed.exists():
        return str(installed)
    if os.geteuid() == 0:
        return tool("configurable-http-proxy")
    return shutil.which("configurable-http-proxy") or "configurable-http-proxy"


def ends_with_hub(command: list[str]) -> list[str]:
    """``command`` run so that it gets SIGTERM when the hub process ends, ``kill -9``
    included: a service the hub left behind would keep the port its restart needs.

    JupyterHub starts services in their own session, so nothing else ends them.
    """
    return [tool("setpriv"), "--pdeathsig", "TERM", "--", *command]


def culler_service(config: Config) -> dict[str, Any]:
    """jupyterhub-idle-culler as a hub-managed service: stops (never deletes) idle servers."""
    timeout = config.policy.idle_timeout
    every = max(5, min(timeout // 2, 300))
    return {
        "name": "idle-culler",
        "command": ends_with_hub(
            [
                sys.executable,
                "-m",
                "jupyterhub_idle_culler",
                f"--timeout={timeout}",
                f"--cull-every={every}",
                "--remove-named-servers=False",
            ]
        ),
    }


def binder_service(config: Config) -> dict[str, Any]:
    """The launch page and BinderHub's build API, as a hub-managed service on the port
    after the hub's own (see ``jupyterhub_config``)."""
    return {
        "name": BINDER_SERVICE,
        "display": True,
        "url": f"http://127.0.0.1:{config.hub.port + 3}",
        "command": ends_with_hub([sys.executable, "-m", "hubstack.services.binder"]),
        # JupyterHub gives services a bare environment; rebuilds from the champions' page
        # need the site's index, proxy and CA settings, as the hub's own builds have them.
        "environment": {
            "HUBSTACK_CONFIG_JSON": config.model_dump_json(),
            **{name: os.environ[name] for name in PASSED_ENV if name in os.environ},
        },
        "oauth_no_confirm": True,
    }


def jupyterhub_config(config: Config, stop_servers: bool = False) -> TraitletsConfig:
    """The complete JupyterHub configuration for ``config``.

    Users' servers outlive the hub unless ``stop_servers``: a restart takes them back.
    """
    hub = config.hub
    c = TraitletsConfig()
    data = hub.data_dir

    c.JupyterHub.ip = hub.ip
    c.JupyterHub.port = hub.port
    c.JupyterHub.base_url = hub.base_url
    # Fixed neighbours of the public port (proxy API, hub, binder service), so several
    # hubs can share a machine.
    c.JupyterHub.hub_ip = "127.0.0.1"
    c.JupyterHub.hub_port = hub.port + 2
    c.JupyterHub.proxy_class = "hubstack.hub.proxy.HubstackProxy"
    c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{hub.port + 1}"
    c.ConfigurableHTTPProxy.command = [proxy_command()]
    c.ConfigurableHTTPProxy.pid_file = str(data / "proxy.pid")
    c.JupyterHub.db_url = db_url(config)
    c.JupyterHub.cookie_secret_file = str(data / "jupyterhub_cookie_secret")
    c.JupyterHub.pid_file = str(data / "jupyterhub.pid")
    c.JupyterHub.template_paths = [str(TEMPLATES)]
    # No token in a log line, also where tornado logs a failed request's URL.
    c.JupyterHub.logging_config = JUPYTERHUB_LOGGING
    # Logins and admin changes go to the audit log from JupyterHub's request log.
    c.JupyterHub.tornado_settings = {"log_function": audit_log.log_function(config)}

    configure_login(c, config)

    c.JupyterHub.spawner_class = "hubstack.hub.spawner.HubstackSpawner"
    c.HubstackSpawner.hubstack_config = config.model_dump_json()
    # Frequent polls are cheap here (a waitpid and a cgroup read) and surface OOM kills fast.
    # Each poll also meters the server for the usage ledger and its budgets.
    c.HubstackSpawner.poll_interval = min(10, config.usage.meter_interval)
    c.JupyterHub.allow_named_servers = True
    c.JupyterHub.named_server_limit_per_user = named_server_policy(config)
    # Servers (processes, jobs) outlive the hub: a restart takes them back with their routes.
    c.JupyterHub.cleanup_servers = stop_servers

    # Deprecated in JupyterHub but supported; a service could not see spawner state or
    # make accounts.
    c.JupyterHub.extra_handlers = invitations.handlers(config.groups)
    c.JupyterHub.extra_handlers += storage.handlers(
        data, config.policy.storage.group_token_lifetime
    )
    c.JupyterHub.extra_handlers += storage_jobs.handlers(data, config)
    c.JupyterHub.extra_handlers += usage_api.handlers(config)
    c.JupyterHub.extra_handlers += usage_page.handlers(config)
    c.JupyterHub.extra_handlers += budget_admin.handlers(config)
    c.JupyterHub.extra_handlers += cluster_page.handlers(config)
    if config.backend.type == "slurm":
        c.JupyterHub.extra_handlers.append((ROUTE, ServerAddressHandler))
        # Starting a job includes its time in the queue: waiting there is not a failure.
        c.HubstackSpawner.start_timeout = config.backend.slurm.start_timeout
    else:
        # The local backend bounds the wait for a previous run's storage (start_timeout),
        # the wait in line and the start itself; JupyterHub's own timeout, beyond all three,
        # is a backstop (a class would otherwise time out in line).
        local = config.backend.local
        c.HubstackSpawner.start_timeout = local.queue_timeout + 2 * local.start_timeout + 30

    c.JupyterHub.services = [culler_service(config)]
    c.JupyterHub.load_roles = [
        {"name": "idle-culler", "scopes": CULLER_SCOPES, "services": ["idle-culler"]}
    ]
    if config.binder.enabled:
        c.JupyterHub.services.append(binder_service(config))
        c.JupyterHub.load_roles += [
            {"name": "binder", "scopes": BINDER_SCOPES, "services": [BINDER_SERVICE]},
            # Every user may open the launch page (JupyterHub's default user role is "self").
            {"name": "user", "scopes": ["self", f"access:services!service={BINDER_SERVICE}"]},
        ]

    # The home page's cards (templates/home.html), computed only when that page asks.
    c.JupyterHub.template_vars = {
        "hubstack_home": home_template_var(config.model_dump_json()),
        # The nav bar links the cluster page (hub/cluster_page.py) where there is one.
        "hubstack_cluster": bool(config.cluster.node_groups),
    }
    configure_groups(c, config)

    if os.geteuid() != 0:
        c.JupyterHub.template_vars["announcement"] = (
            "Dev mode: this hub is not running as root, so every server runs "
            "as one account with no isolation, no CPU or memory limits and no volumes."
        )

    for class_name, traits in config.extra_jupyterhub_config.items():
        for trait, value in traits.items():
            c[class_name][trait] = value
    return c
