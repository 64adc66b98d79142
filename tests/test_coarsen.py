"""Coarsening: repeated blocks (transformer layers) found and grouped alike; other graphs keep
the generic grouping."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from autopart.coarsen import MIN_BLOCKS_TO_KEEP_WHOLE, group_nodes, repeated_blocks
from autopart.graph import AnnotatedGraph

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
