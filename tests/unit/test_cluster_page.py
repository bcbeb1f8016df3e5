"""The cluster page's template: node rows are escaped (a failure's reason may quote a
provider's or a command's output)."""

from __future__ import annotations

from pathlib import Path

import jinja2
from jupyterhub._data import DATA_FILES_PATH

from hubstack.cluster.apply import NodeRow
from hubstack.hub.settings import TEMPLATES


def test_node_rows_are_escaped() -> None:
    jupyterhub = str(Path(DATA_FILES_PATH) / "templates")
    loader = jinja2.ChoiceLoader(
        [
            jinja2.FileSystemLoader([str(TEMPLATES), jupyterhub]),
            jinja2.PrefixLoader({"templates": jinja2.FileSystemLoader(jupyterhub)}),
        ]
    )
    # JupyterHub renders its pages with autoescape on, as here.
    env = jinja2.Environment(loader=loader, autoescape=True)
    row = NodeRow("el1", "el", "cloud", "failed (could not create: <img src=x onerror=y>)", "")
    html = env.get_template("cluster.html").render(
        nodes=[row], static_url=lambda *args, **kwargs: "", base_url="/hub/", prefix="/"
    )
    assert "failed (could not create: &lt;img src=x onerror=y&gt;)" in html
    assert "<img src=x" not in html
