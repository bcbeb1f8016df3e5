"""Interfaces besides JupyterLab: the config key, the choice a launch resolves, the form's
radio group, the server's extensions and hubstack check's warnings, as plain data."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from hubstack.config import ConfigError
from hubstack.config.interfaces import interface_warnings, missing_software
from hubstack.config.load import validate
from hubstack.config.models import Config
from hubstack.launch import InvalidLaunch, options_from_form, render_options_form, resolve
from hubstack.launch.plan import extension_options

MACHINES = [{"id": "small", "display": "Small", "cpu": 1, "memory": "2G"}]
PYTHON = {"id": "python", "display": "Python 3", "prefix": "/e/py"}
TOOLS = {
    "id": "tools",
    "display": "Tools",
    "prefix": "/e/py",
    "interfaces": ["vscode", "lab", "voila"],
}
STATS = {"id": "stats", "display": "Statistics", "prefix": "/e/r", "interfaces": ["lab", "rstudio"]}


def make_config(*environments: dict[str, Any], binder: bool = True) -> Config:
    return validate(
        {
            "machines": MACHINES,
            "environments": list(environments or (PYTHON, TOOLS, STATS)),
            "binder": {"enabled": binder},
        }
    )


def problems(environment: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        validate({"environments": [environment]})
    return info.value.problems


def test_an_environment_offers_jupyterlab_unless_it_says_otherwise() -> None:
    assert make_config(PYTHON).environments[0].interfaces == ["lab"]


def test_an_unknown_interface_names_the_key_the_value_and_the_choices() -> None:
    assert problems({**PYTHON, "interfaces": ["lab", "emacs"]}) == [
        "environments[0].interfaces[1]: Input should be 'lab', 'vscode', 'voila' or 'rstudio' "
        "(got 'emacs')"
    ]


@pytest.mark.parametrize(
    ("interfaces", "says"),
    [(["lab", "lab"], "'lab' is listed twice"), ([], "at least 1 item")],
)
def test_interfaces_are_listed_once_and_at_least_one(interfaces: list[str], says: str) -> None:
    [problem] = problems({**PYTHON, "interfaces": interfaces})
    assert problem.startswith("environments[0].interfaces: ") and says in problem


@pytest.mark.parametrize(
    ("options", "interface", "url"),
    [
        ({"environment": "python"}, "lab", "/lab"),
        ({"environment": "tools"}, "vscode", "/vscode/"),  # the environment's first
        ({"environment": "tools", "interface": "voila"}, "voila", "/voila/"),
        ({"environment": "tools", "interface": "lab"}, "lab", "/lab"),
        ({"environment": "stats", "interface": "rstudio"}, "rstudio", "/rstudio/"),
        ({"environment": "repository", "repo": "https://github.com/o/r"}, "lab", "/lab"),
    ],
)
def test_a_launch_opens_in_the_interface_chosen_or_the_environments_first(
    options: dict[str, str], interface: str, url: str
) -> None:
    request = resolve(make_config(), options)
    assert (request.interface, request.url) == (interface, url)
    assert resolve(make_config(), request.as_user_options()) == request


def test_the_lab_interface_opens_the_environments_default_url() -> None:
    config = make_config({**PYTHON, "default_url": "/lab/tree/README.md"})
    assert resolve(config, {}).url == "/lab/tree/README.md"


def test_the_interface_is_stored_only_when_it_is_not_the_default() -> None:
    config = make_config()
    assert "interface" not in resolve(config, {"environment": "tools"}).as_user_options()
    stored = resolve(config, {"environment": "tools", "interface": "lab"}).as_user_options()
    assert stored["interface"] == "lab"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"environment": "python", "interface": "vscode"},
            "The environment Python 3 does not offer the interface 'vscode'; it offers: "
            "JupyterLab (lab).",
        ),
        (
            {"environment": "stats", "interface": "<script>"},
            "The environment Statistics does not offer the interface '<script>'; it offers: "
            "JupyterLab (lab), RStudio (rstudio).",
        ),
        (
            {"environment": "repository", "repo": "https://github.com/o/r", "interface": "voila"},
            "does not offer the interface 'voila'; it offers: JupyterLab (lab).",
        ),
        (
            {"environment": "tools", "interface": ["lab"]},
            "The interface must be text, one of: VS Code (vscode), JupyterLab (lab), "
            "Voilà (voila); got a list.",
        ),
    ],
)
def test_an_interface_the_environment_does_not_offer_is_refused(
    options: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidLaunch) as info:
        resolve(make_config(), options)
    assert message in info.value.message


def test_the_form_posts_the_interface() -> None:
    assert options_from_form({"interface": ["voila"]}) == {"interface": "voila"}


class Radios(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict[str, str | None]] = []
        self.inputs: list[dict[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if "hs-interface" in (found.get("class") or "").split():
            self.rows.append(found)
        if tag == "input" and found.get("name") == "interface":
            self.inputs.append(found)


def interface_inputs(html: str) -> Radios:
    parser = Radios()
    parser.feed(html)
    return parser


def test_a_form_of_jupyterlab_only_environments_has_no_interface_choice() -> None:
    assert interface_inputs(render_options_form(make_config(PYTHON))).inputs == []


def test_the_form_shows_the_chosen_environments_interfaces_and_names_each_ones_environments() -> (
    None
):
    page = interface_inputs(render_options_form(make_config(), {"environment": "tools"}))
    offered_by = {row["data-environments"] for row in page.rows}
    assert offered_by == {"python tools stats repository", "tools", "stats"}
    shown = [i["value"] for i in page.inputs if "disabled" not in i]
    assert shown == ["lab", "vscode", "voila"]  # hubstack's order; unshown ones are not sent
    assert [i["value"] for i in page.inputs if "checked" in i] == ["vscode"]
    hidden = [row for row in page.rows if "hidden" in row]
    assert [row["data-environments"] for row in hidden] == ["stats"]


def test_the_form_keeps_the_previous_interface_if_the_environment_offers_it() -> None:
    current = {"environment": "tools", "interface": "voila"}
    page = interface_inputs(render_options_form(make_config(), current))
    assert [i["value"] for i in page.inputs if "checked" in i] == ["voila"]
    stale = {"environment": "python", "interface": "voila"}
    page = interface_inputs(render_options_form(make_config(), stale))
    assert [i["value"] for i in page.inputs if "checked" in i] == ["lab"]


@pytest.mark.parametrize(
    ("environment", "options"),
    [
        (PYTHON, []),
        (
            TOOLS,
            [
                "--ServerApp.jpserver_extensions=jupyter_server_proxy=True",
                "--ServerApp.jpserver_extensions=voila.server_extension=True",
            ],
        ),
        (STATS, ["--ServerApp.jpserver_extensions=jupyter_server_proxy=True"]),
    ],
)
def test_a_server_enables_the_extensions_of_its_environments_interfaces(
    environment: dict[str, Any], options: list[str]
) -> None:
    assert extension_options(make_config(environment).environments[0]) == options


def make_prefix(root: Path, *files: str) -> Path:
    for name in files:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).touch()
    return root


def test_missing_software_is_named_per_interface(tmp_path: Path) -> None:
    prefix = make_prefix(
        tmp_path,
        "bin/jupyter-lab",
        "bin/voila",
        "lib/python3.11/site-packages/jupyter_vscode_proxy/__init__.py",
    )
    assert missing_software("lab", prefix) == []
    assert missing_software("voila", prefix) == []
    assert missing_software("vscode", prefix) == ["code-server"]
    assert "jupyter-rsession-proxy" in missing_software("rstudio", prefix)


def test_check_warns_naming_the_key_the_interface_and_what_is_missing(tmp_path: Path) -> None:
    prefix = make_prefix(tmp_path, "bin/jupyter-lab", "bin/voila")
    config = make_config(
        {**PYTHON, "prefix": str(prefix)},
        {**TOOLS, "prefix": str(prefix)},
    )
    assert interface_warnings(config) == [
        f"environments[1].interfaces: 'vscode' needs jupyter-vscode-proxy, code-server, not "
        f"found in {prefix} or on this machine; install it there or remove 'vscode' from "
        "environment 'tools'."
    ]
