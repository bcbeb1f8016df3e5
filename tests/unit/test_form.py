"""The spawn options form: every configured choice, the right one checked, all text escaped."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from typing import Any

import pytest

from hubstack.config.load import validate
from hubstack.config.models import Config
from hubstack.launch import machine_summary, render_options_form

MACHINES = [
    {"id": "small", "display": "Small", "cpu": 1, "memory": "2G", "description": "For notebooks"},
    {"id": "medium", "display": "Medium", "cpu": 2, "memory": "4G"},
    {"id": "tiny", "display": "Tiny", "cpu": 0.5, "memory": "512M"},
    {"id": "odd", "display": "Odd", "cpu": 1.5, "memory": "1536M"},
]
ENVIRONMENTS = [
    {"id": "python", "display": "Python 3", "description": "numpy", "prefix": "/e/py"},
    {"id": "r", "display": "R", "description": "tidyverse", "prefix": "/e/r"},
]


def make_config(machines: list[dict[str, Any]] = MACHINES) -> Config:
    return validate({"machines": machines, "environments": ENVIRONMENTS})


class Inputs(HTMLParser):
    """Collect the form's inputs and labels, as a browser would see them."""

    def __init__(self) -> None:
        super().__init__()
        self.inputs: list[dict[str, str | None]] = []
        self.label_for: list[str | None] = []
        self.tags: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        if tag == "input":
            self.inputs.append(dict(attrs))
        elif tag == "label":
            self.label_for.append(dict(attrs).get("for"))


def parse(html: str) -> Inputs:
    parser = Inputs()
    parser.feed(html)
    parser.close()
    return parser


def checked(html: str) -> dict[str | None, str | None]:
    return {i["name"]: i["value"] for i in parse(html).inputs if "checked" in i}


def test_every_choice_is_a_radio_with_a_label() -> None:
    page = parse(render_options_form(make_config()))
    radios = [(i["name"], i["value"]) for i in page.inputs if i["type"] == "radio"]
    assert radios == [("machine", m["id"]) for m in MACHINES] + [
        ("environment", e["id"]) for e in ENVIRONMENTS
    ] + [("environment", "repository")]
    ids = [i["id"] for i in page.inputs]
    assert len(set(ids)) == len(ids)
    assert all(i and i.startswith("hs-") for i in ids)
    assert sorted(page.label_for, key=str) == sorted(ids, key=str)


def test_fragment_has_no_form_or_submit_button() -> None:
    page = parse(render_options_form(make_config()))
    assert not page.tags & {"form", "button"}
    assert {i["type"] for i in page.inputs} == {"radio", "url", "text"}


def test_repository_fields_are_offered_only_with_binder() -> None:
    names = {i["name"] for i in parse(render_options_form(make_config())).inputs}
    assert {"repo", "ref"} <= names
    config = make_config()
    config.binder.enabled = False
    names = {i["name"] for i in parse(render_options_form(config)).inputs}
    assert not {"repo", "ref"} & names


def test_texts_are_shown() -> None:
    html = render_options_form(make_config())
    for text in ["Machine type", "Environment", "Small", "For notebooks", "Python 3", "tidyverse"]:
        assert text in html


@pytest.mark.parametrize(
    ("index", "summary"),
    [
        (0, "1 CPU · 2 GB RAM"),
        (1, "2 CPUs · 4 GB RAM"),
        (2, "0.5 CPU · 512 MB RAM"),
        (3, "1.5 CPUs · 1.5 GB RAM"),
    ],
)
def test_machine_summary(index: int, summary: str) -> None:
    config = make_config()
    assert machine_summary(config.machines[index]) == summary
    assert summary in render_options_form(config)


def test_first_choices_are_checked_by_default() -> None:
    assert checked(render_options_form(make_config())) == {
        "machine": "small",
        "environment": "python",
    }


def test_current_choices_are_checked() -> None:
    html = render_options_form(make_config(), {"machine": "tiny", "environment": "r"})
    assert checked(html) == {"machine": "tiny", "environment": "r"}


@pytest.mark.parametrize(
    "current",
    [{"machine": "removed", "environment": "gone"}, {"machine": ["tiny"]}, {}, None],
)
def test_stale_current_choices_fall_back_to_the_first(current: Any) -> None:
    assert checked(render_options_form(make_config(), current)) == {
        "machine": "small",
        "environment": "python",
    }


def test_one_stale_choice_keeps_the_other() -> None:
    html = render_options_form(make_config(), {"machine": "removed", "environment": "r"})
    assert checked(html) == {"machine": "small", "environment": "r"}


def test_config_text_is_escaped() -> None:
    machines = [
        {
            "id": "small",
            "display": "<script>alert(1)</script>",
            "cpu": 1,
            "memory": "1G",
            "description": '<img src=x onerror="alert(2)">',
        }
    ]
    html = render_options_form(make_config(machines))
    assert "<script>alert" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<img" not in html
    assert "&lt;img src=x onerror=&#34;alert(2)&#34;&gt;" in html


def test_notices_are_shown_escaped_in_a_warning() -> None:
    html = render_options_form(make_config(), notices=["Machine <b>x</b> was removed.", "Two"])
    assert re.search(r'class="alert alert-warning[^"]*"', html)
    assert "Machine &lt;b&gt;x&lt;/b&gt; was removed." in html
    assert "<b>" not in html
    assert "Two" in html
    assert html.index("alert-warning") < html.index("Machine type")


def test_no_notices_no_alert() -> None:
    assert "alert" not in render_options_form(make_config())


def test_styles_are_scoped() -> None:
    html = render_options_form(make_config())
    style = html[html.index("<style>") : html.index("</style>")]
    selectors = [s.strip() for s in re.findall(r"([^{}]+)\{", style.removeprefix("<style>"))]
    assert selectors
    assert all(s.startswith(".hs-options ") for s in selectors)
