"""What a server costs per hour, fixed when it starts (a later price change does not
rewrite history), and what a session has cost within a window of time."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

from hubstack.config.usage import Prices
from hubstack.launch.profiles import LaunchRequest


@dataclass(frozen=True)
class Rate:
    """A server's allocation and price, recorded with its session."""

    money: float  # per hour
    cores: float  # allocated cores: core-hours per hour
    memory: int  # allocated bytes
    gpus: int


def rate_of(prices: Prices, request: LaunchRequest) -> Rate:
    """The rate of a server of ``request``: its machine type's price plus, on Slurm, its
    job's cores and GPUs at their prices (the job's cores are what Slurm allocates)."""
    machine = request.machine
    if request.slurm is not None:
        cores, memory, gpus = float(request.slurm.cores), request.slurm.memory, request.slurm.gpus
    else:
        cores, memory, gpus = machine.cpu, machine.memory, 0
    money = prices.machines.get(machine.id, 0.0)
    if request.slurm is not None:
        money += cores * prices.core_hour + gpus * prices.gpu_hour
    return Rate(money=money, cores=cores, memory=memory, gpus=gpus)


@dataclass(frozen=True)
class Charge:
    """What sessions cost: money and core-hours."""

    money: float = 0.0
    core_hours: float = 0.0

    def __add__(self, other: Charge) -> Charge:
        return Charge(self.money + other.money, self.core_hours + other.core_hours)


def overlap_hours(start: datetime, end: datetime, since: datetime, until: datetime) -> float:
    """Hours of ``[start, end]`` within ``[since, until]``."""
    seconds = (min(end, until) - max(start, since)).total_seconds()
    return max(seconds, 0.0) / 3600


def charge(
    rate_money: float,
    cores: float,
    start: datetime,
    end: datetime,
    since: datetime,
    until: datetime,
) -> Charge:
    """What a session at ``rate_money`` per hour on ``cores`` cores, running from ``start``
    to ``end``, costs within ``[since, until]``."""
    hours = overlap_hours(start, end, since, until)
    return Charge(rate_money * hours, cores * hours)


def efficiency(cpu_seconds: float | None, cores: float, start: datetime, end: datetime) -> float:
    """Used over allocated CPU time (NaN when not measured or no time passed)."""
    allocated = cores * (end - start).total_seconds()
    if cpu_seconds is None or allocated <= 0:
        return math.nan
    return cpu_seconds / allocated
