"""The Grafana dashboard in the repository asks only for metrics the hub serves."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jupyterhub.metrics  # noqa: F401  (registers JupyterHub's own metrics)
from prometheus_client import REGISTRY

from hubstack.hub import metrics, usage  # noqa: F401  (usage registers the budget metrics)

DASHBOARD = Path(__file__).parents[2] / "monitoring/grafana-dashboard.json"


def served_names() -> set[str]:
    families = [*REGISTRY.collect(), *metrics.RunningServers(lambda: []).collect()]
    names = {family.name for family in families}
    for family in families:
        if family.type == "histogram":
            names |= {f"{family.name}_bucket", f"{family.name}_count", f"{family.name}_sum"}
        if family.type == "counter":
            names.add(f"{family.name}_total")
    return names


def test_every_metric_of_the_dashboard_is_served() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    asked = {m for e in exprs for m in re.findall(r"\b(?:hubstack|jupyterhub)_[a-z_]+", e)}
    assert asked, exprs
    assert asked <= served_names(), asked - served_names()
    hubstack = {name for name in served_names() if name.startswith("hubstack_")}
    # Every hubstack metric is on the dashboard, except the monitor's own heartbeat.
    shown = {re.sub(r"_(bucket|count|sum|total)$", "", name) for name in asked}
    missing = {re.sub(r"_(bucket|count|sum|total)$", "", n) for n in hubstack} - shown
    assert missing == {"hubstack_monitor_checks"}
