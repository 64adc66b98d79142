"""Analysis passes: shapes, memory/liveness, dependencies, cost."""

from __future__ import annotations

import operator

import pytest
import torch
import torch.fx
from _util import make_device, make_topology, three_devices
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from autopart.passes import (
    cost_pass,
    dependency_pass,
    memory_pass,
    propagate_shapes_pass,
    record,
)
from autopart.passes.cost import mutated_inputs


def traced(module: nn.Module, *inputs):
    gm = torch.fx.symbolic_trace(module)
    propagate_shapes_pass(gm, inputs)
    return gm


class Mlp(nn.Module):
    def __init__(self, d_in=16, d_hidden=32, d_out=8):
        super().__init__()
        self.fc1 = nn.Linear(d_in, d_hidden)
        self.fc2 = nn.Linear(d_hidden, d_out)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def by_name(gm):
    return {n.name: n for n in gm.graph.nodes}


# --- shapes -------------------------------------------------------------------------------


def test_shapes_from_fake_tensor_prop():
    gm = traced(Mlp(), torch.randn(4, 16))
    nodes = by_name(gm)
    assert record(nodes["x"]).role == "input"
    assert record(nodes["x"]).tensors[0].shape == (4, 16)
    assert record(nodes["fc1"]).tensors[0].shape == (4, 32)
    assert record(nodes["fc2"]).tensors[0].nbytes == 4 * 8 * 4
    assert record(nodes["fc2"]).tensors[0].dtype == "float32"
    assert record(next(n for n in gm.graph.nodes if n.op == "output")).role == "output"


def test_shapes_roles_of_parameters_and_buffers_from_get_attr():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(3, 3))
            self.register_buffer("b", torch.randn(3))

        def forward(self, x):
            return x @ self.w + self.b

    gm = traced(M(), torch.randn(2, 3))
    nodes = by_name(gm)
    assert record(nodes["w"]).role == "parameter"
    assert record(nodes["b"]).role == "buffer"
    assert record(nodes["w"]).fqn == "w"


def test_shapes_from_dynamo_example_values_keep_parameter_names():
    seen = {}

    def capture(gm, example_inputs):
        propagate_shapes_pass(gm, example_inputs)
        seen["gm"] = gm
        return gm.forward

    torch._dynamo.reset()
    torch.compile(Mlp(), backend=capture)(torch.randn(2, 16))
    roles = {record(n).role for n in seen["gm"].graph.nodes if n.op == "placeholder"}
    assert roles == {"input", "parameter"}
    fqns = {record(n).fqn for n in seen["gm"].graph.nodes if record(n).role == "parameter"}
    assert fqns == {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}


def test_shapes_reject_wrong_number_of_inputs():
    gm = torch.fx.symbolic_trace(Mlp())
    with pytest.raises(ValueError, match="1 placeholders but 2 example inputs"):
        propagate_shapes_pass(gm, [torch.randn(2, 16), torch.randn(2)])


# --- memory -------------------------------------------------------------------------------


def test_liveness_and_peak_on_a_chain():
    # a = x*2 (4 KiB), b = a+1 (4 KiB), c = b.view(-1) (view: no bytes), out = c*3 (4 KiB)
    def f(x):
        a = x * 2
        b = a + 1
        c = b.view(-1)
        return c * 3

    x = torch.randn(32, 32)
    gm = traced(torch.fx.symbolic_trace(f), x)
    report = memory_pass(gm)
    kib4 = 32 * 32 * 4
    nodes = by_name(gm)
    assert record(nodes["view"]).alloc_bytes == 0
    assert record(nodes["mul"]).alloc_bytes == kib4
    assert report.input_bytes == kib4 and report.resident_bytes == 0
    # While mul_1 runs, b (kept alive by its view c) and the new output are live; a died after add.
    order = list(report.order)
    assert report.live_activation_bytes[order.index("add")] == 2 * kib4
    assert report.live_activation_bytes[order.index("mul_1")] == 2 * kib4
    assert report.peak_activation_bytes == 2 * kib4
    assert report.peak_bytes == kib4 + 2 * kib4


def test_liveness_keeps_outputs_alive_to_the_end():
    def f(x):
        a = x + 1
        b = x * 2
        c = b + 1
        return a, c

    x = torch.randn(8, 8)
    gm = traced(torch.fx.symbolic_trace(f), x)
    report = memory_pass(gm)
    life = {s.producer: s for s in report.storages}
    assert life["add"].last == len(report.order) - 1
    assert life["mul"].last == report.order.index("add_1")


def test_resident_bytes_count_parameters():
    gm = traced(Mlp(), torch.randn(4, 16))
    report = memory_pass(gm)
    assert report.resident_bytes == sum(p.numel() * 4 for p in Mlp().parameters())


# --- dependencies ------------------------------------------------------------------------


def test_dependency_dag_order_and_critical_path():
    def f(x):
        a = x + 1
        b = a * 2
        c = x - 1
        return b + c

    gm = traced(torch.fx.symbolic_trace(f), torch.randn(3))
    deps = dependency_pass(gm)
    order = deps.topological_order
    for u, v in deps.dag.edges:
        assert order.index(u) < order.index(v)
    path, length = deps.critical_path()
    assert path == ["x", "add", "mul", "add_1", "output"] and length == 5
    weighted, _ = deps.critical_path(lambda n: 10.0 if n == "sub" else 1.0)
    assert "sub" in weighted
    assert deps.dag.edges["add", "mul"]["nbytes"] == 12


# --- cost ---------------------------------------------------------------------------------


def test_flops_of_matmul_conv_and_attention():
    class M(nn.Module):
        def forward(self, a, b, img, w, q, k, v):
            return (
                a @ b,
                torch.nn.functional.conv2d(img, w),
                torch.nn.functional.scaled_dot_product_attention(q, k, v),
            )

    a, b = torch.randn(8, 16), torch.randn(16, 32)
    img, w = torch.randn(2, 3, 10, 10), torch.randn(4, 3, 3, 3)
    q = k = v = torch.randn(2, 4, 16, 8)
    gm = traced(M(), a, b, img, w, q, k, v)
    cost_pass(gm, topology=three_devices())
    nodes = by_name(gm)
    assert record(nodes["matmul"]).flops == 2 * 8 * 16 * 32
    assert record(nodes["conv2d"]).flops == 2 * (2 * 4 * 8 * 8) * (3 * 3 * 3)
    # sdpa: QK^T and PV, each 2*B*H*S*S*D
    assert record(nodes["scaled_dot_product_attention"]).flops == 2 * (2 * 2 * 4 * 16 * 16 * 8)


def test_views_cost_nothing_and_elementwise_is_bandwidth_bound():
    def f(x):
        return x.t() + 1

    x = torch.randn(64, 64)
    gm = traced(torch.fx.symbolic_trace(f), x)
    topo = make_topology([make_device("cpu", tflops=1.0, gbps=10.0, overhead_s=0.0)])
    cost_pass(gm, topology=topo)
    nodes = by_name(gm)
    t = record(nodes["t"])
    assert t.bytes_accessed == 0 and t.num_kernels == 0 and t.time_s["cpu"] == 0
    add = record(nodes["add"])
    assert add.bytes_accessed == 2 * 64 * 64 * 4
    assert add.time_s["cpu"] == pytest.approx(add.bytes_accessed / 10e9)


def strange(x):
    raise RuntimeError("cannot run on fake tensors")


torch.fx.wrap("strange")


def test_unknown_op_gets_a_default_and_is_reported():
    class M(nn.Module):
        def forward(self, x):
            return strange(x) + 1

    from torch._subclasses.fake_tensor import FakeTensorMode

    gm = torch.fx.symbolic_trace(M())
    x = FakeTensorMode().from_tensor(torch.randn(4, 4))
    for node in gm.graph.nodes:  # shapes by hand: the op cannot be propagated
        node.meta["val"] = x if node.op != "output" else None
    propagate_shapes_pass(gm, [x])
    report = cost_pass(gm, topology=three_devices())
    assert set(report.unknown) == {"strange"}
    rec = record(by_name(gm)["strange"])
    assert rec.cost_rule.startswith("unknown: RuntimeError")
    assert rec.flops == 16 and rec.num_kernels == 1 and all(t > 0 for t in rec.time_s.values())


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 64), st.integers(1, 64), st.integers(1, 64), st.integers(1, 4))
def test_costs_non_negative_and_monotone_in_size(m, k, n, scale):
    def f(a, b):
        return torch.relu(a @ b)

    topo = three_devices()

    def costs(mm, kk, nn_):
        gm = traced(torch.fx.symbolic_trace(f), torch.randn(mm, kk), torch.randn(kk, nn_))
        cost_pass(gm, topology=topo)
        return [record(node) for node in gm.graph.nodes]

    small, big = costs(m, k, n), costs(m * scale, k, n * scale)
    for a, b in zip(small, big):
        assert a.flops >= 0 and a.bytes_accessed >= 0
        assert b.flops >= a.flops and b.bytes_accessed >= a.bytes_accessed
        for dev in topo.device_names:
            assert 0 <= a.time_s[dev] <= b.time_s[dev]


def test_getitem_nodes_are_free():
    def f(x):
        parts = x.split(2)
        return parts[0] + parts[1]

    gm = traced(torch.fx.symbolic_trace(f), torch.randn(4, 3))
    cost_pass(gm, topology=three_devices())
    getitems = [n for n in gm.graph.nodes if n.target is operator.getitem]
    assert getitems and all(record(n).bytes_accessed == 0 for n in getitems)


def test_every_node_of_a_transformer_is_costed_by_its_aten_ops():
    transformers = pytest.importorskip("transformers")
    from autopart import Backend, Config

    cfg = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=500, bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    backend = Backend(Config(), execute=False)
    torch._dynamo.reset()
    with torch.no_grad():
        torch.compile(model, backend=backend)(torch.randint(0, 500, (1, 8)))
    analysis = backend.compilations[0].analysis
    assert analysis.cost.unknown == {}
    nodes = by_name(backend.compilations[0].graph)
    # the lookup reads the rows it gathers, not the whole 500 x 64 table
    assert record(nodes["inputs_embeds"]).bytes_accessed < 500 * 64 * 4
    assert record(nodes["logits"]).flops == 2 * 8 * 64 * 500


def test_mutated_inputs_names_every_tensor_an_update_writes():
    class Updates(nn.Module):
        def forward(self, a, b, c):
            torch._foreach_mul_([a, b], 0.5)  # each tensor of the list
            c.add_(1)
            torch.add(a, b, out=c)
            torch.ops.aten._foreach_add_.Scalar([b, c], 1.0)  # the schema says which it writes
            torch.aminmax(a.view(3, 1), dim=1, out=(b, c))
            return torch._foreach_add([a, b], 1.0), torch.relu(a), a.add(b), torch.stack([a, b])

    gm = traced(Updates(), *(torch.randn(3) for _ in range(3)))
    found = {n.name: [t.name for t in mutated_inputs(n)] for n in gm.graph.nodes if mutated_inputs(n)}
    assert found == {"_foreach_mul_": ["a", "b"], "add_": ["c"], "add": ["c"], "_foreach_add__scalar": ["b", "c"],
                     "aminmax": ["b", "c"]}


def test_a_fused_adam_called_from_torch_updates_its_parameters_grads_and_state():
    class Step(nn.Module):
        def forward(self, p, g, m, v, step):
            torch._fused_adam_([p], [g], [m], [v], [], [step], lr=0.1, beta1=0.9, beta2=0.999,
                               weight_decay=0.0, eps=1e-8, amsgrad=False, maximize=False)
            return p + 1

    gm = traced(Step(), *(torch.randn(3) for _ in range(4)), torch.ones(()))
    (adam,) = [n for n in gm.graph.nodes if mutated_inputs(n)]
    assert [t.name for t in mutated_inputs(adam)] == ["p", "g", "m", "v"]  # not the step count
