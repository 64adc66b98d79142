"""End-to-end tests: real models compiled with the autopart backend, planned over several
topology devices, run on this machine's CPU through ``device_map``, and compared with eager.

Covers: transformers models (GPT-2, BERT, Llama with grouped KV heads, ViT, ResNet) split over
three devices of a preset or of a hand-made topology; plan invariants; steady-state parameter
copies (and the copy cache itself, ``autopart.runtime.StaticInputMover``); graph breaks and
recompiles; warn-and-fallback and strict mode; bad options; the ``torch_dynamo_backends`` entry
point; Plan JSON round trip.

"""

from __future__ import annotations

import copy
import gc
import importlib
import importlib.metadata
import json
import operator
import pickle
import re
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import autopart
from autopart.config import format_bytes
from autopart.dynamo import plan_model_backend
from autopart.passes.cost import is_inplace
from autopart.runtime import RuntimeMetrics, StaticInputMover

transformers = pytest.importorskip("transformers")

PRESET = "4xa100-pcie-cpu"  # devices cpu, cuda:0 .. cuda:3
RTOL, ATOL = 1e-4, 1e-5
MAX_GROUPS = 16  # the ILP's solve time grows fast with the number of groups; 16 keeps it < 1 s
COMPUTE_OPS = ("call_function", "call_method", "call_module")


# --------------------------------------------------------------------------- helpers


pytestmark = pytest.mark.usefixtures("fresh_dynamo")  # each test compiles with its own backend


def model_bytes(model: nn.Module) -> int:
    """Bytes of parameters and buffers (tied parameters counted once)."""
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


def hand_topology() -> autopart.Topology:
    """A hand-made 3-device machine: a CPU and two GPUs (one NVLink pair, both on PCIe)."""

    def device(name, kind, tflops, bw_Bps):
        return {
            "name": name,
            "kind": kind,
            "memory_bytes": 16 * 2**30,
            "peak_flops": {"float32": tflops * 1e12},
            "mem_bandwidth_Bps": bw_Bps,
            "launch_overhead_s": 5e-6 if kind == "cpu" else 1e-5,
        }

    def link(src, dst, kind, bw_Bps, latency_s):
        return {"src": src, "dst": dst, "kind": kind, "bandwidth_Bps": bw_Bps, "latency_s": latency_s}

    links = []
    for gpu in ("cuda:0", "cuda:1"):
        links += [link("cpu", gpu, "pcie", 16e9, 1e-5), link(gpu, "cpu", "pcie", 16e9, 1e-5)]
    links += [
        link("cuda:0", "cuda:1", "nvlink", 100e9, 5e-6),
        link("cuda:1", "cuda:0", "nvlink", 100e9, 5e-6),
    ]
    return autopart.Topology.from_dict(
        {
            "schema_version": 1,
            "name": "test-cpu-2gpu",
            "devices": [
                device("cpu", "cpu", 1.0, 100e9),
                device("cuda:0", "cuda", 20.0, 1.5e12),
                device("cuda:1", "cuda", 10.0, 9e11),
            ],
            "links": links,
        }
    )


def split_options(model: nn.Module, *, hand: bool = False, fraction: float = 0.6, **extra) -> dict:
    """Options for a plan over three devices that each hold ``fraction`` of the model's bytes
    (so with fraction < 1 the plan must split), run on this machine's CPU, strict.

    hand=False: three GPUs of the 4xa100 preset; hand=True: cpu + 2 GPUs of hand_topology().
    """
    cap = int(model_bytes(model) * fraction)
    if hand:
        topology, names = hand_topology(), ("cpu", "cuda:0", "cuda:1")
    else:
        topology, names = PRESET, ("cuda:0", "cuda:1", "cuda:2")
    options = dict(
        topology=topology,
        max_memory={name: cap for name in names},
        device_map="cpu",
        strict=True,
        max_groups=MAX_GROUPS,
    )
    options.update(extra)
    return options


def _is_tensor_node(node: torch.fx.Node) -> bool:
    val = node.meta.get("val", node.meta.get("example_value"))
    return isinstance(val, torch.Tensor)


def check_plan(comp: autopart.Compilation, topology_devices: list[str]) -> autopart.Plan:
    """Invariants every executed plan must hold; returns the plan."""
    assert comp.fallback_reason is None, comp.fallback_reason
    plan = comp.plan
    assert isinstance(plan, autopart.Plan)
    assert comp.runner is not None
    graph = comp.graph.graph

    # every compute node is placed, on a device of the topology
    compute = [n.name for n in graph.nodes if n.op in COMPUTE_OPS]
    assert compute
    missing = [name for name in compute if name not in plan.placement]
    assert not missing, f"unplaced compute nodes: {missing}"
    assert set(plan.placement.values()) <= set(topology_devices)
    assert set(plan.devices_used) <= {d for d, cap in plan.capacity_bytes.items() if cap > 0}

    # memory: predicted peak within capacity on every device
    assert set(plan.predicted_peak_bytes) == set(plan.capacity_bytes)
    for device, peak in plan.predicted_peak_bytes.items():
        assert 0 <= peak <= plan.capacity_bytes[device], (device, peak, plan.capacity_bytes)

    # transfers go between two different devices and start where their source was placed
    sent = set()
    for t in plan.transfers:
        assert isinstance(t, autopart.Transfer)
        assert t.src_device != t.dst_device, t
        assert {t.src_device, t.dst_device} <= set(topology_devices), t
        assert plan.placement[t.source_node] == t.src_device, t
        assert t.nbytes > 0, t
        assert t.reason
        sent.add((t.source_node, t.dst_device))
    assert len(sent) == len(plan.transfers), "a tensor is sent twice to the same device"

    # every cut edge carrying a tensor has its transfer
    for node in graph.nodes:
        if node.op not in COMPUTE_OPS:
            continue
        dst = plan.placement[node.name]
        for arg in node.all_input_nodes:
            src = plan.placement.get(arg.name)
            if src is not None and src != dst and _is_tensor_node(arg):
                assert (arg.name, dst) in sent, f"edge {arg.name} -> {node.name} ({src} -> {dst})"

    # solver outcome is coherent
    assert plan.solver_status in ("optimal", "feasible", "trivial", "heuristic"), plan.solver_status
    if plan.solver_status == "heuristic":  # a starting point HiGHS did not improve on, with its bound
        assert plan.gap is not None and plan.gap <= autopart.Config().mip_rel_gap, plan.gap
    assert plan.predicted_time_s > 0
    assert plan.solve_time_s >= 0
    if plan.bound is not None:
        assert plan.bound <= plan.objective * (1 + 1e-6) + 1e-12
    if plan.gap is not None:
        assert 0.0 <= plan.gap <= 1.0
    # plan devices are all mapped onto this machine's CPU
    assert set(plan.device_map) == set(topology_devices)
    assert set(plan.device_map.values()) == {"cpu"}
    return plan


def num_partitions(comp: autopart.Compilation) -> int:
    return sum(1 for name, _ in comp.runner.module.named_children() if name.startswith("submod_"))


def assert_split_and_matches(model, inputs: dict, key: str, options: dict, topology_devices):
    """Compile ``model`` with autopart(**options), compare ``out[key]`` with eager, check plans."""
    model.eval()
    backend = autopart.backend(**options)
    compiled = torch.compile(model, backend=backend)
    with torch.no_grad():
        ref = getattr(model(**inputs), key)
        out = getattr(compiled(**inputs), key)
    torch.testing.assert_close(out, ref, rtol=RTOL, atol=ATOL)
    assert backend.compilations, "autopart compiled nothing"
    assert len(backend.plans) == len(backend.compilations)
    for comp in backend.compilations:
        check_plan(comp, topology_devices)
    # the fraction < 1 capacities force a split, and the runtime really runs partitions
    main = max(backend.compilations, key=lambda c: len(c.graph.graph.nodes))
    assert len(main.plan.devices_used) >= 2, main.plan.summary()
    assert num_partitions(main) >= 2
    assert main.metrics.num_calls == 1
    return backend


PRESET_DEVICES = ["cpu", "cuda:0", "cuda:1", "cuda:2", "cuda:3"]
HAND_DEVICES = ["cpu", "cuda:0", "cuda:1"]


# --------------------------------------------------------------------------- 1. transformers models


def test_gpt2_split_over_three_gpus():
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_layer=2, n_embd=64, n_head=4, vocab_size=500, n_positions=32, bos_token_id=0, eos_token_id=0
    )
    model = transformers.GPT2LMHeadModel(config)
    inputs = {"input_ids": torch.randint(0, 500, (2, 12))}
    backend = assert_split_and_matches(model, inputs, "logits", split_options(model), PRESET_DEVICES)
    # only the three GPUs given memory hold work; cuda:3 and the cpu hold nothing
    for plan in backend.plans:
        assert set(plan.devices_used) <= {"cuda:0", "cuda:1", "cuda:2"}
        assert plan.predicted_peak_bytes["cuda:3"] == 0


def test_bert_split_over_hand_made_topology():
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=300,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=32,
    )
    model = transformers.BertModel(config)
    attention_mask = torch.ones(2, 10, dtype=torch.long)
    attention_mask[1, 7:] = 0  # padding in the second sequence
    inputs = {"input_ids": torch.randint(0, 300, (2, 10)), "attention_mask": attention_mask}
    backend = assert_split_and_matches(
        model, inputs, "last_hidden_state", split_options(model, hand=True), HAND_DEVICES
    )
    assert all(p.topology_name == "test-cpu-2gpu" for p in backend.plans)


def test_llama_gqa_split_over_three_gpus():
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=300,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    model = transformers.LlamaForCausalLM(config)
    inputs = {"input_ids": torch.randint(0, 300, (2, 12))}
    assert_split_and_matches(model, inputs, "logits", split_options(model), PRESET_DEVICES)


def test_vit_split_over_three_gpus():
    torch.manual_seed(0)
    config = transformers.ViTConfig(
        image_size=32,
        patch_size=8,
        num_channels=3,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
    )
    model = transformers.ViTModel(config)
    inputs = {"pixel_values": torch.randn(2, 3, 32, 32)}
    assert_split_and_matches(model, inputs, "last_hidden_state", split_options(model, fraction=0.9), PRESET_DEVICES)


def test_resnet_split_over_hand_made_topology():
    torch.manual_seed(0)
    config = transformers.ResNetConfig(
        num_channels=3, embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], layer_type="basic"
    )
    model = transformers.ResNetModel(config)
    inputs = {"pixel_values": torch.randn(2, 3, 32, 32)}
    # conv activations are large next to these tiny weights: 0.6 of the weights per device
    # cannot hold the stem's activations, 0.8 can (and still forces a split)
    options = split_options(model, hand=True, fraction=0.8)
    assert_split_and_matches(model, inputs, "last_hidden_state", options, HAND_DEVICES)


class ConvBN(nn.Module):
    """Three equal conv + batch-norm layers: any one fits a device holding 0.6 of the weights."""

    def __init__(self, channels=8):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1) for _ in range(3))
        self.bns = nn.ModuleList(nn.BatchNorm2d(channels) for _ in range(3))

    def forward(self, x):
        for conv, bn in zip(self.convs, self.bns):
            x = torch.relu(bn(conv(x)))
        return x.mean(dim=(2, 3))


def test_batchnorm_running_stats_updated_in_train_mode():
    """Buffers mutated in place by a split graph (batch-norm statistics) end up in the module."""
    torch.manual_seed(0)
    model = ConvBN().train()
    ref_model = copy.deepcopy(model)
    backend = autopart.backend(**split_options(model, fraction=0.8))
    compiled = torch.compile(model, backend=backend)
    with torch.no_grad():
        for _ in range(2):
            x = torch.randn(2, 8, 4, 4)
            torch.testing.assert_close(compiled(x), ref_model(x), rtol=RTOL, atol=ATOL)
    for name, buf in ref_model.named_buffers():
        torch.testing.assert_close(dict(model.named_buffers())[name], buf, rtol=RTOL, atol=ATOL)
    comp = backend.compilations[-1]
    check_plan(comp, PRESET_DEVICES)
    assert len(comp.plan.devices_used) >= 2


def test_gradients_flow_through_a_split_graph():
    """Training: backward through the partitions gives eager's gradients on every parameter."""
    torch.manual_seed(0)
    model = _mlp().train()
    ref_model = copy.deepcopy(model)
    # training with SGD: weights and gradients (2x) do not fit one device holding 0.9x
    backend = autopart.backend(**split_options(model, fraction=0.9, optimizer="sgd"))
    compiled = torch.compile(model, backend=backend)
    x = torch.randn(4, 16)
    compiled(x).square().sum().backward()
    ref_model(x).square().sum().backward()
    for (name, p), q in zip(model.named_parameters(), ref_model.parameters()):
        assert p.grad is not None, name
        torch.testing.assert_close(p.grad, q.grad, rtol=RTOL, atol=ATOL)
    (comp,) = backend.compilations
    check_plan(comp, PRESET_DEVICES)
    assert len(comp.plan.devices_used) >= 2


def _devices_planned(model: nn.Module, grad: bool, **options) -> autopart.Plan:
    torch._dynamo.reset()
    backend = autopart.backend(**options)
    with torch.set_grad_enabled(grad):
        torch.compile(model, backend=backend)(torch.randn(4, 16))
    (comp,) = backend.compilations
    return check_plan(comp, PRESET_DEVICES)


def test_training_plans_reserve_gradients_optimizer_state_and_saved_activations():
    """With gradients enabled, each device holds its parameters' gradients and optimizer state
    (Adam: 2 tensors per parameter) and the activations autograd saves; the training steps
    match eager."""
    torch.manual_seed(0)
    model = _mlp().train()
    weights = model_bytes(model)
    options = split_options(model, fraction=2.1)  # four GPUs holding 2.1x the weights each
    options["max_memory"]["cuda:3"] = options["max_memory"]["cuda:0"]
    inference = _devices_planned(model, grad=False, **options)
    sgd = _devices_planned(model, grad=True, optimizer="sgd", **options)
    adam = _devices_planned(model, grad=True, **options)
    assert len(inference.devices_used) == 1
    # SGD: weights and gradients, 2x; Adam: also exp_avg, exp_avg_sq and the update's
    # temporaries, 6x
    assert len(adam.devices_used) >= 3 and len(adam.devices_used) > len(sgd.devices_used)
    assert sum(adam.predicted_peak_bytes.values()) >= 6 * weights
    assert sum(sgd.predicted_peak_bytes.values()) >= 2 * weights

    ref_model = copy.deepcopy(model)
    compiled = torch.compile(model, backend=autopart.backend(**options))
    steps = [torch.optim.AdamW(m.parameters(), lr=1e-2) for m in (model, ref_model)]
    for _ in range(2):
        x = torch.randn(4, 16)
        for fn, opt in zip((compiled, ref_model), steps):
            opt.zero_grad()
            fn(x).square().mean().backward()
            opt.step()
    for p, q in zip(model.parameters(), ref_model.parameters()):
        torch.testing.assert_close(p, q, rtol=RTOL, atol=ATOL)


def test_a_training_plan_that_cannot_fit_says_why_and_how_to_plan_inference():
    model = _mlp().train()
    backend = autopart.backend(**split_options(model, fraction=0.5))  # 1.5x in all: Adam needs 6x
    with pytest.raises(torch._dynamo.exc.BackendCompilerFailed) as info:
        torch.compile(model, backend=backend)(torch.randn(4, 16))
    message = str(info.value.inner_exception)
    assert "gradients, optimizer state and temporaries, and activations saved for backward" in message
    assert "torch.no_grad()" in message and "optimizer='sgd'" in message


def assert_same_grads(model: nn.Module, ref_model: nn.Module) -> None:
    """Every parameter has eager's gradient, and ``None`` where eager has ``None``."""
    for (name, p), q in zip(model.named_parameters(), ref_model.parameters()):
        assert (p.grad is None) == (q.grad is None), f"{name}: grad {p.grad} where eager has {q.grad}"
        if q.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, rtol=RTOL, atol=ATOL)


class _GatedUnderNoGrad(nn.Module):
    """``h`` is read first inside ``torch.no_grad()`` (a gate, as HF's rotary embeddings compute
    under no_grad) and then by ops autograd must differentiate."""

    def __init__(self, vocab: int = 512, dim: int = 64):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.proj = nn.Linear(dim, dim)
        self.up = nn.Linear(dim, 4 * dim)
        self.down = nn.Linear(4 * dim, dim)

    def forward(self, ids):
        h = self.emb(ids)
        with torch.no_grad():
            gate = torch.sigmoid(self.proj(h).amax(-1, keepdim=True))
        return self.down(torch.relu(self.up(h * gate)))


def test_copy_inside_a_no_grad_region_keeps_gradients(monkeypatch):
    """A copy inserted before its first reader, inside a no_grad region, still carries autograd
    to the readers outside it: every parameter gets eager's gradient. Copies are made real (as
    to another GPU; a CPU-to-CPU ``to`` returns the tensor itself and would hide the bug)."""
    transfer_module = importlib.import_module("autopart.kernels.transfer")  # the package exports a function of that name
    monkeypatch.setattr(transfer_module, "_async_copy", lambda t, device: t.to(device, copy=True))
    torch.manual_seed(0)
    model = _GatedUnderNoGrad().train()
    ref_model = copy.deepcopy(model)
    backend = autopart.backend(**split_options(model, fraction=1.0, optimizer="sgd", contiguous_stages=True))
    ids = torch.randint(0, 512, (2, 12))
    torch.compile(model, backend=backend)(ids).sum().backward()
    ref_model(ids).sum().backward()
    (comp,) = backend.compilations
    check_plan(comp, PRESET_DEVICES)
    assert_same_grads(model, ref_model)
    assert model.emb.weight.grad is not None
    copies = [n for n in comp.runner.flat.graph.nodes if n.target is autopart.rewrite.transfer]
    wrapped = [n for n in copies if n.prev.target is torch._C._set_grad_enabled and n.prev.args == (True,)]
    assert wrapped, "no copy landed inside the no_grad region: the test no longer covers the case"


class _TwoHeads(nn.Module):
    """A body and two outputs: the hidden states and a small "pooled" head of its own weights."""

    def __init__(self, dim: int = 64):
        super().__init__()
        self.up = nn.Linear(dim, 4 * dim)
        self.down = nn.Linear(4 * dim, dim)
        self.pooler = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        h = self.down(torch.relu(self.up(x)))
        return h, h[:, 0] * self.pooler


def test_outputs_keep_eager_autograd_semantics():
    """Outputs sent back from other devices: a parameter that only feeds an output the loss
    does not use keeps ``grad`` None, as in eager (coalesced copies made it a zero tensor, which
    AdamW's weight decay then moves), and an output can be modified in place."""
    torch.manual_seed(0)
    model = _TwoHeads().train()
    ref_model = copy.deepcopy(model)
    backend = autopart.backend(**split_options(model, fraction=1.2, optimizer="sgd"))
    x = torch.randn(1, 12, 64)
    h, _ = torch.compile(model, backend=backend)(x)
    h_ref, _ = ref_model(x)
    h.sum().backward()
    h_ref.sum().backward()
    (comp,) = backend.compilations
    check_plan(comp, PRESET_DEVICES)
    assert len(comp.plan.devices_used) >= 2
    assert_same_grads(model, ref_model)
    assert model.pooler.grad is None
    h, _ = torch.compile(model, backend=backend)(x)
    h.mul_(2)  # e.g. logits /= temperature
    torch.testing.assert_close(h, 2 * ref_model(x)[0], rtol=RTOL, atol=ATOL)


# --------------------------------------------------------------------------- 2. steady state


def _mlp():
    """Four equal linears (4224 bytes each): 0.6 of the weights per device forces a split."""
    return nn.Sequential(
        nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 32), nn.ReLU(),
        nn.Linear(32, 16),
    )


def test_steady_state_makes_no_parameter_copies():
    """On this machine every topology device maps to the CPU, so parameters never need a copy:
    the counters stay at 0 on every call, also after an in-place update, and the output follows
    the updated parameters."""
    torch.manual_seed(0)
    model = _mlp().eval()
    backend = autopart.backend(**split_options(model))
    compiled = torch.compile(model, backend=backend)
    x = torch.randn(4, 16)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=RTOL, atol=ATOL)
        (comp,) = backend.compilations
        assert len(comp.plan.devices_used) >= 2
        # the runner knows where each parameter must go: here, always the local CPU
        assert comp.runner.static_moves, "no parameter/buffer is moved by the runtime"
        assert set(comp.runner.static_moves.values()) == {torch.device("cpu")}
        metrics = comp.metrics
        assert metrics.num_static_copies == 0 and metrics.static_copy_bytes == 0
        for calls in (2, 3):
            torch.testing.assert_close(compiled(x), model(x), rtol=RTOL, atol=ATOL)
            assert metrics.num_calls == calls
            assert metrics.num_static_copies == 0

        model[2].weight.add_(1.0)  # an optimizer-like in-place update
        torch.testing.assert_close(compiled(x), model(x), rtol=RTOL, atol=ATOL)
        model[0].weight.data = torch.randn_like(model[0].weight)  # a new tensor under .data
        torch.testing.assert_close(compiled(x), model(x), rtol=RTOL, atol=ATOL)
    assert len(backend.compilations) == 1, "the update made Dynamo recompile"
    assert metrics.num_calls == 5
    assert metrics.num_static_copies == 0
    assert metrics.num_write_backs == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_steady_state_copies_to_a_real_gpu():
    """With cuda:0 of the topology on this machine's GPU and the other devices on the CPU,
    parameters placed on cuda:0 are copied once; steady state copies nothing; an in-place update
    makes the next call re-copy, and the output follows the update."""
    torch.manual_seed(0)
    model = _mlp().eval()
    options = split_options(model)
    options["device_map"] = {name: "cpu" for name in PRESET_DEVICES} | {"cuda:0": "cuda:0"}
    backend = autopart.backend(**options)
    compiled = torch.compile(model, backend=backend)
    x = torch.randn(4, 16)
    tol = dict(rtol=1e-4, atol=1e-4)  # GPU and CPU sum in different orders
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), **tol)
        (comp,) = backend.compilations
        on_gpu = [i for i, d in comp.runner.static_moves.items() if d.type == "cuda"]
        assert on_gpu, comp.plan.summary()  # symmetry breaking uses cuda:0 first
        metrics = comp.metrics
        first = metrics.num_static_copies
        assert first == len(on_gpu) and metrics.static_copy_bytes > 0
        for _ in range(2):
            torch.testing.assert_close(compiled(x), model(x), **tol)
            assert metrics.num_static_copies == first
        for p in model.parameters():
            p.add_(0.5)
        torch.testing.assert_close(compiled(x), model(x), **tol)
        assert metrics.num_static_copies == 2 * first
        torch.testing.assert_close(compiled(x), model(x), **tol)
        assert metrics.num_static_copies == 2 * first
    assert len(backend.compilations) == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_moved_trainable_parameters_train_on_their_planned_gpu():
    """trainable_parameters="move": parameters planned on the GPU move there on the first step
    and stay (later steps copy nothing), Adam's moments are made there, and the losses and
    parameters follow eager training on the CPU."""
    torch.manual_seed(0)
    model = _mlp().train()
    reference = copy.deepcopy(model)
    options = split_options(model, fraction=1.5)
    options["device_map"] = {name: "cpu" for name in PRESET_DEVICES} | {"cuda:0": "cuda:0"}
    backend = autopart.backend(trainable_parameters="move", **options)
    compiled = torch.compile(model, backend=backend)
    opt, ref_opt = (torch.optim.Adam(m.parameters(), lr=1e-2) for m in (model, reference))
    x = torch.randn(4, 16)
    tol = dict(rtol=1e-4, atol=1e-5)  # GPU and CPU sum in different orders

    def train_step(m, o):
        loss = m(x).square().mean()
        loss.backward()
        o.step()
        o.zero_grad()
        return loss.detach().cpu()

    for step in range(4):
        if step == 3:
            copies = backend.compilations[-1].metrics.num_static_copies
        torch.testing.assert_close(train_step(compiled, opt), train_step(reference, ref_opt), **tol)
    assert backend.compilations[-1].metrics.num_static_copies == copies  # nothing copied at steady state
    on_gpu = [p for p in model.parameters() if p.device.type == "cuda"]
    assert on_gpu, backend.compilations[-1].plan.summary()
    for p in on_gpu:
        assert opt.state[p]["exp_avg"].device == opt.state[p]["exp_avg_sq"].device == p.device
    for p, q in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p.detach().cpu(), q.detach(), **tol)
    assert backend.compilations[-1].plan.step_copies == ()


def test_a_trainable_parameter_that_cannot_move_is_copied_under_autograd():
    """move_trainable moves only what ``param.data`` can hold (dense CPU and GPU tensors): a
    ``meta`` target gets a copy made under autograd every step, the parameter stays."""
    metrics = RuntimeMetrics()
    weight = nn.Parameter(torch.randn(4, 8))
    meta = torch.device("meta")
    assert not autopart.runtime.movable(weight, meta) and autopart.runtime.movable(weight, torch.device("cpu"))
    with torch.enable_grad():
        args = [weight, torch.randn(2, 8)]
        StaticInputMover({0: meta}, metrics, move_trainable=True).move(args)
    assert args[0] is not weight and args[0].device == meta and args[0].grad_fn is not None
    assert weight.device.type == "cpu" and weight not in autopart.runtime._MOVED


def test_optimizer_state_follows_a_moved_parameter():
    """Before a step, state tensors shaped as a parameter autopart moved go to its device;
    Adam's scalar step count stays on the CPU; other parameters' state is left alone."""
    moved = nn.Parameter(torch.empty(4, 8, device="meta"))
    other = nn.Parameter(torch.empty(4, 8, device="meta"))
    opt = torch.optim.Adam([moved, other])
    for p in (moved, other):
        opt.state[p] = {"step": torch.tensor(1.0), "exp_avg": torch.zeros(4, 8), "exp_avg_sq": torch.zeros(4, 8)}
    autopart.runtime._MOVED[moved] = moved.data_ptr()  # as move_parameter records it
    autopart.runtime._state_follows_parameters(opt)
    assert opt.state[moved]["exp_avg"].is_meta and opt.state[moved]["exp_avg_sq"].is_meta
    assert opt.state[moved]["step"].device.type == "cpu"
    assert opt.state[other]["exp_avg"].device.type == "cpu"


def test_the_ledger_still_counts_a_parameter_autopart_moved():
    """A parameter whose data autopart moved (to its planned device) still counts there for the
    model's later graphs; one whose data the user replaced is placed anew."""
    torch.manual_seed(0)
    model = _mlp().train()
    backend = autopart.backend(**split_options(model, fraction=2.2))
    torch.compile(model, backend=backend)(torch.randn(4, 16))
    ledger = backend._ledger
    moved, replaced = list(model.parameters())[:2]
    device, before = ledger.device_of(moved), ledger.held_bytes()
    assert device is not None and ledger.device_of(replaced) is not None
    moved.data = moved.data.clone()
    autopart.runtime._MOVED[moved] = moved.data_ptr()  # as move_parameter leaves it
    replaced_bytes = sum(ledger._entries[id(replaced)][2].values())
    replaced.data = replaced.data.clone()  # the user's own replacement
    assert ledger.device_of(moved) == device and ledger.device_of(replaced) is None
    assert sum(before.values()) - sum(ledger.held_bytes().values()) == replaced_bytes > 0


def test_static_input_mover_reuses_copies_until_the_original_changes():
    """The copy cache of the runtime, on a target device that really differs (meta)."""
    metrics = RuntimeMetrics()
    weight = nn.Parameter(torch.randn(4, 8))
    buffer = torch.randn(8)
    mover = StaticInputMover({0: torch.device("meta"), 2: torch.device("meta")}, metrics)
    x = torch.randn(2, 8)
    nbytes = weight.numel() * 4 + buffer.numel() * 4

    with torch.no_grad():
        args = [weight, x, buffer]
        mover.move(args)
        assert args[0].device.type == "meta" and args[2].device.type == "meta"
        assert args[1] is x  # not a static input: untouched
        assert args[0].shape == weight.shape and args[0].dtype == weight.dtype
        assert metrics.num_static_copies == 2 and metrics.static_copy_bytes == nbytes
        first = args[0]

        for _ in range(2):  # steady state: same copies, no new copy
            args = [weight, x, buffer]
            mover.move(args)
            assert args[0] is first
        assert metrics.num_static_copies == 2

        weight.add_(1.0)  # in-place update: version counter changes
        args = [weight, x, buffer]
        mover.move(args)
        assert args[0] is not first
        assert metrics.num_static_copies == 3
        assert metrics.static_copy_bytes == nbytes + weight.numel() * 4
        second = args[0]

        args = [weight, x, buffer]
        mover.move(args)
        assert args[0] is second and metrics.num_static_copies == 3

        weight.data = torch.randn(4, 8)  # new storage under the same Parameter
        args = [weight, x, buffer]
        mover.move(args)
        assert args[0] is not second
        assert metrics.num_static_copies == 4

        other = nn.Parameter(weight.detach().clone())  # a different tensor in the same slot
        args = [other, x, buffer]
        mover.move(args)
        assert metrics.num_static_copies == 5

        already_there = torch.empty(3, device="meta")  # already on its target: no copy
        args = [already_there, x, buffer]
        mover.move(args)
        assert args[0] is already_there and metrics.num_static_copies == 5


def test_static_input_mover_copies_under_autograd_every_call():
    """A parameter whose gradient autograd needs is copied on each call (so gradients flow)."""
    metrics = RuntimeMetrics()
    weight = nn.Parameter(torch.randn(4, 8))
    mover = StaticInputMover({0: torch.device("meta")}, metrics)
    for calls in (1, 2, 3):
        args = [weight]
        mover.move(args)
        assert args[0].requires_grad and args[0].grad_fn is not None
        assert metrics.num_static_copies == calls


# --------------------------------------------------------------------------- 3. graph breaks


class TwoStage(nn.Module):
    """Two stages separated by a graph break; each stage holds two equal linears, so a device
    holding ~0.7 of one stage's weights forces each stage's plan to split."""

    def __init__(self, width=32):
        super().__init__()
        self.a1, self.a2 = nn.Linear(width, width), nn.Linear(width, width)
        self.b1, self.b2 = nn.Linear(width, width), nn.Linear(width, width)

    def forward(self, x):
        x = torch.relu(self.a2(torch.relu(self.a1(x))))
        torch._dynamo.graph_break()
        return torch.tanh(self.b2(torch.tanh(self.b1(x)))) * 2

    def stage_bytes(self) -> int:
        return model_bytes(self.a1) + model_bytes(self.a2)


def _two_stage_options(model: TwoStage, **extra) -> dict:
    # Four GPUs of 0.8 of a stage's bytes each: each stage must be split over two GPUs, and as
    # all weights stay resident, the two stages need all four.
    cap = int(model.stage_bytes() * 0.8)
    options = dict(
        topology=PRESET,
        max_memory={f"cuda:{i}": cap for i in range(4)},
        device_map="cpu",
        strict=True,
    )
    options.update(extra)
    return options


def test_graph_break_each_graph_planned_and_recompile_on_new_shape():
    torch.manual_seed(0)
    model = TwoStage().eval()
    backend = autopart.backend(**_two_stage_options(model))
    compiled = torch.compile(model, backend=backend)
    with torch.no_grad():
        x = torch.randn(4, 32)
        torch.testing.assert_close(compiled(x), model(x), rtol=RTOL, atol=ATOL)
        assert len(backend.compilations) == 2
        for comp in backend.compilations:
            plan = check_plan(comp, PRESET_DEVICES)
            assert len(plan.devices_used) >= 2, plan.summary()
        first = len(backend.compilations)
        for batch in (7, 3):  # new shapes: recompiles (then automatic dynamic shapes)
            x = torch.randn(batch, 32)
            torch.testing.assert_close(compiled(x), model(x), rtol=RTOL, atol=ATOL)
    assert len(backend.compilations) > first
    assert len(backend.plans) == len(backend.compilations)
    for comp in backend.compilations:
        check_plan(comp, PRESET_DEVICES)
    assert sum(c.metrics.num_calls for c in backend.compilations) == 2 * 3


class _ViewBySize(nn.Module):
    """``ids.view(-1, ids.size(1))`` and ``h.view(shape)``, as T5 and OPT do: views whose sizes
    are symbolic (a SymInt, a ``torch.Size``)."""

    def __init__(self, dim: int = 64):
        super().__init__()
        self.emb = nn.Embedding(20, dim)
        self.fc1, self.fc2 = nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, ids):
        h = self.emb(ids.view(-1, ids.size(1)))
        shape = h.size()
        h = self.fc1(h.reshape(-1, h.size(-1))).view(shape)
        return self.fc2(torch.relu(h))


@pytest.mark.parametrize("training", [False, True])
def test_a_dynamic_graph_is_planned_once_for_every_length(training):
    """Re-running nodes to cost them adds no guard: Dynamo's eager backend and autopart both
    compile one graph for three sequence lengths (the cost and training passes re-ran nodes in
    Dynamo's fake mode, which guarded the first length)."""
    torch.manual_seed(0)
    model = _ViewBySize().train(training)
    ref_model = copy.deepcopy(model)
    backend = autopart.backend(**split_options(model, fraction=1.2 if training else 0.8, optimizer="sgd"))
    compiled = torch.compile(model, backend=backend, dynamic=True)
    with torch.set_grad_enabled(training):
        for length in (12, 9, 7):
            ids = torch.randint(0, 20, (2, length))
            out = compiled(ids)
            torch.testing.assert_close(out, ref_model(ids), rtol=RTOL, atol=ATOL)
    assert len(backend.compilations) == 1
    plan = check_plan(backend.compilations[0], PRESET_DEVICES)
    assert len(plan.devices_used) >= 2
    if training:
        out.sum().backward()
        ref_model(ids).sum().backward()
        assert_same_grads(model, ref_model)


def test_graph_break_dynamic_shapes():
    torch.manual_seed(0)
    model = TwoStage().eval()
    backend = autopart.backend(**_two_stage_options(model))
    compiled = torch.compile(model, backend=backend, dynamic=True)
    with torch.no_grad():
        for batch in (4, 7, 3, 9):
            x = torch.randn(batch, 32)
            torch.testing.assert_close(compiled(x), model(x), rtol=RTOL, atol=ATOL)
    # symbolic shapes: one graph per stage serves every batch size
    assert len(backend.compilations) == 2
    for comp in backend.compilations:
        plan = check_plan(comp, PRESET_DEVICES)
        assert len(plan.devices_used) >= 2
        assert comp.metrics.num_calls == 4


@pytest.mark.parametrize("training", [False, True])
def test_graph_break_plans_share_the_memory_budget(training):
    """Later graphs see what earlier ones hold: weights, and in training (SGD) their gradients
    and the activations the first graph saves for backward."""
    torch.manual_seed(0)
    model = TwoStage().train(training)
    options = _two_stage_options(model, optimizer="sgd")
    if training:  # 2x each stage's weights: each GPU holds 1.4x a stage's weights
        options["max_memory"] = {d: 2 * cap for d, cap in options["max_memory"].items()}
    backend = autopart.backend(**options)
    with torch.set_grad_enabled(training):
        torch.compile(model, backend=backend)(torch.randn(4, 32))
    assert len(backend.plans) == 2
    first, second = backend.plans
    held: dict[str, int] = {}
    saved = 0
    for node in backend.compilations[0].analysis.graph.nodes:
        device = first.placement[node.name]
        if node.role == "parameter":
            held[device] = held.get(device, 0) + (2 if training else 1) * node.tensors[0].nbytes
        elif node.role == "compute":  # saved for backward: alive in the 2nd forward
            held[device] = held.get(device, 0) + node.training_bytes
            saved += node.training_bytes
    assert {d: first.capacity_bytes[d] - second.capacity_bytes[d] for d in first.capacity_bytes} == {
        d: held.get(d, 0) for d in first.capacity_bytes
    }
    assert (saved > 0) == training
    resident: dict[str, int] = {}
    for plan in backend.plans:
        for task in plan.tasks:
            resident[task.device] = resident.get(task.device, 0) + task.resident_bytes
    for device, nbytes in resident.items():
        assert nbytes <= first.capacity_bytes[device], (device, nbytes)


class BrokenLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(64, 64), nn.Linear(64, 64)

    def forward(self, x):
        x = torch.relu(self.a(x))
        torch._dynamo.graph_break()
        return torch.tanh(self.b(x))


class BrokenLayers(nn.Module):
    """Four layers with a graph break inside each: Dynamo captures two graphs, and runs each of
    them four times per forward, once with each layer's parameters."""

    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList(BrokenLayer() for _ in range(4))

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


def _broken_layers_options(model: nn.Module, fraction: float, **extra) -> dict:
    cap = int(model_bytes(model) * fraction)
    return dict(topology=PRESET, device_map="cpu", max_memory={f"cuda:{i}": cap for i in range(3)},
                strict=True, max_groups=MAX_GROUPS, **extra)


def test_a_graph_run_with_each_layers_parameters_plans_each_layer():
    """A graph break inside a repeated layer: each set of parameters a graph runs with gets a
    plan of its own, made with the memory the earlier ones hold, so the layers spread over the
    GPUs within their caps (one plan for all would put every layer's weights on one GPU)."""
    torch.manual_seed(0)
    model = BrokenLayers().eval()
    backend = autopart.backend(**_broken_layers_options(model, 0.5))
    compiled = torch.compile(model, backend=backend)
    x = torch.randn(2, 64)
    with torch.no_grad():
        for _ in range(2):
            torch.testing.assert_close(compiled(x), model(x), rtol=0, atol=0)
    comps = backend.compilations
    assert len(comps) == 8 and sorted(c.instance for c in comps) == [0, 0, 1, 1, 2, 2, 3, 3]
    assert all(c.metrics.num_calls == 2 for c in comps)  # the second forward reuses every plan
    held = backend._ledger.held_bytes()
    assert sum(held.values()) == model_bytes(model)  # every layer's weights, once
    assert all(held[d] <= cap for d, cap in comps[0].plan.capacity_bytes.items() if cap)
    assert len({d for c in comps for d in c.plan.devices_used}) == 3
    planned = autopart.plan_model(model, x, **_broken_layers_options(model, 0.5))
    assert len(planned) == 8 and len({d for p in planned for d in p.devices_used}) == 3


def test_each_layers_plan_trains_and_counts_its_saved_activations_apart():
    torch.manual_seed(0)
    model = BrokenLayers().train()
    reference = copy.deepcopy(model)
    backend = autopart.backend(**_broken_layers_options(model, 2.0, optimizer="sgd"))
    x = torch.randn(2, 64)
    torch.compile(model, backend=backend)(x).sum().backward()
    reference(x).sum().backward()
    for p, q in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad)
    comps = backend.compilations
    assert len(comps) == 8
    saved = {c.instance for c in comps if any(n.training_bytes for n in c.analysis.graph.nodes if n.is_compute)}
    assert saved == {0, 1, 2, 3}
    assert len(backend._ledger._saved) == 8  # per frame and parameter set: alive together until backward


def test_a_deleted_model_releases_what_the_ledger_holds_for_it():
    """A sweep (or a notebook cell run again) makes a model, trains one step and drops it: the
    next model gets the whole memory, not what is left after every dead one."""
    backend = autopart.backend(topology=PRESET, device_map="cpu", strict=True, optimizer="sgd",
                               max_memory={f"cuda:{i}": "1MB" for i in range(3)})
    x = torch.randn(512, 64)
    held = []
    for _ in range(4):
        model = nn.Sequential(*[m for _ in range(6) for m in (nn.Linear(64, 64), nn.Tanh())])
        torch.compile(model, backend=backend)(x).sum().backward()
        held.append(sum(backend._ledger.held_bytes().values()))
        del model
        gc.collect()
    assert len(backend.plans) == 2 and held[0] > 0  # the graph's first plan and the last model's
    assert held == held[:1] * 4, held
    assert sum(backend._ledger.held_bytes().values()) == 0


def test_parameters_made_anew_on_every_call_stop_getting_plans(monkeypatch):
    """Past MAX_INSTANCES parameter sets, a graph warns once and runs further sets with its
    first plan."""
    monkeypatch.setattr(autopart.dynamo, "MAX_INSTANCES", 2)
    torch.manual_seed(0)
    model = BrokenLayers().eval()
    backend = autopart.backend(**_broken_layers_options(model, 2.0))
    compiled = torch.compile(model, backend=backend)
    x = torch.randn(2, 64)
    with torch.no_grad(), pytest.warns(autopart.AutopartWarning, match="ran with 2 sets of parameters") as caught:
        torch.testing.assert_close(compiled(x), model(x), rtol=0, atol=0)
        torch.testing.assert_close(compiled(x), model(x), rtol=0, atol=0)
    assert len(backend.compilations) == 4  # two graphs, two parameter sets each
    assert len([w for w in caught if "sets of parameters" in str(w.message)]) == 2  # once per graph


def test_a_layer_that_does_not_fit_runs_as_captured_with_a_warning():
    torch.manual_seed(0)
    model = BrokenLayers().eval()
    backend = autopart.backend(**{**_broken_layers_options(model, 0.3), "strict": False})
    x = torch.randn(2, 64)
    with torch.no_grad(), pytest.warns(autopart.AutopartWarning, match=r"could not plan .*\[instance \d\]"):
        torch.testing.assert_close(torch.compile(model, backend=backend)(x), model(x), rtol=0, atol=0)


class Reused(nn.Module):
    """One linear run on both sides of a graph break (``broken``), as a tied weight is."""

    def __init__(self, broken: bool):
        super().__init__()
        self.lin, self.out, self.broken = nn.Linear(32, 32), nn.Linear(32, 32), broken

    def forward(self, x):
        x = torch.relu(self.lin(x))
        if self.broken:
            torch._dynamo.graph_break()
        return self.out(torch.tanh(self.lin(x)))


def test_an_update_is_counted_once_across_graph_breaks():
    """A parameter both graphs read is updated once per step: the graph that placed it first
    counts its optimizer update, the later one does not, so the plans' optimizer steps add up
    to the unbroken model's."""
    torch.manual_seed(0)
    steps = {}
    for broken in (False, True):
        torch._dynamo.reset()
        model = Reused(broken).train()
        backend = plan_model_backend(model, torch.randn(4, 32), training=True, **split_options(model, fraction=4.0))
        assert len(backend.plans) == (2 if broken else 1)
        steps[broken] = [plan.predicted_optimizer_s for plan in backend.plans]
    graph = backend.compilations[0].analysis.graph
    assert {n.name for n in graph.nodes if n.step_ops} >= {"l_self_modules_lin_parameters_weight_"}
    assert sum(steps[True]) == pytest.approx(sum(steps[False]))
    assert all(s > 0 for s in steps[True])  # the second graph updates `out`


def test_a_recompiled_frame_does_not_reserve_its_own_saved_activations():
    """A frame's recompile (new batch size) runs instead of its first graph: the second plan
    loses the weights and gradients the first placed, not the first graph's saved activations."""
    torch.manual_seed(0)
    model = _mlp().train()
    backend = autopart.backend(**split_options(model, fraction=1.5, optimizer="sgd"))
    compiled = torch.compile(model, backend=backend)
    for batch in (4, 8):
        compiled(torch.randn(batch, 16)).sum().backward()
    first, second = backend.plans
    held: dict[str, int] = {}
    for node in backend.compilations[0].analysis.graph.nodes:
        if node.role == "parameter":
            device = first.placement[node.name]
            held[device] = held.get(device, 0) + 2 * node.tensors[0].nbytes
    assert {d: first.capacity_bytes[d] - second.capacity_bytes[d] for d in first.capacity_bytes} == {
        d: held.get(d, 0) for d in first.capacity_bytes
    }


# --------------------------------------------------------------------------- 4. fallback


def test_fallback_warns_once_and_matches_eager():
    torch.manual_seed(0)
    model = _mlp().eval()
    backend = autopart.backend(
        topology=PRESET, device_map="cpu", max_memory={"cuda:0": 100, "cuda:1": 100}, strict=False
    )
    compiled = torch.compile(model, backend=backend)
    x = torch.randn(4, 16)
    with warnings.catch_warnings(record=True) as caught, torch.no_grad():
        warnings.simplefilter("always")
        out = compiled(x)
        out2 = compiled(x)  # no new warning on later calls
    ours = [w for w in caught if issubclass(w.category, autopart.AutopartWarning)]
    assert len(ours) == 1, [str(w.message) for w in ours]
    torch.testing.assert_close(out, model(x), rtol=0, atol=0)
    torch.testing.assert_close(out2, out, rtol=0, atol=0)

    (comp,) = backend.compilations
    assert comp.plan is None and comp.runner is None
    assert comp.fallback_reason is not None
    assert comp.fallback_reason.startswith("ValueError")
    assert re.search(r"needs \d+ bytes", comp.fallback_reason)
    assert repr(comp).endswith(f"nodes: runs as captured: {comp.fallback_reason})")
    message = str(ours[0].message)
    assert comp.fallback_reason in message
    assert "strict=True" in message
    assert backend.plans == []


def test_strict_raises_backend_compiler_failed_with_the_value_error():
    model = _mlp().eval()
    nbytes = model_bytes(model)
    backend = autopart.backend(
        topology=PRESET, device_map="cpu", max_memory={"cuda:0": 100, "cuda:1": 100}, strict=True
    )
    compiled = torch.compile(model, backend=backend)
    with warnings.catch_warnings(record=True) as caught, torch.no_grad():
        warnings.simplefilter("always")
        with pytest.raises(torch._dynamo.exc.BackendCompilerFailed) as info:
            compiled(torch.randn(4, 16))
    inner = info.value.inner_exception
    assert isinstance(inner, ValueError)
    assert f"needs {nbytes} bytes" in str(inner)
    assert "200 bytes" in str(inner)
    assert not [w for w in caught if issubclass(w.category, autopart.AutopartWarning)]
    assert backend.compilations[0].plan is None


# --------------------------------------------------------------------------- 5. bad input


def test_plan_model_too_little_memory_names_needed_and_available_bytes():
    model = _mlp()
    nbytes = model_bytes(model)
    with pytest.raises(ValueError, match=rf"needs {nbytes} bytes .* allow only 300 bytes") as info:
        autopart.plan_model(
            model,
            torch.randn(2, 16),
            topology=PRESET,
            max_memory={"cuda:0": 100, "cuda:1": "100B", 2: 100},
        )
    assert "max_memory" in str(info.value)  # says how to fix it


def test_device_map_unknown_topology_device():
    with pytest.raises(ValueError, match=r"device_map names 'cuda:9'.*not a device of topology"):
        autopart.plan_model(_mlp(), torch.randn(2, 16), topology=PRESET, device_map={"cuda:9": "cpu"})


def test_device_map_value_not_a_local_device():
    missing = f"cuda:{torch.cuda.device_count()}"  # one past this machine's last GPU
    with pytest.raises(ValueError, match=rf"device_map\['cuda:0'\] = '{missing}' is not a device of this machine"):
        autopart.plan_model(
            _mlp(), torch.randn(2, 16), topology=PRESET, device_map={"cuda:0": missing}
        )


def test_device_map_value_not_a_device_string():
    with pytest.raises(ValueError, match=r"device_map"):
        autopart.plan_model(
            _mlp(), torch.randn(2, 16), topology=PRESET, device_map={"cuda:0": "banana"}
        )


def test_topology_device_missing_locally_without_device_map():
    missing = f"cuda:{torch.cuda.device_count()}"  # one past this machine's last GPU
    topo = hand_topology().to_dict()  # cpu + a GPU this machine lacks (no cuda:0 kept)
    topo["devices"] = [d for d in topo["devices"] if d["name"] != "cuda:0"]
    topo["links"] = [lk for lk in topo["links"] if "cuda:0" not in (lk["src"], lk["dst"])]
    topo["devices"][1]["name"] = missing
    for link in topo["links"]:
        for end in ("src", "dst"):
            if link[end] == "cuda:1":
                link[end] = missing
    topology = autopart.Topology.from_dict(topo)
    with pytest.raises(ValueError, match=rf"has device '{missing}', which this machine lacks.*device_map"):
        autopart.backend(topology=topology, strict=True)  # no device_map
    # A backend built directly (as the entry point's default one) fails at its first compile.
    backend = autopart.Backend(autopart.Config(topology=topology, strict=True))
    with pytest.raises(torch._dynamo.exc.BackendCompilerFailed) as info:
        torch.compile(_mlp(), backend=backend)(torch.randn(2, 16))
    assert isinstance(info.value.inner_exception, ValueError)
    assert re.search(rf"has device '{missing}', which this machine lacks", str(info.value.inner_exception))


def test_unknown_option_is_a_type_error():
    with pytest.raises(TypeError, match=r"unknown autopart option\(s\) \['max_memroy'\]"):
        autopart.backend(max_memroy={"cuda:0": "1GB"})
    with pytest.raises(TypeError, match=r"max_memroy"):
        autopart.plan_model(_mlp(), torch.randn(2, 16), max_memroy={"cuda:0": "1GB"})


def test_invalid_option_values_are_value_errors():
    with pytest.raises(ValueError, match=r"max_memory\['cuda:0'\].*'12 parsecs'"):
        autopart.backend(max_memory={"cuda:0": "12 parsecs"})
    with pytest.raises(ValueError, match=r"solver='gurobi'"):
        autopart.backend(solver="gurobi")
    with pytest.raises(ValueError, match=r"max_groups"):
        autopart.backend(max_groups=0)
    with pytest.raises(ValueError, match=r"max_memory names device 'cuda:7'"):
        autopart.plan_model(
            _mlp(), torch.randn(2, 16), topology=PRESET, device_map="cpu", max_memory={"cuda:7": 1}
        )


def _malformed_topology_dict() -> dict:
    topo = hand_topology().to_dict()
    topo["devices"][1]["memory_bytes"] = -5
    return topo


def test_malformed_topology_dict_rejected_naming_the_field():
    with pytest.raises(ValueError, match=r"topology\.devices\[1\]\.memory_bytes.*-5"):
        autopart.Topology.from_dict(_malformed_topology_dict())
    topo = hand_topology().to_dict()
    del topo["links"][0]["bandwidth_Bps"]
    with pytest.raises(ValueError, match=r"topology\.links\[0\].*bandwidth_Bps"):
        autopart.Topology.from_dict(topo)


def test_malformed_topology_dict_as_option():
    with pytest.raises(ValueError, match=r"topology\.devices\[1\]\.memory_bytes"):
        autopart.plan_model(
            _mlp(), torch.randn(2, 16), topology=_malformed_topology_dict(), device_map="cpu"
        )


def test_unknown_topology_name_rejected_by_backend():
    with pytest.raises(ValueError, match=r"topology='no-such-preset'"):
        autopart.backend(topology="no-such-preset", device_map="cpu")


def test_unknown_topology_name_rejected_by_plan_model():
    with pytest.raises(ValueError, match=r"topology='no-such-preset' is neither a preset"):
        autopart.plan_model(_mlp(), torch.randn(2, 16), topology="no-such-preset")


# --------------------------------------------------------------------------- 6. entry point


def test_entry_point_is_listed():
    names = [ep.name for ep in importlib.metadata.entry_points(group="torch_dynamo_backends")]
    assert "autopart" in names


def test_entry_point_loads_the_default_backend():
    (ep,) = [
        ep
        for ep in importlib.metadata.entry_points(group="torch_dynamo_backends")
        if ep.name == "autopart"
    ]
    assert ep.load() is autopart.autopart_backend


def test_compile_with_backend_name():
    torch.manual_seed(0)
    model = _mlp().eval()
    compiled = torch.compile(model, backend="autopart")
    x = torch.randn(4, 16)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=RTOL, atol=ATOL)
    plans = autopart.last_plans()
    assert plans and all(isinstance(p, autopart.Plan) for p in plans)


def test_compile_with_backend_name_and_options():
    """torch.compile(backend="autopart", options={...}) plans with those options; the graphs of
    one model (a graph break) share one configured backend and so one memory ledger."""
    torch.manual_seed(0)
    model = TwoStage().eval()
    options = _two_stage_options(model)
    compiled = torch.compile(model, backend="autopart", options=options)
    x = torch.randn(4, 32)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=RTOL, atol=ATOL)
    first, second = autopart.last_plans()
    assert first.topology_name == second.topology_name == PRESET
    assert set(first.devices_used) | set(second.devices_used) == set(options["max_memory"])
    assert sum(second.capacity_bytes.values()) < sum(first.capacity_bytes.values())  # first's weights


def test_compile_with_backend_name_rejects_a_mode_and_unknown_options():
    model = _mlp().eval()
    with pytest.raises(torch._dynamo.exc.BackendCompilerFailed, match=r"mode='max-autotune'.*'inductor'"):
        torch.compile(model, backend="autopart", mode="max-autotune")(torch.randn(4, 16))
    torch._dynamo.reset()
    with pytest.raises(torch._dynamo.exc.BackendCompilerFailed, match=r"unknown autopart option\(s\) \['max_memroy'\]"):
        torch.compile(model, backend="autopart", options={"max_memroy": {}})(torch.randn(4, 16))
    torch._dynamo.reset()
    with pytest.raises(torch._dynamo.exc.BackendCompilerFailed, match=r"max_memory names device 'cuda:9', which topology '4xa100-pcie-cpu' does not have"):
        torch.compile(model, backend="autopart", options={"topology": PRESET, "device_map": "cpu",
                                                          "max_memory": {"cuda:9": "1GB"}})(torch.randn(4, 16))


def test_default_backend_runs_on_this_machine():
    """The object the entry point should load: default options, this machine's topology."""
    torch.manual_seed(0)
    model = _mlp().eval()
    compiled = torch.compile(model, backend=autopart.autopart_backend)
    x = torch.randn(4, 16)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=RTOL, atol=ATOL)
    plans = autopart.last_plans()
    assert plans and all(isinstance(p, autopart.Plan) for p in plans)
    assert plans[-1] is autopart.autopart_backend.compilations[-1].plan
    local = set(autopart.topology.local_devices())
    assert set(plans[-1].devices_used) <= local
    assert autopart.compilations()[-1].plan is plans[-1]
    comp = autopart.compilations()[-1]
    assert repr(comp) == (f"Compilation({comp.graph_name!r}, {len(comp.graph.graph.nodes)} nodes: latency plan on "
                          f"{', '.join(plans[-1].devices_used)} ({plans[-1].solver_status}), 1 call(s))")


def test_last_plans_follows_the_most_recent_backend():
    torch.manual_seed(0)
    first = autopart.backend(**split_options(_mlp()))
    second = autopart.backend(**split_options(_mlp(), hand=True))
    x = torch.randn(2, 16)
    with torch.no_grad():
        torch.compile(_mlp().eval(), backend=first)(x)
        assert autopart.last_plans() == first.plans
        torch.compile(_mlp().eval(), backend=second)(x)
    assert autopart.last_plans() == second.plans
    assert autopart.last_plans()[0].topology_name == "test-cpu-2gpu"
    autopart.reset()
    assert autopart.last_plans() == []


# --------------------------------------------------------------------------- 7. plan round trip


def test_a_plan_says_which_devices_its_energy_leaves_out(tmp_path):
    """Devices without power figures count 0 W: the plan names them rather than show a total
    silently too low (hand_topology's devices have none)."""
    torch.manual_seed(0)
    model = _mlp()
    (plan,) = autopart.plan_model(model, torch.randn(2, 16), **split_options(model, hand=True))
    assert set(plan.energy_unknown) >= set(plan.devices_used) and plan.predicted_energy_J == 0
    assert f"energy 0 J (not counting {', '.join(plan.energy_unknown)}: no power figures)" in plan.summary()
    plan.save(tmp_path / "p.json")
    assert autopart.Plan.load(tmp_path / "p.json") == plan
    powered = autopart.plan_model(model, torch.randn(2, 16), **split_options(model))[0]  # the preset's
    assert powered.energy_unknown == () and "not counting" not in powered.summary()


def test_plan_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = _mlp()
    plans = autopart.plan_model(model, torch.randn(2, 16), **split_options(model))
    assert len(plans) == 1
    (plan,) = plans
    assert len(plan.devices_used) >= 2 and plan.transfers
    assert set(plan.predicted_busy_s) >= set(plan.devices_used)
    assert max(plan.predicted_busy_s.values()) == plan.predicted_bottleneck_s

    path = tmp_path / "p.json"
    plan.save(path)
    loaded = autopart.Plan.load(path)
    assert loaded == plan
    assert isinstance(loaded.transfers[0], autopart.Transfer)
    assert json.loads(path.read_text())["placement"] == plan.placement
    assert [p.name for p in tmp_path.iterdir()] == ["p.json"]  # no temporary file left

    summary = plan.summary()
    assert plan.topology_name in summary
    for device in plan.devices_used:
        assert device in summary
    assert str(plan) == summary

    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"bad\.json: invalid JSON at line 1"):
        autopart.Plan.load(tmp_path / "bad.json")


def test_plan_model_training_plans_as_a_compiled_training_step_does():
    """plan_model(training=True) reserves what a compiled call with gradients enabled does, and
    the Plan says it was planned for training."""
    torch.manual_seed(0)
    model = _mlp().train()
    options = split_options(model, fraction=2.2)
    (offline,) = autopart.plan_model(model, torch.randn(4, 16), training=True, **options)
    compiled = _devices_planned(model, grad=True, **options)
    (inference,) = autopart.plan_model(model, torch.randn(4, 16), **options)
    assert offline.training and compiled.training and not inference.training
    assert offline.predicted_peak_bytes == compiled.predicted_peak_bytes
    assert offline.placement == compiled.placement
    assert len(offline.devices_used) == 3 and len(inference.devices_used) == 1
    assert "for training" in offline.summary() and "for training" not in inference.summary()


def test_a_training_plan_costs_forward_backward_and_the_optimizer_and_monitors_the_forward():
    """A training plan's compute is each node's forward plus backward time on its device, plus
    each trainable parameter's update by the optimizer there; its ``predicted_busy_s`` (what
    monitor measures) is the forward's alone."""
    torch.manual_seed(0)
    model = _mlp().train()
    options = split_options(model, fraction=2.2)
    backend = plan_model_backend(model, torch.randn(4, 16), training=True, **options)
    (comp,) = backend.compilations
    plan, graph = comp.plan, comp.analysis.graph
    topology = comp.problem.topology
    forward, backward = graph.node_times(topology), graph.node_times(topology, backward=True)
    step = graph.node_times(topology, step=True)
    compute = [n for n in graph.nodes if n.is_compute]
    fwd_s = sum(forward[n.name][plan.placement[n.name]] for n in compute)
    bwd_s = sum(backward[n.name][plan.placement[n.name]] for n in compute)
    step_s = sum(step[n.name][plan.placement[n.name]] for n in graph.nodes if n.role == "parameter")
    assert bwd_s > fwd_s > 0  # two matrix products back for each one forward, but the first's
    assert step_s > 0 and plan.predicted_optimizer_s == pytest.approx(step_s)
    assert plan.predicted_compute_s == pytest.approx(fwd_s + bwd_s + step_s)
    assert f"; optimizer step {step_s * 1e3:.3f} ms)" in plan.summary()
    forward_copies = sum(plan.predicted_busy_s.values()) - fwd_s
    assert forward_copies > 0 and plan.predicted_transfer_s > forward_copies  # gradients come back
    assert 0 < plan.predicted_forward_s < plan.predicted_time_s
    assert f"; forward {plan.predicted_forward_s * 1e3:.3f} ms;" in plan.summary()
    (inference,) = autopart.plan_model(model, torch.randn(4, 16), **options)
    assert sum(inference.predicted_busy_s.values()) == pytest.approx(inference.predicted_compute_s + inference.predicted_transfer_s)
    assert inference.predicted_forward_s == inference.predicted_time_s


def test_a_training_plan_lists_the_parameters_each_step_copies_to_another_device():
    """The model's parameters stay where it keeps them: a training plan lists each trainable
    one it puts on another device (copied there every step, its gradient back) with its bytes;
    frozen parameters, inference plans and devices run by one local device list none."""
    torch.manual_seed(0)
    model = _mlp().train()
    model[0].requires_grad_(False)
    mapped = split_options(model, fraction=2.2)
    (on_this_cpu,) = autopart.plan_model(model, torch.randn(4, 16), training=True, **mapped)
    assert len(on_this_cpu.devices_used) == 3 and on_this_cpu.step_copies == ()
    unmapped = {k: v for k, v in mapped.items() if k != "device_map"}
    (plan,) = autopart.plan_model(model, torch.randn(4, 16), training=True, **unmapped)
    (inference,) = autopart.plan_model(model, torch.randn(4, 16), **unmapped)
    assert inference.step_copies == ()
    sizes = [p.numel() * 4 for p in model.parameters() if p.requires_grad]
    assert sorted(c.nbytes for c in plan.step_copies) == sorted(sizes) and len(sizes) == 6
    for c in plan.step_copies:
        assert c.src_device == "cpu" and c.dst_device == plan.placement[c.source_node] != "cpu"
    total = format_bytes(sum(sizes))
    assert f"gradients back (counted in the tasks' time): 6 ({total} each way)" in plan.summary()
    assert autopart.Plan.from_dict(plan.to_dict()) == plan


@pytest.mark.parametrize("trainable_parameters", ["copy", "move"])
def test_training_plans_count_the_copies_of_parameters_planned_away_from_their_device(trainable_parameters):
    """With "copy", a task's time on a device its trainable parameters do not live on counts
    their copy there (forward) and their gradients' way back (backward), alpha-beta over the
    links, and the optimizer's update where they live; on their own device, and with "move" or
    one local device, it is its nodes' time and the update there."""
    torch.manual_seed(0)
    model = _mlp().train()
    model[0].requires_grad_(False)
    x = torch.randn(4, 16)
    mapped = split_options(model, fraction=2.2, trainable_parameters=trainable_parameters)
    unmapped = {k: v for k, v in mapped.items() if k != "device_map"}
    for options in (mapped, unmapped):
        (comp,) = plan_model_backend(model, x, training=True, **options).compilations
        graph, problem = comp.analysis.graph, comp.problem
        topology = problem.topology
        forward, backward = graph.node_times(topology), graph.node_times(topology, backward=True)
        step = graph.node_times(topology, step=True)
        copies = trainable_parameters == "copy" and options is unmapped
        assert (comp.plan.step_copies != ()) == copies
        for task in problem.tasks:
            members = [graph.node(name) for name in task.nodes]
            trained = [m for m in members if m.role == "parameter" and m.requires_grad]
            assert all(step[m.name]["cpu"] > 0 for m in trained)
            for d in ("cpu", "cuda:0", "cuda:1"):
                copied = copies and d != "cpu"
                up = sum(topology.transfer_time_s("cpu", d, m.tensors[0].nbytes) for m in trained) if copied else 0.0
                down = sum(topology.transfer_time_s(d, "cpu", m.tensors[0].nbytes) for m in trained) if copied else 0.0
                update = sum(step[m.name]["cpu" if copied else d] for m in trained)
                nodes_back = sum(backward[m.name][d] for m in members if m.is_compute)
                nodes_all = sum(forward[m.name][d] for m in members if m.is_compute) + nodes_back
                assert task.time_s.get(d, 0.0) == pytest.approx(nodes_all + up + down + update)
                assert task.backward_time_s.get(d, 0.0) == pytest.approx(nodes_back + down)
                assert task.step_time_s.get(d, 0.0) == pytest.approx(update)


@pytest.mark.parametrize("host_capacity", [True, False])
def test_copied_trainable_parameters_keep_their_gradients_and_state_where_they_live(host_capacity):
    """With "copy", a task on a device its trainable parameters do not live on holds there
    their copies and their gradients (on the way back); their gradients and optimizer state
    count where they live (the CPU), when the plan may use that device, and the plan's peak
    there includes them. Elsewhere, and for frozen parameters, all bytes stay on the device."""
    torch.manual_seed(0)
    model = _mlp().train()
    model[0].requires_grad_(False)
    cap = int(model_bytes(model) * 2.2)
    # the CPU cannot hold all the training state (6x the trained weights, + the frozen ones)
    max_memory = {"cuda:0": cap, "cuda:1": cap, **({"cpu": 2 * cap} if host_capacity else {})}
    options = dict(topology=PRESET, max_memory=max_memory, strict=True, max_groups=MAX_GROUPS)
    backend = plan_model_backend(model, torch.randn(4, 16), training=True, **options)
    (comp,) = backend.compilations
    graph, problem, plan = comp.analysis.graph, comp.problem, comp.plan
    copied = 0
    for task in problem.tasks:
        trained = [m for m in map(graph.node, task.nodes) if m.role == "parameter" and m.requires_grad]
        state = sum(m.reserved_training_bytes for m in trained)  # gradient, Adam's two tensors, temporaries
        grads = sum(m.tensors[0].nbytes for m in trained)
        assert state == 5 * grads
        for d in ("cuda:0", "cuda:1"):
            expected = {d: task.resident_bytes - state + grads, **({"cpu": state} if host_capacity else {})}
            assert task.held_bytes(d) == (expected if trained else {d: task.resident_bytes})
        if host_capacity:
            assert task.held_bytes("cpu") == {"cpu": task.resident_bytes}
        if plan.placement[task.nodes[0]] != "cpu":
            copied += state
    assert copied > 0  # some trainable parameters are planned on a GPU
    on_cpu = sum(t.held_elsewhere.get("cpu", 0) for t in plan.tasks)
    assert on_cpu == (copied if host_capacity else 0)
    for d, peak in plan.predicted_peak_bytes.items():
        assert peak <= plan.capacity_bytes[d]
    if host_capacity:
        resident_on_cpu = sum(t.resident_bytes for t in plan.tasks if t.device == "cpu") + on_cpu
        assert plan.predicted_peak_bytes["cpu"] >= resident_on_cpu
    # what the model's later graphs count as held, per parameter: the same split
    entries = backend._ledger._entries
    for param in model.parameters():
        _, device, where, _ = entries[id(param)]
        nbytes = param.numel() * 4
        if not param.requires_grad:
            assert where == {device: nbytes}
        elif device == "cpu":  # it, its gradient, Adam's two tensors and the update's two temporaries
            assert where == {"cpu": 6 * nbytes}
        else:  # the copy and its gradient; the rest where it lives
            assert where == {device: 2 * nbytes, "cpu": 5 * nbytes}


def test_plan_model_that_captures_no_graph_says_so():
    with pytest.raises(ValueError, match="plan_model captured no graph: Dynamo ran the model eagerly") as info:
        autopart.plan_model(lambda a: a + 1, 3, topology=PRESET)
    assert "then autopart.solve_graph(graph, **options)" in str(info.value)


def test_a_backend_reads_as_the_call_that_made_it():
    backend = autopart.backend(topology=PRESET, device_map="cpu", max_memory={"cuda:0": "1GiB"})
    assert repr(backend) == "autopart.backend(topology='4xa100-pcie-cpu', max_memory={'cuda:0': '1GiB'}, device_map='cpu')"
    with pytest.raises(ValueError, match=r"device_map='cuda:7' is not a device of this machine; local devices are \['cpu'"):
        autopart.backend(topology=PRESET, device_map="cuda:7")


def test_a_planned_graph_that_never_ran_has_no_report():
    (comp,) = plan_model_backend(_mlp(), torch.randn(4, 16), topology=PRESET, device_map="cpu").compilations
    with pytest.raises(ValueError, match="was planned, not run \\(plan_model\\): nothing to report"):
        comp.report()


def test_plan_model_training_with_nothing_to_train_is_an_error():
    model = _mlp().requires_grad_(False)
    with pytest.raises(ValueError, match=r"training=True, but no parameter or input .*requires_grad_\(\)"):
        autopart.plan_model(model, torch.randn(4, 16), training=True, **split_options(model, fraction=1.5))


def test_plan_model_needs_no_local_devices_and_runs_nothing_planned():
    """plan_model plans for hardware this machine lacks (no device_map) and returns Plans."""
    torch.manual_seed(0)
    model = _mlp()
    cap = int(model_bytes(model) * 0.6)
    plans = autopart.plan_model(
        model, torch.randn(2, 16), topology=PRESET, max_memory={"cuda:0": cap, "cuda:1": cap}
    )
    (plan,) = plans
    assert len(plan.devices_used) == 2
    assert set(plan.devices_used) == {"cuda:0", "cuda:1"}
    for device, peak in plan.predicted_peak_bytes.items():
        assert peak <= plan.capacity_bytes[device]


def test_deleted_models_free_their_worker_threads():
    """After the model is gone and Dynamo is reset, nothing of its plans stays alive: no host
    worker thread, and autopart.compilations() forgets its graphs."""
    import gc
    import threading

    before = set(threading.enumerate())
    for _ in range(3):
        model = TwoStage().eval()
        cap = _two_stage_options(model)["max_memory"]["cuda:0"]
        backend = autopart.backend(**{**_two_stage_options(model), "max_memory": {"cpu": cap, "cuda:0": 3 * cap}})
        with torch.no_grad():
            torch.compile(model, backend=backend)(torch.randn(4, 32))
        assert any(c.metrics.num_host_steps for c in backend.compilations)  # a worker thread ran
        del model, backend
        torch._dynamo.reset()
        gc.collect()
    workers = [t for t in set(threading.enumerate()) - before if t.name.startswith("autopart-host")]
    for thread in workers:
        thread.join(timeout=10)
    assert not [t for t in workers if t.is_alive()]
    assert autopart.compilations() == []


def _two_stage_on_cpu_and_gpu():
    torch.manual_seed(0)
    model = TwoStage().eval()
    cap = _two_stage_options(model)["max_memory"]["cuda:0"]
    backend = autopart.backend(**{**_two_stage_options(model), "max_memory": {"cpu": cap, "cuda:0": 3 * cap}})
    return model, backend, torch.compile(model, backend=backend), torch.randn(4, 32)


def test_a_model_still_runs_after_its_backend_is_reset():
    model, backend, compiled, x = _two_stage_on_cpu_and_gpu()
    with torch.no_grad():
        compiled(x)
        backend.reset()
        assert backend.compilations == [] and not backend._copies.entries
        torch.testing.assert_close(compiled(x), model(x), rtol=0, atol=0)


def test_every_dynamo_reset_resets_a_backend_still_in_use():
    """A compiled model called again after torch._dynamo.reset() compiles with its backend
    again; the next reset frees that too (Dynamo forgets a backend on each reset)."""
    model, backend, compiled, x = _two_stage_on_cpu_and_gpu()
    for _ in range(3):
        with torch.no_grad():
            torch.testing.assert_close(compiled(x), model(x), rtol=0, atol=0)
        assert len(backend.compilations) == 2  # the graphs before and after the graph break
        torch._dynamo.reset()
        assert backend.compilations == [] and autopart.compilations() == []


def test_a_model_converted_after_compiling_is_planned_anew_within_memory():
    """model.to(float64) replaces each parameter's data: the recompiled plan places the new,
    larger weights within max_memory instead of where the old ones were."""
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(64, 64) for _ in range(4)]).eval()
    options = split_options(model, fraction=1.2)  # fp32 fits one GPU, fp64 needs two
    backend = autopart.backend(**options)
    compiled = torch.compile(model, backend=backend)
    with torch.no_grad():
        compiled(torch.randn(8, 64))
        model.to(torch.float64)
        x = torch.randn(8, 64, dtype=torch.float64)
        torch.testing.assert_close(compiled(x), model(x), rtol=0, atol=0)
    first, second = backend.plans
    assert len(first.devices_used) == 1 and len(second.devices_used) == 2
    for plan in (first, second):
        for device, nbytes in plan.predicted_peak_bytes.items():
            assert nbytes <= plan.capacity_bytes[device], (device, plan.summary())


UPDATES = {  # in-place updates of (a view of) the caller's tensor, as Dynamo records them
    "add_ of a view": lambda x, b: x[:, :128].add_(b[:, :128]),
    "setitem": lambda x, b: x.__setitem__((slice(None), slice(0, 128)), b[:, :128] * 2),
    "iadd": lambda x, b: operator.iadd(x, b),
    "mul_ of narrow": lambda x, b: x.narrow(1, 0, 64).mul_(b[:, :64]),
    "out=": lambda x, b: torch.add(x, b, out=x),
    "inplace=True": lambda x, b: nn.functional.leaky_relu(x, 0.1, inplace=True),
}


class UpdatesItsInput(nn.Module):
    def __init__(self, update):
        super().__init__()
        self.a = nn.Sequential(*[nn.Linear(256, 256) for _ in range(3)])
        self.b = nn.Sequential(*[nn.Linear(256, 256) for _ in range(3)])
        self.update = update

    def forward(self, x):
        a = self.a(x) + x
        b = self.b(x)
        self.update(x, b)
        return a, b


def assert_planned_the_same_offline(comp: autopart.Compilation, options: dict, tmp_path: Path) -> None:
    """The graph saved as JSON and planned with ``options`` by ``autopart.solve_graph`` gets
    the plan the backend made: the saved graph keeps what ties nodes to a device or a task."""
    path = tmp_path / "graph.json"
    comp.analysis.graph.save(path)
    offline = autopart.solve_graph(path, **options)
    assert offline.placement == comp.plan.placement, (offline.summary(), comp.plan.summary())


@pytest.mark.parametrize("kind", list(UPDATES))
def test_an_in_place_update_of_an_input_reaches_the_callers_tensor(kind, tmp_path):
    """The update, and the views it updates through, run on the input's device, so it updates
    the caller's tensor, not a copy; offline plans of the saved graph keep them there too."""
    torch.manual_seed(0)
    model = UpdatesItsInput(UPDATES[kind])
    nb = model_bytes(model)
    options = dict(topology=PRESET, device_map="cpu", strict=True,
                   max_memory={"cpu": int(nb * 0.75), "cuda:0": int(nb * 0.75)})
    backend = autopart.backend(**options)
    compiled = torch.compile(model, backend=backend)
    x = torch.randn(64, 256)
    ours, theirs = x.clone(), x.clone()
    with torch.no_grad():
        out, ref = compiled(ours), model(theirs)
    for o, r in zip(out, ref):
        torch.testing.assert_close(o, r, rtol=0, atol=0)
    assert not torch.equal(theirs, x)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    plan = backend.plans[0]
    assert len(plan.devices_used) == 2
    graph = backend.compilations[0].graph
    updates = [n for n in graph.graph.nodes if is_inplace(n)]
    assert len(updates) == 1, [n.target for n in graph.graph.nodes]
    node = updates[0]
    while node.op != "placeholder":  # the update and the views it writes through
        assert plan.placement[node.name] == "cpu", (node.name, plan.summary())
        node = node.args[0] if node is not updates[0] or "out" not in node.kwargs else node.kwargs["out"]
    assert_planned_the_same_offline(backend.compilations[0], options, tmp_path)


class ReadsThenUpdatesItsInput(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(*[nn.Linear(32, 32) for _ in range(3)])

    def forward(self, x):
        h = self.layers(x)
        x[:, :4].mul_(2)  # after every read of x, on x's device
        return h + 1


def test_partitions_reading_an_input_run_before_its_in_place_update():
    """The update runs on the input's device (the host lane) with no data edge to the earlier
    readers on other devices: the graph runs on one thread, in its order, or the update would
    race them."""
    torch.manual_seed(0)
    model = ReadsThenUpdatesItsInput()
    options = split_options(model, fraction=0.75)
    backend = autopart.backend(**{**options, "max_memory": {**options["max_memory"], "cpu": 0}})
    compiled = torch.compile(model, backend=backend)
    with torch.no_grad():
        for _ in range(10):
            x = torch.randn(8, 32)
            ours, theirs = x.clone(), x.clone()
            torch.testing.assert_close(compiled(ours), model(theirs), rtol=0, atol=0)
            torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    (comp,) = backend.compilations
    assert "cpu" in comp.runner.partition_devices.values() and len(comp.plan.devices_used) > 1
    assert comp.runner.host_partitions == set()


class UpdatesAnEMA(nn.Module):
    """Updates a buffer twice, through the view its first update returns, layers apart."""

    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(32, 32) for _ in range(8))
        self.register_buffer("ema", torch.ones(32))

    def forward(self, x):
        ema = self.ema.mul_(0.5)
        h = x
        for layer in self.layers[:6]:
            h = torch.tanh(layer(h))
        ema.add_(h.mean(0))
        for layer in self.layers[6:]:
            h = torch.tanh(layer(h))
        return h


class CountsItsCalls(nn.Module):
    """Updates a buffer first and reads it last."""

    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(32, 32) for _ in range(8))
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x):
        self.calls.add_(1)
        for layer in self.layers:
            x = torch.tanh(layer(x))
        return x * self.calls


def _updates(nodes):
    """The first and the last in-place update among ``nodes``."""
    updates = [n for n in nodes if is_inplace(n)]
    return updates[0], updates[-1]


def _update_and_last_read(nodes):
    """The first in-place update and the last node."""
    assert nodes[-1].target is operator.mul
    return _updates(nodes)[0], nodes[-1]


@pytest.mark.parametrize(
    ("model_cls", "fraction", "ends", "min_devices"),
    [(UpdatesAnEMA, 1.0, _updates, 2), (CountsItsCalls, 2.0, _update_and_last_read, 1)],
    ids=["second-update-through-a-view", "read-after-the-update"],
)
def test_a_buffer_updated_in_place_is_read_and_updated_in_one_task(model_cls, fraction, ends, min_devices, tmp_path):
    """Cut between the updates, the second would update a copy of the buffer; cut between an
    update and a later read, the reader on another device would get a copy made at the start of
    the call (on a GPU; on the CPU the copy is the buffer itself). Offline plans of the saved
    graph keep the stretch whole too."""
    torch.manual_seed(0)
    model = model_cls()
    reference = copy.deepcopy(model)
    options = split_options(model, hand=True, fraction=fraction)
    backend = autopart.backend(**options)
    compiled = torch.compile(model, backend=backend)
    x = torch.randn(4, 32)
    with torch.no_grad():
        for _ in range(2):
            torch.testing.assert_close(compiled(x), reference(x))
            for ours, theirs in zip(model.buffers(), reference.buffers(), strict=True):
                torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    (comp,) = backend.compilations
    assert len(comp.plan.devices_used) >= min_devices, comp.plan.summary()
    first, last = ends([n for n in comp.graph.graph.nodes if n.op in ("call_function", "call_method")])
    assert first is not last
    assert any(first.name in t.nodes and last.name in t.nodes for t in comp.problem.tasks)
    assert_planned_the_same_offline(comp, options, tmp_path)


def test_a_stretch_kept_whole_that_fits_no_device_says_why_it_is_not_cut():
    model = CountsItsCalls()  # its buffer is updated first and read last: one task
    backend = autopart.backend(**split_options(model, hand=True, fraction=0.6))
    why = r"raise max_memory \(it is not cut: nodes 'add_' to 'mul' read a parameter, buffer or constant"
    with pytest.raises(torch._dynamo.exc.BackendCompilerFailed, match=why), torch.no_grad():
        torch.compile(model, backend=backend)(torch.randn(4, 32))


def test_a_compiled_adam_step_matches_eager():
    """torch.compile(optimizer.step) updates each parameter and its state in place (``lerp_``,
    ``mul_``, ``addcdiv_``), through views of constants: each tensor's updates stay in one
    task, whatever the split."""
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(32, 32) for _ in range(6)])
    reference = copy.deepcopy(model)
    ours, theirs = (torch.optim.Adam(m.parameters(), lr=0.01) for m in (model, reference))
    backend = autopart.backend(**split_options(model, hand=True, fraction=3.0, optimizer="none"))
    step = torch.compile(ours.step, backend=backend)
    x = torch.randn(4, 32)
    for _ in range(2):
        for m, opt_step in ((model, step), (reference, theirs.step)):
            m(x).square().mean().backward()
            opt_step()
            m.zero_grad()
    for p, q in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p, q)
        torch.testing.assert_close(ours.state[p]["exp_avg_sq"], theirs.state[q]["exp_avg_sq"])
    assert any(len(c.plan.devices_used) >= 2 for c in backend.compilations)


class ReturnsViews(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(*[nn.Linear(256, 256) for _ in range(8)])

    def forward(self, x, y):
        h = self.layers(x)
        return h, h.view(-1), y.t()


def test_outputs_alias_as_in_eager_when_the_graph_is_split():
    """An output that views another output, or a user input, is a view of it here too: it is
    made on the device the graph returns it on, from one copy of its base."""
    torch.manual_seed(0)
    model = ReturnsViews().eval()
    nb = model_bytes(model)
    backend = autopart.backend(topology=PRESET, device_map="cpu", strict=True,
                               max_memory={f"cuda:{i}": int(nb * 0.6) for i in range(3)})
    x, y = torch.randn(4, 256), torch.randn(3, 5)
    with torch.no_grad():
        h, flat, yt = torch.compile(model, backend=backend)(x, y)
        for got, want in zip((h, flat, yt), model(x, y)):
            torch.testing.assert_close(got, want, rtol=0, atol=0)
    plan = backend.plans[0]
    assert len(plan.devices_used) == 2 and plan.placement["view"] == plan.placement["t"] == "cpu"
    base = next(n for n in backend.compilations[0].graph.graph.nodes if n.name == "view").args[0]
    assert plan.placement[base.name] != "cpu"  # the views' base is computed on a GPU
    assert flat.data_ptr() == h.data_ptr()
    yt[0, 1] = 100.0
    assert y[1, 0] == 100.0


class ChainReturnsItsInput(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.ParameterList([nn.Parameter(torch.randn(128, 128) / 12) for _ in range(6)])

    def forward(self, x):
        h = x
        for w in self.w:
            h = h @ w
        return h, x[:, :4]


def test_a_pinned_view_is_a_task_of_its_own():
    """The view of the input, pinned to the input's device, does not take the matmuls coarsened
    with it there (the CPU is not even in max_memory)."""
    model = ChainReturnsItsInput()
    backend = autopart.backend(topology=PRESET, device_map="cpu", strict=True, max_groups=4,
                               max_memory={f"cuda:{i}": "250KB" for i in range(4)})
    x = torch.randn(64, 128)
    with torch.no_grad():
        h, part = torch.compile(model, backend=backend)(x)
        torch.testing.assert_close(h, model(x)[0], rtol=0, atol=0)
    assert part.data_ptr() == x.data_ptr()
    comp = backend.compilations[0]
    fixed = [t for t in comp.problem.tasks if t.fixed_device and not t.name.startswith(("inputs@", "output@"))]
    assert [t.nodes for t in fixed] == [("getitem",)]
    assert all(d.startswith("cuda") for n, d in comp.plan.placement.items() if n.startswith("h"))


def test_views_through_a_tuple_and_with_symbolic_sizes_alias_as_in_eager():
    """A view can read a tuple (``split``'s) or SymInt nodes: no storage to compare."""
    torch.manual_seed(0)
    model = ReturnsViews().eval()
    nb = model_bytes(model)
    backend = autopart.backend(topology=PRESET, device_map="cpu", strict=True,
                               max_memory={f"cuda:{i}": int(nb * 0.6) for i in range(3)})
    compiled = torch.compile(lambda x, y: (model(x, y)[0], y.view(y.shape[0], -1), y.split(2)[1]),
                             backend=backend, dynamic=True)
    x, y = torch.randn(4, 256), torch.randn(3, 5)
    with torch.no_grad():
        h, flat, part = compiled(x, y)
        torch.testing.assert_close(h, model(x, y)[0], rtol=0, atol=0)
    assert flat.data_ptr() == y.data_ptr() and part.data_ptr() == y[2:].data_ptr()


def test_a_compiled_model_deep_copies_and_pickles_after_its_first_call():
    """copy.deepcopy shares the backend (one ledger for both models); pickle keeps its options."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64))
    backend = autopart.backend(topology=PRESET, device_map="cpu", strict=True,
                               max_memory={"cuda:0": "20KB", "cuda:1": "1MB"})
    compiled = torch.compile(model, backend=backend)
    x = torch.randn(4, 64)
    with torch.no_grad():
        compiled(x)
        twin = copy.deepcopy(compiled)
        torch.testing.assert_close(twin(x), twin._orig_mod(x), rtol=0, atol=0)
        assert twin._orig_mod is not model and len(backend.compilations) == 2  # the copy's own plan, here
        loaded = pickle.loads(pickle.dumps(compiled))
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert copy.deepcopy(backend) is backend
    clone = pickle.loads(pickle.dumps(backend))
    assert clone is not backend and clone.config == backend.config and not clone.compilations
    assert pickle.loads(pickle.dumps(autopart.autopart_backend)) is autopart.autopart_backend
