"""Slurm job fields from the form and the REST API: defaults, units, limits and refusals."""

from __future__ import annotations

from html.parser import HTMLParser
from typing import Any

import pytest

from hubstack.config.load import validate
from hubstack.config.models import Config
from hubstack.launch import (
    FIELDS,
    InvalidLaunch,
    SlurmRequest,
    allowed_fields,
    options_from_form,
    quote_untrusted,
    render_options_form,
    resolve,
)
from hubstack.launch.slurm_fields import parse_walltime, slurm_time

GIB = 2**30
MIB = 2**20
MACHINES = [
    {"id": "small", "display": "Small", "cpu": 1, "memory": "2G"},
    {"id": "half", "display": "Half", "cpu": 0.5, "memory": "1536M"},
    {"id": "odd", "display": "Odd", "cpu": 1.5, "memory": "3G"},
    {"id": "big", "display": "Big", "cpu": 4, "memory": "8G"},
]
ENVIRONMENTS = [{"id": "python", "display": "Python 3", "prefix": "/opt/envs/python"}]
FIELDS_OFFERED = {
    "partition": {"choices": ["debug", "long"], "default": "debug"},
    "account": {"choices": ["research", "teaching"]},
    "walltime": {"default": "1h", "min": "1m", "max": "1d"},
    "cores": {"min": 1, "max": 8},
    "memory": {"min": "256M", "max": "16G"},
    "gpus": {"default": 0, "min": 0, "max": 4},
    "extras": [
        {
            "id": "feature",
            "display": "Node feature",
            "sbatch": "--constraint",
            "choices": ["avx2", "avx512"],
            "default": "avx512",
        }
    ],
}
ALLOWED = (
    "machine, environment, interface, repo, ref, commit, "
    "partition, account, walltime, cores, memory, gpus, feature"
)


def make_config(**fields: Any) -> Config:
    return validate(
        {
            "backend": {
                "type": "slurm",
                "slurm": {
                    "fields": FIELDS_OFFERED | fields,
                    "partitions": {
                        "debug": {
                            "max_walltime": "1h",
                            "max_cores": 2,
                            "max_memory": "4G",
                            "max_gpus": 0,
                        }
                    },
                },
            },
            "machines": MACHINES,
            "environments": ENVIRONMENTS,
        }
    )


@pytest.fixture
def config() -> Config:
    return make_config()


def slurm(config: Config, options: dict[str, Any]) -> SlurmRequest:
    request = resolve(config, options).slurm
    assert request is not None
    return request


def refusal(config: Config, options: Any) -> str:
    with pytest.raises(InvalidLaunch) as info:
        resolve(config, options)
    assert info.value.message.isprintable()
    return info.value.message


# --- which fields are accepted -----------------------------------------------------------


def test_local_backend_has_no_slurm_fields() -> None:
    config = validate({"backend": {"slurm": {"fields": FIELDS_OFFERED}}})
    assert allowed_fields(config) == (*FIELDS, "repo", "ref", "commit")
    assert resolve(config, None).slurm is None
    assert refusal(config, {"partition": "debug"}) == (
        "Unknown option 'partition'. "
        "Allowed options: machine, environment, interface, repo, ref, commit."
    )


def test_allowed_fields_are_the_offered_ones_in_form_order(config: Config) -> None:
    assert ", ".join(allowed_fields(config)) == ALLOWED


@pytest.mark.parametrize("name", ["qos", "reservation", "uid", "constraint", "--partition"])
def test_a_field_not_offered_is_an_unknown_option(config: Config, name: str) -> None:
    assert refusal(config, {name: "x"}) == f"Unknown option '{name}'. Allowed options: {ALLOWED}."


def test_a_range_set_to_null_is_not_offered() -> None:
    config = make_config(cores=None, memory=None)
    assert "cores" not in allowed_fields(config)
    assert refusal(config, {"cores": 1}).startswith("Unknown option 'cores'.")
    request = slurm(config, {"machine": "big", "partition": "long"})
    assert (request.cores, request.memory) == (4, 8 * GIB), "the machine type's values"
    assert "cores" not in request.as_user_options()


def test_options_that_are_not_an_object_list_the_config_fields(config: Config) -> None:
    assert refusal(config, ["partition"]) == (
        f"Launch options must be an object with the keys: {ALLOWED}; got a list."
    )


# --- defaults --------------------------------------------------------------------------------


def test_nothing_sent_gets_the_defaults(config: Config) -> None:
    assert resolve(config, None).slurm == SlurmRequest(
        partition="debug",
        account="research",
        qos=None,
        reservation=None,
        walltime=3600,
        cores=1,
        memory=2 * GIB,
        gpus=0,
        extras=(("--constraint", "avx512"),),
        chosen=(
            ("partition", "debug"),
            ("account", "research"),
            ("walltime", "1:00:00"),
            ("gpus", "0"),
            ("feature", "avx512"),
        ),
    )


@pytest.mark.parametrize(
    ("machine", "cores", "memory"),
    [("small", 1, 2 * GIB), ("half", 1, 1536 * MIB), ("odd", 2, 3 * GIB), ("big", 4, 8 * GIB)],
)
def test_cores_and_memory_without_default_come_from_the_machine_type(
    machine: str, cores: int, memory: int
) -> None:
    request = slurm(make_config(), {"machine": machine, "partition": "long"})
    assert (request.cores, request.memory) == (cores, memory)


def test_configured_defaults_win_over_the_machine_type() -> None:
    config = make_config(cores={"default": 3, "max": 8}, memory={"default": "5G", "max": "16G"})
    request = slurm(config, {"machine": "big", "partition": "long"})
    assert (request.cores, request.memory) == (3, 5 * GIB)


@pytest.mark.parametrize("field", ["walltime", "cores", "memory", "gpus"])
def test_an_empty_number_takes_the_default(config: Config, field: str) -> None:
    assert slurm(config, {field: ""}) == slurm(config, {})


# --- values --------------------------------------------------------------------------------


def test_chosen_values_reach_sbatch(config: Config) -> None:
    request = slurm(
        config,
        {
            "machine": "big",
            "partition": "long",
            "account": "teaching",
            "walltime": "0-20:30",
            "cores": 6,
            "memory": "12G",
            "gpus": "2",
            "feature": "avx2",
        },
    )
    assert request.sbatch_options() == [
        ("--partition", "long"),
        ("--account", "teaching"),
        ("--time", "20:30:00"),
        ("--cpus-per-task", "6"),
        ("--mem", "12288M"),
        ("--gres", "gpu:2"),
        ("--constraint", "avx2"),
    ]


def test_choices_not_offered_and_no_gpus_give_no_option() -> None:
    config = validate({"backend": {"type": "slurm"}, "environments": ENVIRONMENTS})
    assert slurm(config, {}).sbatch_options() == [
        ("--time", "1:00:00"),
        ("--cpus-per-task", "1"),
        ("--mem", "2048M"),
    ]


@pytest.mark.parametrize("cores", [2, "2"])
def test_numbers_may_be_json_numbers_or_text(config: Config, cores: object) -> None:
    assert slurm(config, {"cores": cores}).cores == 2


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90m", 5400),
        ("2h", 7200),
        ("1h30m", 5400),
        ("1d", 86400),
        ("90", 5400),
        ("1:30:00", 5400),
        ("01:30:00", 5400),
        ("0-2", 7200),
        ("1-0", 86400),
        ("0-1:30", 5400),
        ("0-01:30:15", 5415),
    ],
)
def test_wall_time_forms(text: str, seconds: int) -> None:
    assert parse_walltime(text) == seconds


@pytest.mark.parametrize("text", ["1:30", "soon", "1:75:00", "1-", "-1", "1h 30", "2.5.1h"])
def test_wall_time_forms_that_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_walltime(text)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(59, "0:00:59"), (3600, "1:00:00"), (5400, "1:30:00"), (93600, "1-02:00:00")],
)
def test_slurm_time(seconds: int, text: str) -> None:
    assert slurm_time(seconds) == text
    assert parse_walltime(text) == seconds


def test_values_are_rounded_up_to_what_slurm_is_given(config: Config) -> None:
    request = slurm(config, {"walltime": "90s", "memory": "256.5M"})
    assert (request.walltime, request.memory) == (120, 257 * MIB)
    assert request.as_user_options()["walltime"] == "0:02:00"
    assert request.as_user_options()["memory"] == "257M"


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"machine": "big", "partition": "long", "cores": "7", "memory": "9G", "gpus": 3},
        {"walltime": "45m", "account": "teaching", "feature": "avx2", "memory": "1.5G"},
        {"machine": "odd", "walltime": "0-00:59:59"},
    ],
)
def test_a_stored_request_resolves_to_the_same(config: Config, options: dict[str, Any]) -> None:
    request = resolve(config, options)
    stored = request.as_user_options()
    assert all(isinstance(value, str) for value in stored.values())
    assert resolve(config, stored) == request


def test_a_value_left_to_the_machine_type_follows_it_next_time(config: Config) -> None:
    stored = resolve(config, {"machine": "small", "partition": "long"}).as_user_options()
    assert "cores" not in stored and "memory" not in stored
    request = slurm(config, {**stored, "machine": "big"})
    assert (request.cores, request.memory) == (4, 8 * GIB)


# --- refusals ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"cores": 64}, "Cores must be between 1 and 8; got 64."),
        ({"cores": "0"}, "Cores must be between 1 and 8; got 0."),
        ({"gpus": 5}, "GPUs must be between 0 and 4; got 5."),
        ({"memory": "32G"}, "Memory must be between 256M and 16G; got 32G."),
        ({"memory": "1M"}, "Memory must be between 256M and 16G; got 1M."),
        ({"walltime": "2d"}, "Wall time must be between 0:01:00 and 1-00:00:00; got 2-00:00:00."),
        ({"cores": "2.5"}, "Cores must be a whole number; got '2.5'."),
        ({"cores": 2.0}, "Cores must be a whole number; got 2.0."),
        ({"cores": True}, "Cores must be a whole number; got true/false."),
        ({"cores": "1 --uid=0"}, "Cores must be a whole number; got '1 --uid=0'."),
        ({"cores": "-1"}, "Cores must be a whole number; got '-1'."),
        ({"gpus": ["1"]}, "GPUs must be a whole number; got a list."),
        ({"cores": None}, "Cores must be a whole number; got null."),
        (
            {"memory": "4096"},
            "Memory must be a size with a unit, e.g. 4G or 512M; got '4096'.",
        ),
        ({"memory": 4 * GIB}, "Memory must be a size with a unit, e.g. 4G or 512M; got a number."),
        (
            {"memory": "1G; touch /tmp/x"},
            "Memory must be a size with a unit, e.g. 4G or 512M; got '1G; touch /tmp/x'.",
        ),
        (
            {"walltime": "1:30"},
            "Wall time must be a duration like 90m, 2h or 1:30:00 (or Slurm's MM, HH:MM:SS, "
            "D-HH, D-HH:MM, D-HH:MM:SS); got '1:30'.",
        ),
        ({"partition": "gpu"}, "Unknown partition 'gpu'. Choose one of: debug, long."),
        (
            {"partition": 1},
            "The partition must be given as a string id, not a number. Choose one of: debug, long.",
        ),
        ({"account": "admin"}, "Unknown account 'admin'. Choose one of: research, teaching."),
        ({"feature": "sse"}, "Unknown Node feature 'sse'. Choose one of: avx2, avx512."),
    ],
)
def test_refusals_say_what_is_allowed(
    config: Config, options: dict[str, Any], message: str
) -> None:
    assert refusal(config, {"partition": "long", **options}) == message


def test_non_finite_and_huge_numbers_are_refused(config: Config) -> None:
    assert refusal(config, {"memory": "9" * 400 + "G"}).startswith("Memory must be a size")
    assert refusal(config, {"walltime": "9" * 5000}).startswith("Wall time must be a duration")
    assert refusal(config, {"cores": -1}) == "Cores must be a whole number; got -1."
    assert refusal(config, {"cores": 10**9}) == "Cores must be a whole number; got 1000000000."
    assert len(refusal(config, {"cores": 10**1000})) < 140


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"walltime": "2h"},
            "Wall time 2:00:00 is longer than the 1:00:00 limit of partition debug.",
        ),
        ({"cores": 3}, "Cores 3 is more than the 2 limit of partition debug."),
        ({"memory": "8G"}, "Memory 8G is more than the 4G limit of partition debug."),
        ({"machine": "big"}, "Cores 4 is more than the 2 limit of partition debug."),
        ({"gpus": 1}, "GPUs 1 is more than the 0 limit of partition debug."),
    ],
)
def test_partition_limits_are_checked_before_submitting(
    config: Config, options: dict[str, Any], message: str
) -> None:
    assert refusal(config, {"partition": "debug", **options}) == message
    assert resolve(config, {"partition": "long", **options}).slurm is not None


PAYLOADS = [
    "debug\n#SBATCH --uid=0",
    "$(touch /tmp/x)",
    "; rm -rf ~",
    "`id`",
    "debug\u2028#SBATCH --uid=0",
    "debug\x85#SBATCH --uid=0",
    "debug\x00",
    "1\n",
    "1 --uid=0",
    "90\u2028",
    "4G\r\n",
]


@pytest.mark.parametrize("payload", PAYLOADS)
@pytest.mark.parametrize(
    "field", ["partition", "account", "walltime", "cores", "memory", "gpus", "feature"]
)
def test_injection_payloads_are_refused_in_every_field(
    config: Config, field: str, payload: str
) -> None:
    message = refusal(config, {"partition": "long", field: payload})
    assert quote_untrusted(payload) in message


# --- the form ------------------------------------------------------------------------------


def test_form_accepts_the_config_fields() -> None:
    config = make_config()
    form = {
        "_xsrf": ["t"],
        "machine": ["big"],
        "partition": [b"long"],
        "walltime": ["2h"],
        "cores": ["4"],
        "memory": [""],
        "feature": ["avx2"],
    }
    options = options_from_form(form, config)
    request = slurm(config, options)
    assert (request.partition, request.walltime, request.cores, request.memory) == (
        "long",
        7200,
        4,
        8 * GIB,
    )
    assert request.extras == (("--constraint", "avx2"),)


def test_form_without_config_knows_only_machine_and_environment() -> None:
    with pytest.raises(InvalidLaunch, match=r"^Unknown option 'partition'\. Allowed options: "):
        options_from_form({"partition": ["debug"]})


@pytest.mark.parametrize(
    ("field", "label"), [("walltime", "wall time"), ("gpus", "GPUs"), ("feature", "Node feature")]
)
def test_form_messages_name_slurm_fields(config: Config, field: str, label: str) -> None:
    with pytest.raises(InvalidLaunch) as info:
        options_from_form({field: ["1", "2"]}, config)
    assert info.value.message == f"Choose exactly one {label}; the form sent 2 values."
    with pytest.raises(InvalidLaunch) as info:
        options_from_form({field: [b"\xff"]}, config)
    assert info.value.message == f"The {label} sent is not valid UTF-8 text."


def test_form_refuses_fields_the_config_does_not_offer(config: Config) -> None:
    with pytest.raises(InvalidLaunch) as info:
        options_from_form({"qos": ["high"]}, config)
    assert info.value.message == f"Unknown option 'qos'. Allowed options: {ALLOWED}."


class Form(HTMLParser):
    """The form's controls as a browser would post them, with their labels and hints."""

    def __init__(self) -> None:
        super().__init__()
        self.controls: dict[str, dict[str, str | None]] = {}
        self.options: dict[str, list[tuple[str | None, bool]]] = {}
        self.labels: list[str | None] = []
        self.hints: dict[str, str] = {}
        self._select: str | None = None
        self._hint: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag in ("input", "select") and found.get("id", "").startswith("hs-slurm-"):
            self.controls[str(found["name"])] = found | {"tag": tag}
        if tag == "select":
            self._select = found.get("name")
            self.options[str(self._select)] = []
        elif tag == "option" and self._select:
            self.options[self._select].append((found.get("value"), "selected" in found))
        elif tag == "label":
            self.labels.append(found.get("for"))
        elif tag == "div" and str(found.get("id", "")).endswith("-hint"):
            self._hint = str(found["id"])

    def handle_endtag(self, tag: str) -> None:
        if tag == "select":
            self._select = None
        elif tag == "div":
            self._hint = None

    def handle_data(self, data: str) -> None:
        if self._hint:
            self.hints[self._hint] = self.hints.get(self._hint, "") + data.strip()

    def posted(self) -> dict[str, list[str]]:
        """What submitting the form unchanged sends for the Slurm fields."""
        values = {name: [str(c.get("value") or "")] for name, c in self.controls.items()}
        for name, options in self.options.items():
            values[name] = [str(value) for value, selected in options if selected]
        return values


def parse(html: str) -> Form:
    form = Form()
    form.feed(html)
    form.close()
    return form


def test_form_has_no_slurm_fieldset_on_the_local_backend() -> None:
    html = render_options_form(validate({"backend": {"slurm": {"fields": FIELDS_OFFERED}}}))
    assert "Slurm job" not in html
    assert not parse(html).controls


def test_form_shows_the_offered_fields_after_machine_and_environment(config: Config) -> None:
    html = render_options_form(config)
    page = parse(html)
    assert list(page.controls) == list(allowed_fields(config)[6:])
    assert html.index("Environment") < html.index("Slurm job")
    for name, control in page.controls.items():
        assert control["id"] in page.labels, f"{name} has a label"
    assert page.controls["partition"]["tag"] == "select"
    assert page.options["partition"] == [("debug", True), ("long", False)]
    assert page.options["feature"] == [("avx2", False), ("avx512", True)]
    cores = page.controls["cores"]
    assert (cores["type"], cores["min"], cores["max"], cores["value"]) == ("number", "1", "8", "")
    assert cores["placeholder"] == "from the machine type"
    assert (page.controls["walltime"]["type"], page.controls["walltime"]["value"]) == (
        "text",
        "1:00:00",
    )
    assert page.controls["gpus"]["value"] == "0"


def test_form_hints_give_the_ranges_and_partition_limits(config: Config) -> None:
    hints = parse(render_options_form(config)).hints
    assert hints["hs-slurm-walltime-hint"] == "e.g. 2h, 90m or 1:30:00; 0:01:00 to 1-00:00:00"
    assert hints["hs-slurm-cores-hint"] == "1 to 8; empty: the machine type's CPUs"
    assert hints["hs-slurm-memory-hint"] == (
        "e.g. 4G or 512M; 256M to 16G; empty: the machine type's memory"
    )
    assert hints["hs-slurm-gpus-hint"] == "0 to 4"
    assert hints["hs-slurm-partition-hint"] == (
        "Partition limits: debug at most 1:00:00 wall time, 2 cores, 4G memory, 0 GPUs."
    )


def test_form_submitted_unchanged_resolves_to_the_defaults(config: Config) -> None:
    posted = parse(render_options_form(config)).posted()
    assert resolve(config, options_from_form(posted, config)) == resolve(config, None)


def test_form_is_pre_filled_with_the_previous_request(config: Config) -> None:
    previous = resolve(
        config,
        {"partition": "long", "walltime": "3h", "cores": 5, "memory": "6G", "feature": "avx2"},
    )
    page = parse(render_options_form(config, previous.as_user_options()))
    assert page.options["partition"] == [("debug", False), ("long", True)]
    assert page.options["feature"] == [("avx2", True), ("avx512", False)]
    assert page.controls["walltime"]["value"] == "3:00:00"
    assert page.controls["memory"]["value"] == "6G"
    assert resolve(config, options_from_form(page.posted(), config)) == previous


def test_stale_choices_fall_back_to_the_default(config: Config) -> None:
    page = parse(render_options_form(config, {"partition": "gone", "account": ["x"]}))
    assert page.options["partition"] == [("debug", True), ("long", False)]
    assert page.options["account"] == [("research", True), ("teaching", False)]


def test_form_escapes_previous_values_and_config_text() -> None:
    config = make_config(
        extras=[
            {
                "id": "feature",
                "display": '<img src=x onerror="alert(1)">',
                "sbatch": "--constraint",
                "choices": ["avx2"],
            }
        ]
    )
    html = render_options_form(config, {"walltime": '"><script>alert(2)</script>'})
    assert "<script>" not in html and "<img" not in html
    assert "&lt;img src=x onerror=&#34;alert(1)&#34;&gt;" in html
    assert parse(html).controls["walltime"]["value"] == '"><script>alert(2)</script>'
