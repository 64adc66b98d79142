"""Offloading: autopart against accelerate's ``device_map="auto"`` when one GPU holds only part
of the weights, next to the floor the hardware allows.

A decoder-only model with random weights (default: a Llama-shaped model of about 1.3B parameters,
``--model gpt2-xl`` for GPT-2-XL), in float16, gets a GPU memory cap of ``--gpu-fraction`` (0.5)
of its parameter bytes; the host memory is not capped (the bytes available now). The same
``max_memory`` dict, ``{0: cap, "cpu": available}``, goes to both systems:

1. accelerate: ``infer_auto_device_map(model, max_memory=..., no_split_module_classes=...)`` then
   ``dispatch_model`` (what ``from_pretrained(device_map="auto")`` does on one GPU): the modules
   mapped to ``cpu`` keep their weights in host memory and copy them to the GPU on every call.
2. autopart: ``torch.compile(model, backend=autopart.backend(max_memory=..., topology=...,
   objective="latency"), dynamic=False)`` on the model as built (weights on the CPU; autopart
   moves what it places on the GPU itself). One fresh backend per batch size, so each batch is
   planned for its own shapes.
3. the floor: the least time of one call under autopart's plan if every copy and every
   computation overlapped perfectly and the GPU's own compute took no time:
   ``max(weight bytes the plan streams per call / pinned host-to-device bandwidth, predicted
   CPU compute time of the plan's CPU tasks)``. The bandwidth is measured here (a pinned
   256 MiB tensor, ``.to("cuda", non_blocking=True)``, timed with CUDA events); the CPU time is
   autopart's cost model (not measured). Activation copies and GPU compute are left out: it is
   a lower bound for that plan as far as the cost model's CPU times hold. Also shown: the plan-independent reference
   ``(parameter bytes - GPU cap) / pinned bandwidth``, the least any system that computes
   everything on the GPU must copy per call.

Workloads: forward of ``--seq-len`` (128) random token ids, batch sizes ``--batches`` (1 16),
``torch.no_grad()``, ``use_cache=False``; token ids live on the CPU for both systems (both
return the logits on the device of the input). Per system and batch: ``--warmup`` calls, then the
median of ``--repeats`` timed calls, each between ``torch.cuda.synchronize()`` (a system
that has spent ``--budget`` seconds on one batch stops after its current call, with at least one
timed call); tokens/s = batch x seq_len / (s per call). Both systems run one after the other
in the same process (accelerate first, then torn down; then autopart), so the GPU peak column
(``torch.cuda.max_memory_allocated`` over the timed calls) is each one's own. The cap means
different things to the two: accelerate fills it with weights (keeping room for its largest
layer) and lets activations come on top; autopart's plan keeps weights, streamed weights and
activations within it.

Target (the offloading issue): autopart's tokens/s >= 1.5 x accelerate's, PASS/FAIL per batch.

    python bench/offload.py [--model llama-1.3b|gpt2-xl] [--dtype float16] [--gpu-fraction 0.5]
        [--batches 1 16] [--seq-len 128] [--warmup 2] [--repeats 5] [--budget 60]
        [--topology PRESET|FILE] [--profile cached|always|never] [--time-limit 10]
        [--out bench/results] [--no-write] [--trace]
    python bench/offload.py --dry-run     # no GPU needed: a tiny model, every code path on CPU

Writes ``bench/results/offload-<gpu>-<date>.md`` (the table, autopart's plans, accelerate's
device map, the environment) and ``.json`` (raw data); with ``--trace`` also, per batch, the
ops of one more autopart call under ``torch.profiler`` (tables by CUDA and CPU time in the
results, the Chrome trace as ``offload-<gpu>-<date>-b<batch>.trace.json.gz``). Without CUDA it exits with a message,
except with ``--dry-run``: a tiny model of the same family, autopart planning for the
``1x4090-cpu`` preset with ``device_map="cpu"`` (the plan's ``cuda:0`` runs on the CPU) under a
``cuda:0`` cap of ``--gpu-fraction`` of the weights, accelerate's device map inferred for the same
dict and dispatched with GPU entries mapped to ``cpu`` (skipped if accelerate is missing), a
nominal bandwidth instead of a measured one, and results written to a temporary folder unless
``--out`` is given. Its numbers mean nothing; it checks that the script runs.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import functools
import gc
import gzip
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from _common import git_state, slug, sync

import autopart
from autopart._io import atomic_write_text

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
TARGET_SPEEDUP = 1.5
DRY_TOPOLOGY = "1x4090-cpu"
BANDWIDTH_BYTES = 256 * 2**20
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- model


def build(name: str, dtype: torch.dtype, tiny: bool) -> torch.nn.Module:
    """The model with random weights (seed 0), in ``dtype``, on the CPU, in eval mode.

    ``llama-1.3b``: hidden 2048, 24 layers, 16 heads, MLP 5504, vocab 32000 (about 1.35B
    parameters with the untied LM head). ``gpt2-xl``: GPT2Config(n_embd=1600, n_layer=48,
    n_head=25), vocab 50257, tied LM head (about 1.56B). ``tiny`` (dry run): 2 layers of the same
    family, vocab 1024; Llama hidden 512 (about 7M parameters: large enough that a plan for the
    ``1x4090-cpu`` preset streams weights at batch 16), GPT-2 hidden 128 (float16 ``addmm``, which
    GPT-2's Conv1D uses, is slow on CPUs).
    """
    import transformers as tf

    if name == "llama-1.3b":
        cfg = (
            tf.LlamaConfig(vocab_size=1024, hidden_size=512, intermediate_size=1376,
                           num_hidden_layers=2, num_attention_heads=4)
            if tiny else
            tf.LlamaConfig(vocab_size=32000, hidden_size=2048, intermediate_size=5504,
                           num_hidden_layers=24, num_attention_heads=16, num_key_value_heads=16)
        )
        cls = tf.LlamaForCausalLM
    elif name == "gpt2-xl":
        cfg = (
            tf.GPT2Config(vocab_size=1024, n_embd=128, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0)
            if tiny else tf.GPT2Config(n_embd=1600, n_layer=48, n_head=25)
        )
        cls = tf.GPT2LMHeadModel
    else:
        raise ValueError(f"unknown model {name!r}; choose llama-1.3b or gpt2-xl")
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # initialise in the target dtype: half the memory and time
    try:
        model = cls(cfg)
    finally:
        torch.set_default_dtype(previous)
    return model.to(dtype).eval()


def param_bytes(module: torch.nn.Module) -> int:
    """Bytes of the parameters (tied ones counted once, as ``parameters()`` yields them)."""
    return sum(p.numel() * p.element_size() for p in module.parameters())


def vocab_size(model: torch.nn.Module) -> int:
    return model.config.vocab_size


# --------------------------------------------------------------------------- measuring


def host_link_bandwidth_Bps(nbytes: int = BANDWIDTH_BYTES, repeats: int = 5) -> dict[str, float]:
    """Host-to-device copy bandwidth of one ``nbytes`` tensor, pinned and pageable: median of
    ``repeats`` copies ``t.to("cuda", non_blocking=True)`` timed with CUDA events, after one
    warm-up copy. Also device-to-host (``d2h_pinned``: ``.to("cpu", non_blocking=True)``, which
    lands in pinned memory, as autopart copies outputs back; ``d2h_pageable``: a blocking
    ``.to("cpu")``), timed on the host around a synchronize."""
    out = {}
    src = torch.ones(nbytes, dtype=torch.uint8, device="cuda")
    for kind, non_blocking in (("d2h_pinned", True), ("d2h_pageable", False)):
        src.to("cpu", non_blocking=non_blocking)
        torch.cuda.synchronize()
        samples = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            dst = src.to("cpu", non_blocking=non_blocking)
            torch.cuda.synchronize()
            samples.append(time.perf_counter() - t0)
            del dst
        out[kind] = nbytes / statistics.median(samples)
    del src
    for kind in ("pinned", "pageable"):
        src = torch.empty(nbytes, dtype=torch.uint8, pin_memory=(kind == "pinned"))
        src.fill_(1)
        src.to("cuda", non_blocking=True)
        torch.cuda.synchronize()
        samples = []
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            dst = src.to("cuda", non_blocking=True)
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) / 1e3)
            del dst
        out[kind] = nbytes / statistics.median(samples)
        del src
    torch.cuda.empty_cache()
    return out


def time_calls(fn: Callable[[], Any], warmup: int, repeats: int, budget_s: float) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``fn`` after ``warmup`` calls; every call is
    bracketed by ``torch.cuda.synchronize()`` (when CUDA is present). Once ``budget_s`` seconds
    have passed (warm-up included), stops early, after at least one timed call, so that a slow
    system cannot eat the whole run."""
    begin = time.perf_counter()
    for _ in range(warmup):
        fn()
        if time.perf_counter() - begin > budget_s:
            break
    samples: list[float] = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        samples.append(time.perf_counter() - start)
        if time.perf_counter() - begin > budget_s:
            if len(samples) < repeats:
                log(f"  time budget {budget_s:.0f} s spent: {len(samples)} of {repeats} timed calls")
            break
    return samples


def reset_gpu_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def gpu_peak_bytes() -> int | None:
    return torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None


def release_gpu() -> int | None:
    """Free what the last system left (Python garbage, allocator cache); bytes still allocated."""
    gc.collect()
    if not torch.cuda.is_available():
        return None
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    return torch.cuda.memory_allocated()


# --------------------------------------------------------------------------- accelerate


def module_bytes(model: torch.nn.Module, name: str) -> int:
    """Parameter bytes of the module (or single parameter) ``name`` of a device map."""
    if name == "":
        return param_bytes(model)
    try:
        return param_bytes(model.get_submodule(name))
    except AttributeError:
        p = model.get_parameter(name)
        return p.numel() * p.element_size()


def run_accelerate(model: torch.nn.Module, max_memory: dict, batches: list[dict], warmup: int,
                   repeats: int, budget_s: float, dry_run: bool) -> dict[str, Any]:
    """Dispatch a copy of ``model`` as ``device_map="auto"`` would and time each batch.

    Returns the device map, the bytes it keeps on each device and streams per call, per batch
    the samples, the GPU peak and the logits of the first timed call (on the CPU, float32)."""
    from accelerate import dispatch_model, infer_auto_device_map

    mod = copy.deepcopy(model)
    no_split = list(getattr(mod, "_no_split_modules", None) or [])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dry run: "Device 0 is not available"
        device_map = infer_auto_device_map(mod, max_memory=dict(max_memory), no_split_module_classes=no_split,
                                           dtype=next(mod.parameters()).dtype)
    on_device: dict[str, int] = {}
    for name, dev in device_map.items():
        key = f"cuda:{dev}" if isinstance(dev, int) else str(dev)
        on_device[key] = on_device.get(key, 0) + module_bytes(mod, name)
    run_map = {k: ("cpu" if dry_run and isinstance(v, int) else v) for k, v in device_map.items()}
    log(f"accelerate: device map puts {on_device} parameter bytes per device "
        f"({sum(isinstance(v, int) for v in device_map.values())} of {len(device_map)} entries on the GPU)")
    mod = dispatch_model(mod, device_map=run_map)
    result: dict[str, Any] = {
        "device_map": {k: (f"cuda:{v}" if isinstance(v, int) else str(v)) for k, v in device_map.items()},
        "bytes_per_device": on_device,
        "streamed_bytes_per_call": 0 if dry_run else on_device.get("cpu", 0),
        "dispatched_with": "GPU entries mapped to cpu (dry run)" if dry_run else "as inferred",
        "batches": {},
    }
    with torch.no_grad():
        for b in batches:
            ids = b["input_ids"]
            out = mod(input_ids=ids, use_cache=False).logits
            result["output_device"] = str(out.device)
            logits = out.float().cpu()
            del out
            reset_gpu_peak()
            call = functools.partial(mod, input_ids=ids, use_cache=False)
            samples = time_calls(call, warmup, repeats, budget_s)
            del call
            result["batches"][b["batch"]] = {"samples_s": samples, "gpu_peak_bytes": gpu_peak_bytes(),
                                             "logits": logits}
            log(f"accelerate batch {b['batch']}: {statistics.median(samples) * 1e3:.1f} ms/call")
    from accelerate.hooks import remove_hook_from_submodules

    remove_hook_from_submodules(mod)
    del mod
    left = release_gpu()
    if left:
        log(f"accelerate: {left / 2**20:.1f} MiB still allocated on the GPU after teardown")
    return result


# --------------------------------------------------------------------------- autopart


def plan_floor(plans: list[autopart.Plan], topology: autopart.Topology, bandwidth_Bps: float) -> dict[str, float]:
    """The floor of one call under ``plans`` (every graph of one batch): weight bytes streamed
    per call over the pinned bandwidth, against the predicted time of the tasks on the CPU."""
    streamed = sum(t.nbytes for p in plans for t in p.transfers if t.reason.startswith("weights streamed"))
    moved = sum(t.nbytes for p in plans for t in p.transfers)
    on_cpu = {d.name for d in topology.devices if d.kind == "cpu"}
    cpu_s = sum(t.time_s for p in plans for t in p.tasks if t.device in on_cpu)
    gpu_s = sum(t.time_s for p in plans for t in p.tasks if t.device not in on_cpu)
    stream_s = streamed / bandwidth_Bps
    return {"streamed_weight_bytes": streamed, "all_transfer_bytes": moved, "stream_s": stream_s,
            "cpu_compute_predicted_s": cpu_s, "gpu_compute_predicted_s": gpu_s,
            "floor_s": max(stream_s, cpu_s)}


def profile_call(fn: Callable[[], Any], trace_path: Path | None) -> dict[str, str]:
    """One call of ``fn`` under ``torch.profiler``: its ops' tables by device (CUDA) time and by
    CPU time, 15 rows each; the Chrome trace gzipped to ``trace_path`` when given."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities) as prof:
        fn()
        sync()
    averages = prof.key_averages()
    tables = {"by CPU time": averages.table(sort_by="cpu_time_total", row_limit=15, max_name_column_width=50)}
    if torch.cuda.is_available():
        tables["by CUDA time"] = averages.table(sort_by="device_time_total", row_limit=15, max_name_column_width=50)
    if trace_path is not None:
        with tempfile.TemporaryDirectory() as tmp:
            raw = Path(tmp) / "trace.json"
            prof.export_chrome_trace(str(raw))
            with raw.open("rb") as src, gzip.open(trace_path, "wb") as dst:
                shutil.copyfileobj(src, dst)
    return tables


def run_autopart(model: torch.nn.Module, options: dict[str, Any], b: dict, warmup: int,
                 repeats: int, budget_s: float, trace: bool = False,
                 trace_path: Path | None = None) -> dict[str, Any]:
    """Compile ``model`` with a fresh autopart backend for batch ``b`` and time it; with
    ``trace``, profile one more call (:func:`profile_call`)."""
    torch._dynamo.reset()
    autopart.reset()
    backend = autopart.backend(**options)
    compiled = torch.compile(model, backend=backend, dynamic=False)
    ids = b["input_ids"]
    with torch.no_grad():
        start = time.perf_counter()
        out = compiled(input_ids=ids, use_cache=False).logits
        sync()
        first_s = time.perf_counter() - start
        output_device = str(out.device)
        logits = out.float().cpu()
        del out
        plans = autopart.last_plans()
        fallbacks = [f"{c.graph_name}: {c.fallback_reason}" for c in backend.compilations if c.fallback_reason]
        log(f"autopart batch {b['batch']}: first call (capture, plan, rewrite, run) {first_s:.1f} s, "
            f"{len(backend.compilations)} graph(s)" + (f"; FELL BACK: {fallbacks}" if fallbacks else ""))
        reset_gpu_peak()
        call = functools.partial(compiled, input_ids=ids, use_cache=False)
        samples = time_calls(call, warmup, repeats, budget_s)
        profile_tables = profile_call(call, trace_path) if trace else None
        del call
    log(f"autopart batch {b['batch']}: {statistics.median(samples) * 1e3:.1f} ms/call")
    result = {
        "samples_s": samples, "gpu_peak_bytes": gpu_peak_bytes(), "logits": logits,
        "first_call_s": first_s, "output_device": output_device,
        "plan_s": [c.plan_s for c in backend.compilations],
        "graphs": len(backend.compilations), "fallbacks": fallbacks,
        "static_copy_bytes": [c.metrics.static_copy_bytes for c in backend.compilations if c.metrics],
        "plans": plans, "topology": backend.topology, "profile": profile_tables,
    }
    del compiled, backend
    torch._dynamo.reset()
    autopart.reset()
    left = release_gpu()
    if left:
        log(f"autopart: {left / 2**20:.1f} MiB still allocated on the GPU after batch {b['batch']}")
    return result


# --------------------------------------------------------------------------- report


def environment(dry_run: bool) -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    env: dict[str, Any] = {"date": datetime.date.today().isoformat(), "host": platform.node(),
                           "python": platform.python_version(), "autopart": autopart.__version__}
    for pkg in ("torch", "transformers", "accelerate", "pulp", "highspy"):
        try:
            env[pkg] = version(pkg)
        except PackageNotFoundError:
            env[pkg] = "not installed"
    env["torch_build"] = torch.__version__
    env["cuda"] = torch.version.cuda
    env["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    env["cpu_cores_usable"] = len(os.sched_getaffinity(0))
    env["torch_threads"] = torch.get_num_threads()
    env["dry_run"] = dry_run
    env["git"] = git_state("bench/offload.py")
    return env


def fmt_bytes(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def render(payload: dict[str, Any]) -> str:
    env, s = payload["environment"], payload["settings"]
    bw = payload["bandwidth_Bps"]
    lines = [
        f"# Offloading: autopart against accelerate on {env['gpu'] or 'CPU (dry run)'}", "",
        (f"date {env['date']}, host {env['host']}, torch {env['torch_build']} (CUDA {env['cuda']}), "
         f"transformers {env['transformers']}, accelerate {env['accelerate']}, autopart {env['autopart']} "
         f"(commit {env['git']}), {env['cpu_cores_usable']} usable CPU cores, torch threads "
         f"{env['torch_threads']}, load average (1 min) {payload['load_average_1min'][0]:.2f} before, "
         f"{payload['load_average_1min'][1]:.2f} after"),
        "",
        (f"model {s['model']} ({s['num_params'] / 1e9:.3f}B parameters, {fmt_bytes(s['param_bytes'])} in "
         f"{s['dtype']}), sequence {s['seq_len']} tokens, max_memory {s['max_memory_shown']} "
         f"(GPU cap = {s['gpu_fraction']} x parameter bytes), {s['warmup']} warm-up + median of "
         f"{s['repeats']} timed calls (at most {s['budget_s']:.0f} s per system and batch); autopart "
         f"topology {s['topology']} (profile {s['profile']}), objective latency, ILP time limit "
         f"{s['time_limit_s']} s" + (f", device_map {s['device_map']!r}" if s.get("device_map") else "")),
        "",
        f"host-to-device bandwidth ({payload['bandwidth_source']}): pinned {bw['pinned'] / 1e9:.2f} GB/s"
        + (f", pageable {bw['pageable'] / 1e9:.2f} GB/s" if bw.get("pageable") else "")
        + (f"; device-to-host: into pinned memory {bw['d2h_pinned'] / 1e9:.2f} GB/s, pageable "
           f"{bw['d2h_pageable'] / 1e9:.2f} GB/s" if bw.get("d2h_pinned") else ""),
        "",
        ("floor = max(weight bytes autopart's plan streams per call / pinned bandwidth, autopart's "
         "predicted compute time of the plan's CPU tasks): perfect overlap of every copy and "
         "computation, GPU compute and activation copies free, the CPU part as the cost model "
         "predicts it (not measured). Reference independent of any plan: "
         f"(parameter bytes - GPU cap) / pinned bandwidth = {payload['min_stream_s'] * 1e3:.1f} ms, "
         "the least any system computing everything on the GPU copies per call."),
        "",
        ("x accelerate = tokens/s / accelerate's tokens/s; of floor = tokens/s / the floor's "
         "tokens/s (1.00: at the floor). GPU peak: torch.cuda.max_memory_allocated over the timed "
         "calls (weights the system keeps on the GPU included). The cap means different things: "
         "accelerate fills it with weights (keeping room for its largest layer) and activations "
         "come on top; autopart's plan keeps weights, streamed weights and activations within it."),
        "",
        "| model | batch | system | s/call | tokens/s | x accelerate | of floor | GPU peak |",
        "|---|---|---|---|---|---|---|---|",
    ]
    verdicts = []
    for row in payload["rows"]:
        lines.append(
            f"| {s['model']} | {row['batch']} | {row['system']} | {row['s_per_call']:.4f} | "
            f"{row['tokens_per_s']:.0f} | {_ratio(row.get('x_accelerate'))} | {_ratio(row.get('of_floor'))} | "
            f"{fmt_bytes(row.get('gpu_peak_bytes'))} |")
    for batch, v in payload["verdicts"].items():
        verdicts.append(f"- batch {batch}: autopart / accelerate = {_ratio(v['speedup'])} "
                        f"(target >= {TARGET_SPEEDUP}x): **{v['verdict']}**")
    lines += ["", f"Target: autopart's tokens/s >= {TARGET_SPEEDUP} x accelerate's, per batch.", "", *verdicts]
    lines += ["", "## Per batch", ""]
    for batch, info in payload["autopart"].items():
        f = info["floor"]
        predicted_s = sum(p["predicted_time_s"] for p in info["plans"])  # graphs run one after another
        lines.append(
            f"- batch {batch}: autopart first call {info['first_call_s']:.1f} s ({info['graphs']} graph(s), "
            f"planning {sum(info['plan_s']):.1f} s), output on {info['output_device']}; streams "
            f"{fmt_bytes(f['streamed_weight_bytes'])} of weights per call ({fmt_bytes(f['all_transfer_bytes'])} "
            f"with activations) = {f['stream_s'] * 1e3:.1f} ms at pinned bandwidth; predicted CPU compute "
            f"{f['cpu_compute_predicted_s'] * 1e3:.1f} ms, GPU compute {f['gpu_compute_predicted_s'] * 1e3:.1f} ms; "
            f"the plan predicts {predicted_s * 1e3:.1f} ms per call, measured / predicted "
            f"{info['median_s'] / predicted_s:.2f}; "
            f"max |logits - accelerate's| {_num(info.get('max_abs_diff_vs_accelerate'))}"
            + (f"; FELL BACK: {info['fallbacks']}" if info["fallbacks"] else ""))
    acc = payload.get("accelerate")
    if acc:
        per_device = ", ".join(f"{k} {fmt_bytes(v)}" for k, v in acc["bytes_per_device"].items())
        lines += ["", "## accelerate's device map", "",
                  (f"parameter bytes per device: {per_device}; streamed per call: "
                   f"{fmt_bytes(acc['streamed_bytes_per_call'])}; dispatched {acc['dispatched_with']}; "
                   f"output on {acc.get('output_device')}"), "", "```",
                  *_compact_map(acc["device_map"]), "```"]
    else:
        lines += ["", f"accelerate skipped: {payload.get('accelerate_skipped')}"]
    lines += ["", "## autopart's plans", ""]
    for batch, info in payload["autopart"].items():
        for i, summary in enumerate(info["plan_summaries"]):
            lines += [f"### batch {batch}, graph {i}", "", "```", summary, "```", ""]
    for batch, info in payload["autopart"].items():
        for title, table in (info.get("profile") or {}).items():
            lines += [f"## One autopart call at batch {batch}, torch.profiler, ops {title}", "", "```", table, "```", ""]
    lines += ["## Topology autopart planned for", "", "```", payload["topology_table"], "```"]
    return "\n".join(lines) + "\n"


def _compact_map(device_map: dict[str, str]) -> list[str]:
    """Runs of consecutive entries on one device, one line each."""
    out, run = [], []
    for name, dev in device_map.items():
        if run and run[-1][1] != dev:
            out.append(_run_line(run))
            run = []
        run.append((name, dev))
    if run:
        out.append(_run_line(run))
    return out


def _run_line(run: list[tuple[str, str]]) -> str:
    names = run[0][0] if len(run) == 1 else f"{run[0][0]} .. {run[-1][0]} ({len(run)} entries)"
    return f"{run[0][1]:8s} {names}"


def _ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.3g}"


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=["llama-1.3b", "gpt2-xl"], default="llama-1.3b")
    parser.add_argument("--dtype", choices=list(DTYPES), default="float16")
    parser.add_argument("--gpu-fraction", type=float, default=0.5,
                        help="GPU cap as a fraction of the model's parameter bytes")
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 16])
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=None, help="warm-up calls (default 2; 1 with --dry-run)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed calls, the median is reported (default 5; 2 with --dry-run)")
    parser.add_argument("--budget", type=float, default=60.0,
                        help="seconds of warm-up + timed calls per system and batch; past it, stop "
                             "after the current call (at least one timed call)")
    parser.add_argument("--topology", default=None,
                        help="autopart topology: a preset name or a JSON file (default: this machine)")
    parser.add_argument("--profile", choices=["cached", "always", "never"], default="always",
                        help="with no --topology: autopart's profile option (default always: profile "
                             "this machine now, up to 60 s, unless a profile is cached, so that the plan "
                             "uses measured numbers)")
    parser.add_argument("--time-limit", type=float, default=10.0, help="autopart's ILP time limit, s")
    parser.add_argument("--out", type=Path, default=None,
                        help="results folder (default bench/results; a temporary folder with --dry-run)")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--trace", action="store_true",
                        help="profile one more autopart call per batch (torch.profiler): op tables in the "
                             "results, Chrome traces next to them")
    parser.add_argument("--dry-run", action="store_true",
                        help="no GPU needed: tiny model, autopart plans for the 1x4090-cpu preset "
                             "and runs on the CPU; checks the script's code paths")
    args = parser.parse_args(argv)
    if args.warmup is None:
        args.warmup = 1 if args.dry_run else 2
    if args.repeats is None:
        args.repeats = 2 if args.dry_run else 5
    if not 0 < args.gpu_fraction:
        parser.error(f"--gpu-fraction must be > 0, got {args.gpu_fraction}")
    if min(args.batches) < 1 or args.seq_len < 1 or args.repeats < 1 or args.warmup < 0:
        parser.error("--batches, --seq-len and --repeats must be >= 1 and --warmup >= 0")
    cuda = torch.cuda.is_available()
    if not cuda and not args.dry_run:
        print("bench/offload.py measures offloading to a GPU and this machine has no CUDA device "
              f"(torch {torch.__version__}); nothing to measure. Run it on a GPU machine, or "
              "pass --dry-run to check the script on the CPU with a tiny model.")
        return 0
    dry = args.dry_run
    try:
        import accelerate  # noqa: F401
        accelerate_skipped = None
    except ImportError:
        accelerate_skipped = "accelerate is not installed (pip install accelerate)"
        if not dry:
            print(f"bench/offload.py compares with accelerate: {accelerate_skipped}")
            return 1

    wall = time.perf_counter()
    env = environment(dry)
    date = env["date"]
    device_slug = slug(env["gpu"]) if env["gpu"] and not dry else "dry-run-cpu"
    out = None if args.no_write else args.out or (Path(tempfile.mkdtemp(prefix="offload-dry-run-")) if dry else RESULTS)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()[0]
    dtype = DTYPES[args.dtype]
    log(f"building {args.model}{' (tiny, dry run)' if dry else ''} in {args.dtype} ...")
    model = build(args.model, dtype, tiny=dry)
    nbytes = param_bytes(model)
    num_params = sum(p.numel() for p in model.parameters())
    gpu_cap = int(args.gpu_fraction * nbytes)
    try:
        import psutil  # installed with accelerate

        cpu_cap = int(psutil.virtual_memory().available)
    except ImportError:
        cpu_cap = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    max_memory: dict[Any, int] = {0: gpu_cap, "cpu": cpu_cap}
    log(f"{num_params / 1e6:.1f}M parameters, {fmt_bytes(nbytes)}; max_memory {{0: {fmt_bytes(gpu_cap)}, "
        f"'cpu': {fmt_bytes(cpu_cap)}}}")

    if cuda and not dry:
        log("measuring host <-> device bandwidth ...")
        bandwidth = host_link_bandwidth_Bps()
        bandwidth_source = (f"measured, {BANDWIDTH_BYTES // 2**20} MiB copies, median of 5; host-to-device "
                            "timed with CUDA events, device-to-host on the host clock")
    else:
        link = autopart.Topology.preset(DRY_TOPOLOGY).link("cpu", "cuda:0")
        bandwidth = {"pinned": link.bandwidth_Bps}
        bandwidth_source = f"dry run: nominal cpu -> cuda:0 link of preset {DRY_TOPOLOGY}, not measured"
    log("host <-> device bandwidth: " + ", ".join(f"{k} {v / 1e9:.2f} GB/s" for k, v in bandwidth.items()))

    gen = torch.Generator().manual_seed(0)
    batches = [{"batch": b, "input_ids": torch.randint(0, vocab_size(model), (b, args.seq_len), generator=gen)}
               for b in args.batches]

    options: dict[str, Any] = {"max_memory": max_memory, "objective": "latency",
                               "time_limit_s": args.time_limit}
    if dry:
        options.update(topology=args.topology or DRY_TOPOLOGY, device_map="cpu")
    else:
        options.update(topology=args.topology, profile=args.profile)

    acc = None
    if accelerate_skipped is None:
        log("accelerate: inferring the device map and dispatching ...")
        acc = run_accelerate(model, max_memory, batches, args.warmup, args.repeats, args.budget, dry)
    else:
        log(f"accelerate skipped: {accelerate_skipped}")

    ap: dict[int, dict[str, Any]] = {}
    for b in batches:
        log(f"autopart batch {b['batch']}: compiling (capture, plan, rewrite) ...")
        trace_path = None if out is None else out / f"offload-{device_slug}-{date}-b{b['batch']}.trace.json.gz"
        ap[b["batch"]] = run_autopart(model, options, b, args.warmup, args.repeats, args.budget,
                                      trace=args.trace, trace_path=trace_path)

    tokens = {b["batch"]: b["batch"] * args.seq_len for b in batches}
    rows, verdicts, ap_out = [], {}, {}
    topology_table = ""
    for b in args.batches:
        r = ap[b]
        floor = plan_floor(r["plans"], r["topology"], bandwidth["pinned"])
        floor_s = floor["floor_s"]
        ap_s = statistics.median(r["samples_s"])
        acc_s = statistics.median(acc["batches"][b]["samples_s"]) if acc else None
        systems = []
        if acc:
            systems.append(("accelerate", acc_s, acc["batches"][b]["gpu_peak_bytes"]))
        systems.append(("autopart", ap_s, r["gpu_peak_bytes"]))
        systems.append(("floor", floor_s, None))
        for name, s, peak in systems:
            rows.append({
                "batch": b, "system": name, "s_per_call": s, "tokens_per_s": tokens[b] / s if s else float("inf"),
                "x_accelerate": acc_s / s if acc_s and s else None,
                "of_floor": floor_s / s if s else None, "gpu_peak_bytes": peak,
            })
        if acc:
            speedup = acc_s / ap_s
            verdicts[b] = {"speedup": speedup, "verdict": "PASS" if speedup >= TARGET_SPEEDUP else "FAIL"}
        else:
            verdicts[b] = {"speedup": None, "verdict": "n/a (no accelerate)"}
        diff = (r["logits"] - acc["batches"][b]["logits"]).abs().max().item() if acc else None
        ap_out[b] = {
            "median_s": ap_s, "samples_s": r["samples_s"], "gpu_peak_bytes": r["gpu_peak_bytes"],
            "first_call_s": r["first_call_s"], "plan_s": r["plan_s"], "graphs": r["graphs"],
            "fallbacks": r["fallbacks"], "output_device": r["output_device"],
            "static_copy_bytes": r["static_copy_bytes"], "floor": floor,
            "max_abs_diff_vs_accelerate": diff,
            "plan_summaries": [p.summary() for p in r["plans"]], "profile": r["profile"],
            "plans": [p.to_dict() for p in r["plans"]],
        }
        topology_table = r["topology"].table()
    acc_out = None
    if acc:
        acc_out = {k: v for k, v in acc.items() if k != "batches"}
        acc_out["batches"] = {b: {"median_s": statistics.median(v["samples_s"]), "samples_s": v["samples_s"],
                                  "gpu_peak_bytes": v["gpu_peak_bytes"]} for b, v in acc["batches"].items()}

    payload = {
        "environment": env,
        "settings": {
            "model": args.model + (" (tiny)" if dry else ""), "dtype": args.dtype, "num_params": num_params,
            "param_bytes": nbytes, "gpu_fraction": args.gpu_fraction, "seq_len": args.seq_len,
            "batches": args.batches, "warmup": args.warmup, "repeats": args.repeats, "budget_s": args.budget,
            "max_memory": {str(k): v for k, v in max_memory.items()},
            "max_memory_shown": f"{{0: {fmt_bytes(gpu_cap)}, 'cpu': {fmt_bytes(cpu_cap)}}}",
            "topology": options.get("topology") or "this machine", "profile": options.get("profile", "-"),
            "device_map": options.get("device_map"), "time_limit_s": args.time_limit,
        },
        "bandwidth_Bps": bandwidth, "bandwidth_source": bandwidth_source,
        "min_stream_s": max(0, nbytes - gpu_cap) / bandwidth["pinned"],
        "rows": rows, "verdicts": verdicts, "autopart": ap_out, "accelerate": acc_out,
        "accelerate_skipped": accelerate_skipped, "topology_table": topology_table,
        "load_average_1min": [load_before, os.getloadavg()[0]],
        "run_s": time.perf_counter() - wall,
    }
    text = render(payload)
    print()
    print(text)
    log(f"run took {payload['run_s']:.1f} s")
    if out is not None:
        stem = out / f"offload-{device_slug}-{date}"
        atomic_write_text(stem.with_suffix(".md"), text)
        atomic_write_text(stem.with_suffix(".json"), json.dumps(payload, indent=1, default=str) + "\n")
        print(f"wrote {stem}.md and {stem}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
