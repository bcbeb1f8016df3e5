"""The usage page's chart of spending per day, stacked by machine type, as the geometry of
an SVG the template draws: drawn on the server, so the page needs no script or chart
library (and nothing from the internet), and the numbers it shows are the table's."""

from __future__ import annotations

import math
from dataclasses import dataclass

from hubstack.usage.breakdown import Day

WIDTH, HEIGHT = 760, 240
LEFT, BOTTOM, TOP = 56, 24, 8  # room for the axis labels
# Colour-blind-safe (Okabe-Ito), repeated beyond eight machine types.
COLOURS = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")


@dataclass(frozen=True)
class Bar:
    """One machine type's part of one day's bar; ``title`` is its tooltip."""

    x: float
    y: float
    width: float
    height: float
    colour: str
    title: str


@dataclass(frozen=True)
class Label:
    x: float
    y: float
    text: str


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    bars: list[Bar]
    y_labels: list[Label]  # spending, at grid lines
    x_labels: list[Label]  # days, thinned to fit
    legend: list[tuple[str, str]]  # (machine type, colour)
    baseline: float


def nice_top(value: float) -> float:
    """The smallest 1, 2 or 5 times a power of ten at or above ``value``: an axis a reader
    can divide in four."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    return next(step * power for step in (1, 2, 5, 10) if step * power >= value)


def stacked_bars(days: list[Day], currency: str) -> Chart:
    """Bars per day, stacked by machine type in a fixed order (so colours keep meaning)."""
    machines = sorted({m for day in days for m, cost in day.by_machine.items() if cost > 0})
    colour = {m: COLOURS[i % len(COLOURS)] for i, m in enumerate(machines)}
    top = nice_top(max((day.total for day in days), default=0.0))
    plot_w, plot_h = WIDTH - LEFT, HEIGHT - BOTTOM - TOP
    slot = plot_w / max(len(days), 1)
    baseline = TOP + plot_h
    bars: list[Bar] = []
    for i, day in enumerate(days):
        y = baseline
        for machine in machines:
            cost = day.by_machine.get(machine, 0.0)
            if cost <= 0:
                continue
            height = cost / top * plot_h
            y -= height
            bars.append(
                Bar(
                    x=LEFT + i * slot + slot * 0.1,
                    y=y,
                    width=slot * 0.8,
                    height=height,
                    colour=colour[machine],
                    title=f"{day.day:%Y-%m-%d} {machine}: {cost:.2f} {currency}",
                )
            )
    every = max(1, math.ceil(len(days) / 12))
    x_labels = [
        Label(LEFT + i * slot + slot / 2, HEIGHT - 6, f"{day.day:%m-%d}")
        for i, day in enumerate(days)
        if i % every == 0
    ]
    y_labels = [Label(LEFT - 6, baseline - k / 4 * plot_h, f"{top * k / 4:g}") for k in range(5)]
    legend = [(m, colour[m]) for m in machines]
    return Chart(WIDTH, HEIGHT, bars, y_labels, x_labels, legend, baseline)
