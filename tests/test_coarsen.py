"""Coarsening: repeated blocks (transformer layers) found and grouped alike, kept whole when
they fit and cut alike inside when they do not; other graphs keep the generic grouping."""

from __future__ import annotations

import dataclasses
import math
import re
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch import nn

import autopart
from autopart.coarsen import (
    MIN_BLOCKS_TO_KEEP_WHOLE,
    build_problem,
    finer_block_pieces,
    group_nodes,
    repeated_blocks,
)
from autopart.graph import AnnotatedGraph
from autopart.rewrite import origin_resolver
from autopart.topology import Topology

GRAPHS = Path(__file__).resolve().parents[1] / "bench" / "graphs"


def compute_nodes(name: str):
    return [n for n in AnnotatedGraph.load(GRAPHS / f"{name}.json").nodes if n.is_compute]


@pytest.mark.parametrize("name, layers", [("gpt2", 12), ("bert", 12), ("llama3-8b", 32)])
def test_transformer_layers_are_found(name, layers):
    nodes = compute_nodes(name)
    blocks = repeated_blocks(nodes)
    assert blocks is not None and len(blocks) == layers
    assert all(a[1] == b[0] for a, b in zip(blocks, blocks[1:]))  # adjacent
    first = [(n.op, n.target) for n in nodes[blocks[0][0]:blocks[0][1]]]
    for s, e in blocks:
        assert [(n.op, n.target) for n in nodes[s:e]] == first


def test_blocks_that_differ_are_not_repeated():
    nodes = compute_nodes("gpt2")
    blocks = repeated_blocks(nodes)
    s, e = blocks[3]
    changed = list(nodes)
    changed[s + 1] = dataclasses.replace(changed[s + 1], target="something_else")
    assert repeated_blocks(changed) is None
    assert repeated_blocks(compute_nodes("resnet50")) is None  # stages of different depth


@pytest.mark.parametrize("max_groups", [3, 8, 16, 32, 64])
@pytest.mark.parametrize("name", ["gpt2", "llama3-8b"])
def test_groups_follow_the_layers(name, max_groups):
    nodes = compute_nodes(name)
    blocks = repeated_blocks(nodes)
    groups = group_nodes(nodes, lambda n: 1.0 + n.resident_bytes / 1e6, max_groups)
    assert [n for g in groups for n in g] == nodes  # every node once, in order
    assert len(groups) <= max_groups
    position = {n.name: i for i, n in enumerate(nodes)}
    starts = {s for s, _ in blocks} | {blocks[-1][1]}
    inside = [g for g in groups if blocks[0][0] <= position[g[0].name] < blocks[-1][1]]
    # a group of layers starts at a layer's start and ends at a layer's end
    assert all(position[g[0].name] in starts and position[g[-1].name] + 1 in starts for g in inside)
    sizes = {len(g) for g in inside[:-1]}  # identical layers: identical groups
    assert len(sizes) <= 1
    if len(blocks) >= MIN_BLOCKS_TO_KEEP_WHOLE and max_groups >= len(blocks) + 2:
        assert len(inside) == len(blocks)


class Block(nn.Module):
    """264 KB of fp32 weights: 128 -> 256 -> 128."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(128, 256), nn.Linear(256, 128)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


class Stack(nn.Module):
    def __init__(self, num_blocks: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block() for _ in range(num_blocks))

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return x


def tasks_per_block(plan) -> Counter:
    """Block index -> number of the plan's tasks inside that block."""
    return Counter(int(m.group(1)) for t in plan.tasks if (m := re.match(r"blocks\.(\d+)", t.name)))


@pytest.mark.parametrize("max_groups", [32, 1000])
def test_blocks_bigger_than_the_room_left_are_cut_alike_until_they_fit(fresh_dynamo, max_groups):
    # 4 blocks of 264 KB on 3 devices of 404 KB (1.21 MB for 1.05 MB of weights): no device holds
    # two whole blocks, so no placement of whole blocks fits; cut inside, the blocks do (3 + 3 + 2
    # linears of 132 KB, with the activations and the copies each device receives).
    caps = {f"cuda:{i}": "404KB" for i in range(3)}
    plan = autopart.plan_model(Stack(4), torch.randn(4, 128), topology="4xa100-pcie-cpu",
                               max_memory=caps, max_groups=max_groups)[0]
    for d in caps:
        assert plan.predicted_peak_bytes[d] <= plan.capacity_bytes[d] == 404_000
    per_block = tasks_per_block(plan)
    assert sorted(per_block) == [0, 1, 2, 3]
    assert len(set(per_block.values())) == 1 and per_block[0] > 1  # every block cut, alike


def test_raising_max_groups_as_the_error_advises_cuts_blocks_finer(fresh_dynamo):
    # max_groups=8 allows 2 tasks per block, too coarse here: the error says to raise
    # max_groups, and a higher one plans it (the test above).
    caps = {f"cuda:{i}": "404KB" for i in range(3)}
    with pytest.raises(ValueError, match="raise max_groups to cut the graph finer"):
        autopart.plan_model(Stack(4), torch.randn(4, 128), topology="4xa100-pcie-cpu", max_memory=caps,
                            max_groups=8)


def test_many_identical_blocks_that_fit_whole_stay_one_task_each(fresh_dynamo):
    # 8 blocks on 3 devices of 1 MB: 3 + 3 + 2 whole blocks fit, so nothing is cut.
    caps = {f"cuda:{i}": "1MB" for i in range(3)}
    plan = autopart.plan_model(Stack(8), torch.randn(4, 128), topology="4xa100-pcie-cpu",
                               max_memory=caps, max_groups=32)[0]
    assert tasks_per_block(plan) == {i: 1 for i in range(8)}
    assert len(plan.tasks) == 8 + 2  # the blocks, the inputs and the output


@pytest.mark.parametrize(
    "name, preset, num_tasks",
    # the tasks of bench/results/solver-*-2026-11-24.md, mode gpus: before blocks could be cut
    [("gpt2", "4xa100-pcie-cpu", 22), ("bert", "4xa100-pcie-cpu", 19), ("llama3-8b", "8xh100-nvlink", 20)],
)
def test_shipped_transformers_keep_whole_layers_when_they_fit(name, preset, num_tasks):
    graph = AnnotatedGraph.load(GRAPHS / f"{name}.json")
    topo = Topology.preset(preset)
    gpus = [d for d in topo.devices if d.kind != "cpu"]
    share = math.ceil(sum(n.resident_bytes for n in graph.nodes) / max(len(gpus) - 2, 2))  # bench's rule
    caps = {d.name: 0 if d.kind == "cpu" else share for d in topo.devices}
    problem = build_problem(graph, topo, caps, origin_device=origin_resolver(topo, {}), max_groups=32)
    assert len(problem.tasks) == num_tasks
    task_of = {n: i for i, t in enumerate(problem.tasks) for n in t.nodes}
    compute = [n for n in graph.nodes if n.is_compute]
    for s, e in repeated_blocks(compute):  # no layer is cut
        assert len({task_of[n.name] for n in compute[s:e]}) == 1


def test_finer_cuts_are_what_max_groups_allows():
    nodes = compute_nodes("gpt2")  # 12 layers
    weight = lambda n: 1.0 + n.resident_bytes / 1e6  # noqa: E731
    assert finer_block_pieces(nodes, weight, 8) == []  # fewer groups than layers: merged
    assert finer_block_pieces(nodes, weight, 32) == [2]
    assert finer_block_pieces(nodes, weight, 64) == [2, 4]
    assert finer_block_pieces(compute_nodes("resnet50"), weight, 64) == []  # no repeated blocks
    blocks = repeated_blocks(nodes)
    position = {n.name: i for i, n in enumerate(nodes)}
    groups = group_nodes(nodes, weight, 64, block_pieces=4)
    assert [n for g in groups for n in g] == nodes and len(groups) <= 64
    inside = [g for g in groups if blocks[0][0] <= position[g[0].name] < blocks[-1][1]]
    assert len(inside) == 4 * len(blocks)
    for k, (s, e) in enumerate(blocks):  # each layer cut the same way as the first
        cut = [[position[n.name] - s for n in g] for g in inside[4 * k : 4 * k + 4]]
        assert cut == [[position[n.name] - blocks[0][0] for n in g] for g in inside[:4]]
        assert cut[0][0] == 0 and cut[-1][-1] == e - s - 1
    assert group_nodes(nodes, weight, 64, block_pieces=1) == group_nodes(nodes, weight, 64)
    with pytest.raises(ValueError, match="block_pieces must be >= 1, got 0"):
        group_nodes(nodes, weight, 64, block_pieces=0)
