"""Usage reports: the pure report over ledger sessions, and ``hubstack usage`` as a table,
CSV and JSON over a real ledger."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from hubstack.cli import main
from hubstack.usage.ledger import Ledger, Opened, SessionRow
from hubstack.usage.pricing import Rate
from hubstack.usage.report import as_csv, report

T0 = datetime(2026, 3, 14, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


def row(
    user: str, machine: str, start: int, end: int, cores: float, cpu: float | None
) -> SessionRow:
    return SessionRow(
        user=user,
        machine=machine,
        rate=2.0,
        cores=cores,
        started=T0 + start * HOUR,
        metered=T0 + end * HOUR,
        stopped=T0 + end * HOUR,
        cpu_seconds=cpu,
    )


def test_report_adds_up_per_user_and_machine_with_efficiency() -> None:
    rows = [
        row("ada", "big", 0, 2, 8, 2 * 3600.0),  # asked for 8 cores, used one
        row("ada", "big", 2, 3, 8, None),  # not measured: no efficiency from it
        row("bob", "small", 0, 4, 1, None),  # half outside the window
    ]
    ada, bob = report(rows, T0, T0 + 2 * HOUR + HOUR)
    assert (ada.user, ada.sessions, ada.hours, ada.core_hours, ada.cost) == ("ada", 2, 3, 24, 6)
    assert ada.cpu_hours == pytest.approx(2) and ada.efficiency == pytest.approx(2 / 16)
    assert (bob.hours, bob.cost, bob.efficiency) == (3, 6, None)


def test_csv_cells_never_start_a_formula() -> None:
    text = as_csv(report([row("=cmd", "m", 0, 1, 1, None)], T0, T0 + HOUR))
    (line,) = list(csv.DictReader(io.StringIO(text)))
    assert line["user"] == "'=cmd" and line["cost"] == "2.0000"


def test_hubstack_usage_prints_table_csv_and_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "hubstack.yaml"
    config.write_text(yaml.safe_dump({"hub": {"data_dir": str(tmp_path)}}))
    ledger = Ledger(f"sqlite:///{tmp_path / 'usage.sqlite'}")
    now = datetime.now(UTC)
    for user, hours in (("ada", 2), ("bob", 1)):
        opened = Opened(user, "", "local", "small", {}, Rate(1.5, 2, 2**30, 0), "EUR", frozenset())
        start = now - hours * HOUR
        ledger.close(ledger.open(opened, start), start + HOUR / 2)

    assert main(["usage", "--config", str(config), "--since", "1d", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert [(x["user"], x["cost"]) for x in printed["lines"]] == [("ada", 0.75), ("bob", 0.75)]
    assert main(["usage", "--config", str(config), "--since", "1d", "--user", "bob", "--csv"]) == 0
    assert capsys.readouterr().out.splitlines()[1].startswith("bob,small,1,0.5000,1.0000,0.7500")
    assert main(["usage", "--config", str(config), "--since", "1d"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[1].split()[:6] == ["USER", "MACHINE", "SESSIONS", "HOURS", "CORE-H", "COST"]
    assert table[2].split() == ["ada", "small", "1", "0.50", "1.00", "0.75", "-"]
