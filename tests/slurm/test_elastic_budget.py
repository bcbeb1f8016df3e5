"""The budget cap for real: on the elastic test cluster (tests/slurm/test_elastic.py's
controller, a slurmctld of its own), a job on a node group whose budget is spent makes
slurmctld run hubstack's resume program, which refuses the node: no machine is made, Slurm
has the node DOWN with the reason, the job waits; once the budget allows, the reconciler
returns the node to service."""

from __future__ import annotations

import yaml
from hubtest import wait_for

from slurm.test_elastic import (  # noqa: F401  (elastic: the controller fixture)
    RESUME_TIMEOUT_S,
    Elastic,
    elastic,
    job_state,
    machines,
    submit,
)


def set_budget(cluster: Elastic, core_hours: float) -> None:
    data = yaml.safe_load(cluster.config.read_text())
    data["cluster"]["node_groups"][0]["budget"] = {"core_hours": core_hours}
    cluster.config.write_text(yaml.safe_dump(data))


def test_a_spent_budget_starts_no_node_until_the_budget_allows(elastic: Elastic) -> None:  # noqa: F811
    set_budget(elastic, 0)  # a zero budget is spent from the start
    job, _ = submit(elastic, "true")
    spent = "budget spent for node group el: 0.00 of 0 core-hours; it resets "
    try:
        wait_for(lambda: elastic.status()["el1"].startswith(f"refused ({spent}"), 30, "el1 refused")
    except TimeoutError:
        shown = elastic.slurm("scontrol", "show", "job", job)
        raise AssertionError((elastic.status(), elastic.node("el1"), shown)) from None
    shown = elastic.node("el1")
    assert f"Reason=hubstack: {spent}" in shown, shown
    assert "DOWN" in shown, shown
    assert machines() == [], "no machine is made for a refused node"
    assert job_state(elastic, job) == "PENDING"
    assert elastic.hubstack("reconcile") == "", "a spent budget keeps the node out"
    # Slurm powers the node down at its ResumeTimeout, with a reason of its own; the
    # resume-fail program puts hubstack's back.
    wait_for(
        lambda: (
            "POWERED_DOWN" in (shown := elastic.node("el1"))
            and f"Reason=hubstack: {spent}" in shown
        ),
        RESUME_TIMEOUT_S + 30,
        "el1 powered down, with hubstack's reason",
    )
    # The budget allows again (a new period, or a raised budget): the reconciler returns
    # the node to service, powered down, ready to boot for the job (as any returned node).
    set_budget(elastic, 100)
    assert elastic.hubstack("reconcile") == (
        "el1: refused for a spent budget; returned it to service, powered down\n"
    )
    elastic.slurm("scancel", job)
    wait_for(lambda: elastic.status()["el1"] == "powered down", 30, "el1 back in service")
