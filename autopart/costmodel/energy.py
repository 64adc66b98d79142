"""Energy of one call: each device draws its active power while busy and its idle power otherwise.

    E_d = P_active,d * busy_d + P_idle,d * (makespan - busy_d)        (joules)

P_active is the device's power limit (``Device.max_power_W``: the board power / TDP from the
datasheet, or NVML's enforced limit when discovered): an upper bound on the draw of a busy
device, reached by dense matmuls and approached by bandwidth-bound kernels. P_idle is
``Device.idle_power_W`` (measured or nominal). A device with no power figure contributes no
energy and is listed as unknown, so totals are never silently too low without saying so.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..topology import Topology


@dataclass(frozen=True)
class EnergyEstimate:
    """Joules per device for one call, and the devices whose power is unknown."""

    per_device_J: dict[str, float]
    unknown: tuple[str, ...]

    @property
    def total_J(self) -> float:
        return sum(self.per_device_J.values())


def energy_J(
    busy_s: Mapping[str, float], makespan_s: float, topology: Topology, *, devices=None
) -> EnergyEstimate:
    """Energy of one call (module docstring).

    Args:
        busy_s: seconds each device computes or copies during the call.
        makespan_s: seconds the call lasts; devices in ``devices`` not busy idle all along.
        devices: devices that are powered for the call (default: those in ``busy_s``).

    Raises:
        ValueError: a busy time above the makespan, or a negative time.
    """
    if makespan_s < 0:
        raise ValueError(f"makespan_s must be >= 0, got {makespan_s}")
    names = list(devices) if devices is not None else list(busy_s)
    per_device: dict[str, float] = {}
    unknown: list[str] = []
    for name in names:
        busy = busy_s.get(name, 0.0)
        if busy < 0 or busy > makespan_s * (1 + 1e-9):
            raise ValueError(
                f"busy time of {name} is {busy} s, outside [0, makespan_s={makespan_s}]"
            )
        dev = topology.device(name)
        if dev.max_power_W is None:
            unknown.append(name)
            continue
        idle_W = dev.idle_power_W or 0.0
        per_device[name] = dev.max_power_W * busy + idle_W * max(0.0, makespan_s - busy)
    return EnergyEstimate(per_device_J=per_device, unknown=tuple(unknown))
