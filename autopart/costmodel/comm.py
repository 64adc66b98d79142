"""Communication cost: point-to-point transfers and collectives, in the alpha-beta model.

A message of ``n`` bytes over a link costs ``alpha + n / beta`` (``Link.latency_s``,
``Link.bandwidth_Bps``). Collectives over ``p`` ranks, ``n`` the bytes each rank holds (the full
tensor for all_reduce and broadcast; the gathered output for all_gather; the unreduced input for
reduce_scatter; the whole send buffer for all_to_all):

===============  ==========================================  ==========================================
collective       ring                                        tree (log p steps)
===============  ==========================================  ==========================================
all_reduce       2 (p-1) alpha + 2 (p-1)/p n/beta            2 L alpha + 2 n/beta  (pipelined trees)
all_gather       (p-1) alpha + (p-1)/p n/beta                L alpha + (p-1)/p n/beta  (recursive doubling)
reduce_scatter   (p-1) alpha + (p-1)/p n/beta                L alpha + (p-1)/p n/beta  (recursive halving)
all_to_all       (p-1) alpha + (p-1)/p n/beta  (pairwise)    L alpha + L n/(2 beta)  (Bruck)
broadcast        (p-1) alpha + n/beta  (pipelined chain)     L alpha + n/beta  (pipelined tree)
===============  ==========================================  ==========================================

with ``L = ceil(log2 p)``. Sources: R. Thakur, R. Rabenseifner, W. Gropp, "Optimization of
collective communication operations in MPICH", IJHPCA 19(1), 2005 (ring, recursive doubling and
halving, pairwise exchange and Bruck's all_to_all, with these alpha-beta costs; recursive
doubling and halving are exact for ``p`` a power of two, Bruck's all_gather has the same cost
for any ``p``, and reduce_scatter is given that cost for other ``p`` too, a slight underestimate);
P. Sanders, J. Speck, J. L. Träff, "Two-tree algorithms for full bandwidth broadcast, reduction
and scan", Parallel Computing 35(12), 2009 (pipelined trees reach n/beta per direction, the basis
of NCCL's double binary trees). ``algorithm="auto"`` takes the cheaper of the two, as NCCL's and
MPICH's tuners do by message size (the log-step forms win for small messages, where the
latency term dominates).

A ring runs at the pace of its slowest hop: alpha is the largest latency and beta the smallest
bandwidth among consecutive ranks (devices in the order given, wrapping around).

Across hosts the collective is hierarchical (as NCCL does across nodes; Jia et al., "Highly
scalable deep learning training system with mixed-precision", 2018): all_reduce = reduce_scatter
inside each host + all_reduce of n/g bytes among the hosts + all_gather inside each host, with
g the ranks per host; all_gather and reduce_scatter likewise do the inside-host and across-host
steps in sequence; all_to_all and broadcast use one flat ring over the slowest hop.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

from ..topology import Link, Mesh, Topology

Collective = Literal["all_reduce", "all_gather", "reduce_scatter", "all_to_all", "broadcast"]
Algorithm = Literal["auto", "ring", "tree"]
COLLECTIVES: tuple[str, ...] = Collective.__args__  # type: ignore[attr-defined]


def ring_link(topology: Topology, devices: Sequence[str]) -> tuple[float, float]:
    """(alpha seconds, beta bytes/s) of the slowest hop of a ring over ``devices``."""
    hops: list[Link] = [
        topology.link(a, b) for a, b in zip(devices, [*devices[1:], devices[0]]) if a != b
    ]
    if not hops:
        return 0.0, math.inf
    return max(h.latency_s for h in hops), min(h.bandwidth_Bps for h in hops)


def flat_collective_time_s(
    kind: Collective, nbytes: float, p: int, alpha_s: float, beta_Bps: float,
    algorithm: Algorithm = "auto",
) -> float:
    """Seconds of one collective over ``p`` ranks joined by identical links (module table).

    Args:
        kind: the collective.
        nbytes: bytes per rank as the module docstring defines them for ``kind`` (>= 0).
        p: ranks (>= 1); one rank costs nothing.
        alpha_s: latency of one message, seconds.
        beta_Bps: bandwidth of one link, bytes per second (``inf``: free bandwidth).
        algorithm: ``"ring"``, ``"tree"`` (the log-step algorithm of the table) or ``"auto"``
            (the cheaper).

    Raises:
        ValueError: an unknown collective or algorithm, ``p < 1`` or negative bytes.
    """
    if kind not in COLLECTIVES:
        raise ValueError(f"unknown collective {kind!r}; expected one of {list(COLLECTIVES)}")
    if algorithm not in ("auto", "ring", "tree"):
        raise ValueError(f"unknown algorithm {algorithm!r}; expected 'auto', 'ring' or 'tree'")
    if p < 1 or nbytes < 0:
        raise ValueError(f"need p >= 1 ranks and nbytes >= 0, got p={p}, nbytes={nbytes}")
    if p == 1 or nbytes == 0:
        return 0.0
    inv = 0.0 if math.isinf(beta_Bps) else 1.0 / beta_Bps
    steps = math.ceil(math.log2(p))
    if kind == "all_reduce":
        ring = 2 * (p - 1) * alpha_s + 2 * (p - 1) / p * nbytes * inv
        tree = 2 * steps * alpha_s + 2 * nbytes * inv
    elif kind == "broadcast":
        ring = (p - 1) * alpha_s + nbytes * inv
        tree = steps * alpha_s + nbytes * inv
    elif kind == "all_to_all":
        ring = (p - 1) * alpha_s + (p - 1) / p * nbytes * inv
        tree = steps * alpha_s + steps * nbytes / 2 * inv
    else:  # all_gather (recursive doubling), reduce_scatter (recursive halving)
        ring = (p - 1) * alpha_s + (p - 1) / p * nbytes * inv
        tree = steps * alpha_s + (p - 1) / p * nbytes * inv
    if algorithm == "ring":
        return ring
    if algorithm == "tree":
        return tree
    return min(ring, tree)


def collective_time_s(
    kind: Collective,
    nbytes: int,
    devices: Sequence[str],
    topology: Topology,
    *,
    algorithm: Algorithm = "auto",
) -> float:
    """Predicted seconds of a collective over ``devices`` of ``topology`` (one rank each).

    Inside one host: a flat collective over the slowest hop. Across hosts: hierarchical (module
    docstring): each inside-host step runs on every host at once, over its ring, and takes as
    long as the slowest host's; across-host steps run over the slowest ring joining one rank
    per host, on the shards of the host with the fewest ranks (the largest).

    Raises:
        ValueError: an unknown collective or algorithm, or a device the topology lacks.
    """
    devices = list(devices)
    for d in devices:
        topology.device(d)  # raises ValueError naming an unknown device
    by_host: dict[str, list[str]] = {}
    for d in devices:
        by_host.setdefault(topology.device(d).host, []).append(d)
    p = len(devices)
    if len(by_host) <= 1 or kind in ("all_to_all", "broadcast"):
        alpha, beta = ring_link(topology, devices)
        return flat_collective_time_s(kind, nbytes, p, alpha, beta, algorithm)

    groups = list(by_host.values())
    g = min(len(grp) for grp in groups)  # the host with the fewest ranks has the largest shards
    rings = [(len(grp), *ring_link(topology, grp)) for grp in groups]
    leaders = [grp[0] for grp in groups]
    outer = ring_link(topology, leaders)
    h = len(groups)

    def inside(step: Collective, size: float) -> float:
        return max(flat_collective_time_s(step, size, n, alpha, beta, "ring") for n, alpha, beta in rings)

    def across(step: Collective, size: float) -> float:
        return flat_collective_time_s(step, size, h, *outer, algorithm)

    if kind == "all_reduce":
        return inside("reduce_scatter", nbytes) + across("all_reduce", nbytes / g) + inside(
            "all_gather", nbytes
        )
    if kind == "all_gather":
        return across("all_gather", nbytes / g) + inside("all_gather", nbytes)
    return inside("reduce_scatter", nbytes) + across("reduce_scatter", nbytes / g)


def mesh_collective_time_s(
    kind: Collective,
    nbytes: int,
    mesh: Mesh | str,
    axis: str | int,
    topology: Topology,
    *,
    algorithm: Algorithm = "auto",
) -> float:
    """Predicted seconds of a collective along one axis of a mesh: every group of
    :meth:`Mesh.axis_groups` runs it at once (as a ``DeviceMesh``'s per-axis process groups
    do), so the call lasts as long as the slowest group (:func:`collective_time_s` each).
    Groups that share a link (two ``dp`` columns crossing one host's network card) are not
    slowed by each other here.

    Args:
        mesh: a mesh of ``topology`` or its name.
        axis: the axis name (``"tp"``) or index.
        nbytes: bytes per rank, as :func:`flat_collective_time_s` defines them.

    Raises:
        ValueError: an unknown mesh or axis (the message lists those there are), or as
            :func:`collective_time_s`.
    """
    if isinstance(mesh, str):
        mesh = topology.mesh(mesh)
    return max(
        collective_time_s(kind, nbytes, group, topology, algorithm=algorithm)
        for group in mesh.axis_groups(axis)
    )
