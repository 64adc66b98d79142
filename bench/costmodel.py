"""Cost-model accuracy: predicted against measured time and memory, per node and per graph.

For each model (transformers architectures with random weights, batch 1): capture the graph
with Dynamo once; then, in each of ``--rounds`` rounds and for each model in turn, profile and
calibrate this machine, predict every node's time with autopart's cost model, and measure:

- whole graph: the best (least) time over runs of the captured graph (warm), taken before,
  after, and every ``PROBE_EVERY`` nodes while the nodes are measured (a minute or more apart:
  the VM's speed moves by tens of percent over that time); the median is reported too;
- each node: the median over repeats (blocks of calls lasting 20 ms or more) of calling its
  target on the real input values, as issue 4 asks;
- peak memory: the most bytes torch's allocator held at once during a real run
  (:func:`measured_peak_bytes`), plus weights and inputs.

Prints, per model, predicted against measured for the whole graph, per op kind, and the median
absolute relative error of nodes above 50 us, from the round with the median whole-graph error
(each round's error is listed too); writes the tables and every round's raw numbers to
bench/results/costmodel-<machine>-<date>.{md,json}.

Targets on CPU (issue 4): whole graph within 15%; median |rel. error| of nodes > 50 us at most
30%; peak memory within 10%.

Why the best time: on a shared 2-core VM the same graph took 243 to 528 ms within one process
seconds apart; other tenants only ever add time, so the least time is the estimate of the
machine the cost model describes (Python's ``timeit`` documentation makes the same argument:
"the lowest value gives a lower bound for how fast your machine can run the given code
snippet; higher values ... are typically ... caused by other processes interfering").

Why rounds: the least time still moves with the VM's state, which a profile taken a minute
earlier does not see (one model's whole-graph error moved by 20 points between runs of the
same code). The median over rounds, each with its own profile, is the error of the cost model
rather than of one moment of the machine.

    python bench/costmodel.py [--models gpt2 bert llama resnet] [--rounds 3] [--repeats 7] [--budget 60]
        [--topology FILE] [--device cpu|cuda:0] [--out bench/results] [--no-write]

With ``--device cuda:0`` the models and inputs move to the GPU (float32), each timed sample ends
with ``torch.cuda.synchronize()``, and the results are named after the GPU.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import sys
import time
from collections import defaultdict

import torch
import torch.fx
from _common import add_results_options, machine_name, sync, write_results
from torch._C._profiler import _EventType
from torch.utils._pytree import tree_map

import autopart
from autopart.passes import record
from autopart.passes.cost import is_inplace
from autopart.profiler import profile_topology


def build(name: str):
    """(model, example kwargs): the issue's models at sizes a 2-core CPU measures in minutes."""
    import transformers as tf

    gen = torch.Generator().manual_seed(0)
    if name == "gpt2":
        model = tf.GPT2LMHeadModel(tf.GPT2Config())
        inputs = {"input_ids": torch.randint(0, 50257, (1, 128), generator=gen)}
    elif name == "bert":
        model = tf.BertModel(tf.BertConfig())
        inputs = {"input_ids": torch.randint(0, 30522, (1, 128), generator=gen)}
    elif name == "llama":
        cfg = tf.LlamaConfig(
            vocab_size=32000, hidden_size=1024, intermediate_size=2816, num_hidden_layers=8,
            num_attention_heads=16, num_key_value_heads=4,
        )
        model = tf.LlamaForCausalLM(cfg)
        inputs = {"input_ids": torch.randint(0, 32000, (1, 128), generator=gen)}
    elif name == "resnet":
        model = tf.ResNetModel(tf.ResNetConfig())  # ResNet-50 layout
        inputs = {"pixel_values": torch.randn(1, 3, 224, 224, generator=gen)}
    else:
        raise ValueError(f"unknown model {name!r}")
    return model.eval(), inputs


def capture(model, inputs, grad: bool = False):
    """The first graph Dynamo captures (with gradients enabled if ``grad``, as for a training
    step) and its real example inputs."""
    seen = {}

    def backend(gm, example_inputs):
        if "gm" not in seen:
            seen["gm"], seen["inputs"] = gm, list(example_inputs)
        return gm.forward

    torch._dynamo.reset()
    with torch.set_grad_enabled(grad):
        torch.compile(model, backend=backend)(**inputs)
    return seen["gm"], seen["inputs"]


def capture_models(names: list[str], device_name: str, grad: bool = False) -> tuple[str, dict]:
    """(the topology name of ``device_name``, {model name: (graph, example inputs)}): each model
    of :func:`build` moved to the device and captured (:func:`capture`), seeded alike."""
    torch.manual_seed(0)
    dev = torch.device(device_name)
    device = f"cuda:{dev.index or 0}" if dev.type == "cuda" else dev.type
    captured = {}
    for name in names:
        model, inputs = build(name)
        captured[name] = capture(model.to(device), {k: v.to(device) for k, v in inputs.items()}, grad=grad)
    return device, captured


def time_samples_s(fn, repeats: int, min_time_s: float = 0.02) -> list[float]:
    """``repeats`` samples of fn's seconds per call; each sample loops enough calls to last
    ``min_time_s``, so that timer resolution does not matter for tiny ops. On CUDA each sample
    ends with a synchronize, so GPU work that was queued is counted (steady state: launches
    overlap the kernels of earlier calls, as in a run of the whole graph)."""
    fn()
    sync()
    start = time.perf_counter()
    fn()
    sync()
    once = max(time.perf_counter() - start, 1e-7)
    loops = max(1, int(min_time_s / once))
    samples = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        for _ in range(loops):
            fn()
        sync()
        samples.append((time.perf_counter() - start) / loops)
    return samples


PROBE_EVERY = 25
"""Nodes measured between two timed runs of the whole graph."""


def node_times_s(gm: torch.fx.GraphModule, inputs, repeats: int, probe=None) -> dict[str, float]:
    """Measured seconds of each compute node, called on the real values it gets in a run;
    ``probe()`` is called every :data:`PROBE_EVERY` nodes."""
    env: dict[torch.fx.Node, object] = {}
    args_iter = iter(inputs)
    times = {}
    with torch.no_grad():
        for node in gm.graph.nodes:
            if node.op == "placeholder":
                env[node] = next(args_iter)
                continue
            if node.op == "output":
                break
            args, kwargs = tree_map(lambda a: env[a] if isinstance(a, torch.fx.Node) else a,
                                    (node.args, node.kwargs))
            if node.op == "call_function":
                fn = lambda: node.target(*args, **kwargs)  # noqa: E731
            elif node.op == "call_method":
                fn = lambda: getattr(args[0], node.target)(*args[1:], **kwargs)  # noqa: E731
            elif node.op == "call_module":
                mod = gm.get_submodule(node.target)
                fn = lambda: mod(*args, **kwargs)  # noqa: E731
            else:  # get_attr
                env[node] = getattr(gm, node.target)
                continue
            if is_inplace(node):
                env[node] = fn()
                continue  # re-running an in-place op would change what later nodes read
            env[node] = fn()
            if record(node).num_kernels:
                times[node.name] = statistics.median(time_samples_s(fn, repeats))
            else:
                times[node.name] = 0.0
            if probe is not None and len(times) % PROBE_EVERY == 0:
                probe()
    return times


def measured_peak_bytes(gm, inputs) -> int:
    """Weights + inputs + the most bytes the allocator held at once for one real run (warm):
    on CUDA ``torch.cuda.max_memory_allocated``; on a CPU the ``total_allocated`` that the
    profiler's memory events (``profile_memory=True``) report from torch's CPU allocator at each
    allocation and free. Either counts every allocation (temporaries, kernel workspaces), not
    only the tensors the cost model follows."""
    held = sum(t.untyped_storage().nbytes() for t in inputs if isinstance(t, torch.Tensor))
    with torch.no_grad():
        gm(*inputs)  # warm: caches and lazily made weights are not the run's
        if any(isinstance(t, torch.Tensor) and t.is_cuda for t in inputs):
            sync()
            before = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            out = gm(*inputs)
            sync()
            del out
            return held + torch.cuda.max_memory_allocated() - before
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
            out = gm(*inputs)
        del out
    events: list[tuple[int, int, int]] = []  # (time ns, bytes allocated (< 0: freed), total after)
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        event = stack.pop()
        if event.tag == _EventType.Allocation:
            extra = event.extra_fields
            events.append((event.start_time_ns, extra.alloc_size, extra.total_allocated))
        stack.extend(event.children)
    if not events:
        return held
    events.sort()
    start = events[0][2] - events[0][1]  # held by the allocator before the run
    return held + max(total for _, _, total in events) - start


def rel(pred: float, meas: float) -> float:
    return (pred - meas) / meas if meas else float("nan")


def measure(name: str, gm, example_inputs, topology, device: str, repeats: int) -> dict:
    """One round for one model: predict with ``topology``, then measure (module docstring)."""
    analysis = autopart.analyze(gm, example_inputs, topology)

    def run_whole(runs: int) -> list[float]:
        with torch.no_grad():
            return time_samples_s(lambda: gm(*example_inputs), runs, min_time_s=0.0)

    whole = run_whole(repeats)
    nodes = node_times_s(gm, example_inputs, repeats, probe=lambda: whole.extend(run_whole(1)))
    whole += run_whole(repeats)
    by_name = {n.name: n for n in gm.graph.nodes}
    pred = {n: record(by_name[n]).time_s[device] for n in nodes}
    kinds: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0])
    for n, t in nodes.items():
        target = by_name[n].target
        kind = target if isinstance(target, str) else getattr(target, "__name__", str(target))
        kinds[kind][0] += pred[n]
        kinds[kind][1] += t
        kinds[kind][2] += 1
    big = [abs(rel(pred[n], t)) for n, t in nodes.items() if t > 50e-6]
    measured_s = min(whole)
    predicted_s = sum(record(n).time_s[device] for n in gm.graph.nodes)
    return {
        "model": name,
        "nodes": len(nodes),
        "whole_measured_s": measured_s,
        "whole_median_s": statistics.median(whole),
        "whole_predicted_s": predicted_s,
        "whole_error": rel(predicted_s, measured_s),
        "whole_samples_s": whole,
        "sum_node_measured_s": sum(nodes.values()),
        "median_abs_rel_error_nodes_over_50us": statistics.median(big) if big else float("nan"),
        "nodes_over_50us": len(big),
        "peak_measured_bytes": measured_peak_bytes(gm, example_inputs),
        "peak_predicted_bytes": analysis.memory.peak_bytes,
        "unknown_cost_nodes": len(analysis.cost.unknown),
        "kinds": {k: {"predicted_s": v[0], "measured_s": v[1], "count": v[2]} for k, v in kinds.items()},
        "node_times": {n: {"predicted_s": pred[n], "measured_s": t} for n, t in nodes.items()},
    }


def median_round(rounds: list[dict]) -> dict:
    """The round whose whole-graph error is the median (the lower middle one of an even count)."""
    ranked = sorted(rounds, key=lambda r: r["whole_error"])
    return ranked[(len(ranked) - 1) // 2]


TARGETS = {"whole graph": 0.15, "node median": 0.30, "peak memory": 0.10}
"""Issue 4's targets on a CPU, as the largest |relative error| allowed."""


def report(by_model: dict[str, list[dict]], machine: str, topology_file: str | None = None,
           budget_s: float | None = None) -> str:
    """Markdown: per model the round with the median whole-graph error, each round's error,
    the targets met, and the op kinds of the median round; ``topology_file``: the profile
    predicted with, if not profiled in each round; ``budget_s``: seconds per profile."""
    n_rounds = len(next(iter(by_model.values())))
    spent = f" ({budget_s:.0f} s)" if budget_s else ""
    source = (f"Predicted with the profile in {topology_file}. " if topology_file else
              f"Each round profiles and calibrates the machine again{spent} before each model, "
              "then measures it. ")
    lines = [f"# Cost model against measurement on {machine}", "",
             f"date {datetime.date.today()}, torch {torch.__version__}, autopart {autopart.__version__}, "
             f"{n_rounds} round(s)", "",
             source + "Measured: the whole graph's best run (module docstring), its median run and the "
             "error against that median; each node's median over repeats; the allocator's peak. "
             "Columns from the round with the median whole-graph error.", "",
             "| model | nodes | graph measured | (median) | graph predicted | error | (vs median) | "
             "error per round | node median abs error (>50us, n) | peak measured | peak predicted | error |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    errors: dict[str, list[float]] = defaultdict(list)
    for rounds in by_model.values():
        r = median_round(rounds)
        peak_error = rel(r["peak_predicted_bytes"], r["peak_measured_bytes"])
        errors["whole graph"].append(r["whole_error"])
        errors["node median"].append(r["median_abs_rel_error_nodes_over_50us"])
        errors["peak memory"].append(peak_error)
        lines.append(
            f"| {r['model']} | {r['nodes']} | {r['whole_measured_s']*1e3:.2f} ms | "
            f"{r['whole_median_s']*1e3:.2f} ms | {r['whole_predicted_s']*1e3:.2f} ms | "
            f"{r['whole_error']:+.1%} | {rel(r['whole_predicted_s'], r['whole_median_s']):+.1%} | "
            f"{', '.join(format(x['whole_error'], '+.1%') for x in rounds)} | "
            f"{r['median_abs_rel_error_nodes_over_50us']:.1%} ({r['nodes_over_50us']}) | "
            f"{r['peak_measured_bytes']/2**20:.1f} MiB | {r['peak_predicted_bytes']/2**20:.1f} MiB | "
            f"{peak_error:+.1%} |"
        )
    lines += ["", "Targets (issue 4, on a CPU; the median round of each model):", ""]
    for what, limit in TARGETS.items():
        met = sum(abs(e) <= limit for e in errors[what])
        lines.append(f"- {what} within {limit:.0%}: {met} of {len(errors[what])} models "
                     f"({'PASS' if met == len(errors[what]) else 'FAIL'})")
    for rounds in by_model.values():
        r = median_round(rounds)
        lines += ["", f"## {r['model']}: per op kind (median round)", "",
                  "| op | count | measured | predicted | error |", "|---|---|---|---|---|"]
        for kind, v in sorted(r["kinds"].items(), key=lambda kv: -kv[1]["measured_s"])[:15]:
            lines.append(f"| {kind} | {v['count']} | {v['measured_s']*1e3:.3f} ms | "
                         f"{v['predicted_s']*1e3:.3f} ms | {rel(v['predicted_s'], v['measured_s']):+.1%} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["gpt2", "bert", "llama", "resnet"])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--rounds", type=int, default=3, help="profile-and-measure rounds over all models")
    parser.add_argument("--topology", help="a profiled topology file (default: profile and "
                        "calibrate this machine just before each model, in the same run)")
    parser.add_argument("--budget", type=float, default=60.0,
                        help="seconds per profile (60: what autopart topology --profile spends)")
    parser.add_argument("--device", default="cpu", help='the device measured ("cpu", "cuda:0")')
    add_results_options(parser)
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    device, captured = capture_models(args.models, args.device)
    by_model: dict[str, list[dict]] = defaultdict(list)
    for i in range(args.rounds):
        for name, (gm, example_inputs) in captured.items():
            if args.topology:
                topology = autopart.Topology.load(args.topology)
            else:
                print(f"round {i + 1}: profiling this machine ({args.budget:.0f} s) ...",
                      file=sys.stderr, flush=True)
                topology = profile_topology(autopart.Topology.discover(), budget_s=args.budget,
                                            progress=False)
            print(f"round {i + 1}: measuring {name} ...", file=sys.stderr, flush=True)
            by_model[name].append(measure(name, gm, example_inputs, topology, device, args.repeats))
    text = report(by_model, topology.device(device).model or platform.processor() or "cpu", args.topology,
                  args.budget)
    print(text)
    machine = machine_name(topology, device)
    write_results(args, f"costmodel-{machine}-{datetime.date.today()}", text,
                  {"machine": machine, "budget_s": None if args.topology else args.budget, "rounds": by_model})
    return 0


if __name__ == "__main__":
    sys.exit(main())
