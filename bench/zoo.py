"""Architecture zoo: autopart against eager on 39 tiny transformers models.

For each model of ``_zoo_models.MODELS`` (17 decoder-only language models, 2 mixtures of
experts, 6 text encoders, 4 encoder-decoders, 8 vision and 2 audio models; 2 layers, random
weights) and each mode, compile the model with autopart and compare it with a copy run eagerly:

- ``inference``: eval mode, ``torch.no_grad()``; the main output (logits or last_hidden_state).
- ``training``: train mode (every dropout 0), ``main.sum().backward()``; the output and every
  parameter's ``.grad`` (``None`` against a tensor counts as a mismatch).
- ``recompile``: eval mode, a second call with other shapes (sequences 3 tokens shorter, images
  and audio at batch 1), which Dynamo compiles again.
- ``output_inplace``: train mode; ``out.mul_(2)`` on the returned tensor, which must work and
  give eager's values.
- ``dynamic``: as ``recompile``, compiled with ``torch.compile(dynamic=True)`` and the shorter
  inputs made contiguous: the graph Dynamo captures on the first call has symbolic sizes and
  the second call runs it again at the new size (graphs 1 unless the model breaks the graph).
  Graphs the second call compiled are counted (``graphs_2nd_call``, shown in the graphs column);
  more graphs than Dynamo's eager backend compiles for the same two calls fail the mode (stage
  ``graphs``): the backend specialized the symbolic graph (added shape guards), and each new
  length would be compiled and planned again.
- ``bf16``: eval mode, ``torch.no_grad()``; the model cast to bfloat16 (float inputs too, integer
  inputs kept) against the same bfloat16 model run eagerly, rtol and atol 1e-2 (the max abs diff is
  recorded: autopart runs eager's ops, so it should be 0 or tiny). The caps are sized on the
  bfloat16 bytes.
- ``generate``: eval mode; ``model.generate(**inputs, max_new_tokens=5, do_sample=False)`` with
  ``model.forward = torch.compile(model.forward, ...)`` (prefill and each decoding step are
  Dynamo calls, with a growing KV cache): the token ids must equal eager generate's, and the max
  abs diff of the step logits is recorded. Only for models that can generate and are causal LMs
  or encoder-decoders (the ``*ForCausalLM`` and ``*ForConditionalGeneration`` models); the others
  are recorded as ``n/a`` (not a pass: ``passed`` is null in the JSON).

A run checks the first four modes unless ``--modes`` says otherwise: dynamic, bf16 and generate
are opt-in, since they about double the run's time (generate compiles a graph per decoding
shape, each planned by the solver).

Tolerances: rtol 1e-4, atol 1e-5. The plans split each model over GPUs this machine need not
have: topology ``4xa100-pcie-cpu``, ``max_memory`` 0.6 x the model's bytes on each of
cuda:0..2 (0.8, 0.95, then 1.25, only when planning refuses for lack of memory: a model whose
activations outweigh its weights, as a small ConvNeXt's, needs room for them and for the copies
each device receives), ``device_map="cpu"``
(every device runs on the CPU), ``strict=True`` (an error raises instead of falling back),
``max_groups=16``. Plans made with gradients enabled reserve what training holds
(``autopart.Config.optimizer``): the training mode passes ``optimizer="sgd"`` (gradients and
saved activations; it calls backward and takes no step), output_inplace ``optimizer="none"``
(saved activations), both with caps of 1.0, 1.25, 1.6, 2.5, then 4 x the model's bytes
(:data:`GRAD_FRACTIONS`).

Each model runs all its modes in a process of its own (one torch thread) within ``--timeout``
seconds, so a crash or hang fails that model's rows and the run goes on. ``--backend eager``
runs the same checks with Dynamo's eager backend: a failure there is not autopart's. The exit
code is 0 whatever the models do, nonzero only when the harness itself breaks. A full run takes
4 to 6 minutes on a 2-core CPU with ``--jobs 2``: a model takes 9-25 s, about 6 s of it
importing torch and transformers.

    python bench/zoo.py [--only t5 bart ...] [--modes inference training recompile output_inplace
                                                 dynamic bf16 generate]
                        [--jobs 2] [--timeout 300] [--backend autopart|eager] [--out bench/results]
                        [--no-write]

Writes bench/results/zoo-<machine>-<date>.{md,json} (zoo-eager-... with ``--backend eager``).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version
from pathlib import Path

import torch
from _common import git_state, machine_name

import autopart

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
MODES = ("inference", "training", "recompile", "output_inplace", "dynamic", "bf16", "generate")
DEFAULT_MODES = MODES[:4]
"""The modes a run without ``--modes`` checks (dynamic, bf16 and generate double its time)."""
FRACTIONS = (0.6, 0.8, 0.95, 1.25)
"""Caps tried in turn, as fractions of the model's bytes per capped device."""
GRAD_FRACTIONS = (1.0, 1.25, 1.6, 2.5, 4.0)
"""Caps of the modes that run with gradients enabled, whose plans reserve the activations
autograd saves (and, for training, each parameter's gradient: ``optimizer="sgd"``, as the mode
calls backward but takes no step): larger than the weights alone; ALBERT, whose layers share
one set of weights, saves activations several times its weights' bytes."""
MODE_OPTIONS = {"training": dict(optimizer="sgd"), "output_inplace": dict(optimizer="none")}
"""Backend options per mode: output_inplace runs forward with gradients enabled, no backward."""
CAPPED = ("cuda:0", "cuda:1", "cuda:2")
OPTIONS = dict(topology="4xa100-pcie-cpu", device_map="cpu", strict=True, max_groups=16)
RTOL, ATOL = 1e-4, 1e-5
BF16_RTOL, BF16_ATOL = 1e-2, 1e-2
NEW_TOKENS = 5
"""Tokens the generate mode generates (greedy)."""
WHOLE_BATCH = ("pixel_values", "input_features", "input_values")
"""Inputs that the recompile mode cuts to batch 1 (the others lose 3 tokens)."""


# --------------------------------------------------------------------------- worker


def model_bytes(model: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


class NotApplicable(Exception):
    """Raised by a check whose mode does not apply to the model (recorded as n/a, not a pass)."""


def compare(out: torch.Tensor, ref: torch.Tensor, rec: dict, where: str = "", rtol: float = RTOL,
            atol: float = ATOL) -> None:
    rec["stage"] = "numerics" + where
    if out.shape == ref.shape:
        diff = (out.detach().float() - ref.detach().float()).abs().max().item()
        rec["max_abs_diff"] = max(rec.get("max_abs_diff", 0.0), diff)
    torch.testing.assert_close(out.detach(), ref.detach(), rtol=rtol, atol=atol)


def shorter(inputs: dict) -> dict:
    """``inputs`` with other shapes: images and audio at batch 1, sequences 3 tokens shorter."""
    return {k: v[:1] if k in WHOLE_BATCH else v[:, :-3] for k, v in inputs.items()}


def compare_grads(model: torch.nn.Module, eager: torch.nn.Module, rec: dict) -> None:
    rec["stage"] = "grads"
    ref = dict(eager.named_parameters())
    worst, presence, values = 0.0, [], []
    for name, p in model.named_parameters():
        g, q = p.grad, ref[name].grad
        if (g is None) != (q is None):
            presence.append(f"{name} ({'None' if g is None else 'a tensor'}, eager "
                            f"{'None' if q is None else 'a tensor'})")
        elif g is not None:
            worst = max(worst, (g - q).abs().max().item())
            if g.shape != q.shape or not torch.allclose(g, q, rtol=RTOL, atol=ATOL):
                values.append(name)
    rec["max_abs_grad_diff"] = worst
    if presence:
        raise AssertionError(f"{len(presence)} parameter(s) have a grad where eager has none or the "
                             f"reverse: {', '.join(presence[:3])}")
    if values:
        raise AssertionError(f"{len(values)} parameter grad(s) differ beyond tolerance: "
                             f"{', '.join(values[:3])}")


def check_inference(model, inputs, key, backend, rec) -> None:
    model.eval()
    with torch.no_grad():
        ref = model(**inputs)[key]
        rec["stage"] = "call"
        out = torch.compile(model, backend=backend)(**inputs)[key]
    compare(out, ref, rec)


def check_training(model, inputs, key, backend, rec) -> None:
    model.train()
    eager = copy.deepcopy(model)
    ref = eager(**inputs)[key]
    ref.float().sum().backward()
    rec["stage"] = "call"
    out = torch.compile(model, backend=backend)(**inputs)[key]
    rec["stage"] = "backward"
    out.float().sum().backward()
    compare(out, ref, rec)
    compare_grads(model, eager, rec)


def compare_calls(model, compiled, calls: list[tuple[str, dict]], key, rec) -> None:
    """Each ``(where, inputs)`` of ``calls`` through ``model`` and ``compiled``, compared."""
    for where, args in calls:
        with torch.no_grad():
            rec["stage"] = "eager" + where
            ref = model(**args)[key]
            rec["stage"] = "call" + where
            out = compiled(**args)[key]
        compare(out, ref, rec, where)


def counting(backend, graphs: list):
    """``backend``, appending each graph it is handed to ``graphs``."""

    def wrapped(gm, example_inputs):
        graphs.append(gm)
        return backend(gm, example_inputs)

    return wrapped


def check_recompile(model, inputs, key, backend, rec) -> None:
    model.eval()
    compiled = torch.compile(model, backend=backend)
    compare_calls(model, compiled, [("", inputs), (" (2nd call)", shorter(inputs))], key, rec)


def check_output_inplace(model, inputs, key, backend, rec) -> None:
    model.train()
    ref = copy.deepcopy(model)(**inputs)[key]
    ref.mul_(2)
    rec["stage"] = "call"
    out = torch.compile(model, backend=backend)(**inputs)[key]
    rec["stage"] = "inplace"
    out.mul_(2)
    compare(out, ref, rec)


def check_dynamic(model, inputs, key, backend, rec) -> None:
    model.eval()
    # contiguous: a sliced view's strides fail a stride guard and Dynamo would compile a second
    # graph, where the point is to run the first (symbolic) graph on another size
    other = {k: v.contiguous() for k, v in shorter(inputs).items()}
    rec["stage"] = "eager backend"
    eager_graphs: list = []
    eager = torch.compile(model, backend=counting(lambda gm, example_inputs: gm.forward, eager_graphs),
                          dynamic=True)
    with torch.no_grad():
        for args in (inputs, other):
            eager(**args)
    torch._dynamo.reset()
    graphs: list = []
    compiled = torch.compile(model, backend=counting(backend, graphs), dynamic=True)
    compare_calls(model, compiled, [("", inputs)], key, rec)
    first = len(graphs)
    compare_calls(model, compiled, [(" (2nd call)", other)], key, rec)
    rec["graphs_2nd_call"] = len(graphs) - first
    rec["stage"] = "graphs"
    if len(graphs) > len(eager_graphs):
        raise AssertionError(f"{len(graphs)} graphs compiled where Dynamo's eager backend compiles "
                             f"{len(eager_graphs)}: the backend specialized the symbolic graph")


def to_bf16(model, inputs):
    """``model`` (a copy already) in bfloat16 and ``inputs`` with float tensors cast to it."""
    return model.to(torch.bfloat16), {k: v.to(torch.bfloat16) if v.is_floating_point() else v
                                      for k, v in inputs.items()}


def check_bf16(model, inputs, key, backend, rec) -> None:
    # attempt() has cast the model and inputs (PREPARE), before sizing the caps on its bytes
    assert next(model.parameters()).dtype == torch.bfloat16
    model.eval()
    with torch.no_grad():
        ref = model(**inputs)[key]
        rec["stage"] = "call"
        out = torch.compile(model, backend=backend)(**inputs)[key]
    compare(out, ref, rec, rtol=BF16_RTOL, atol=BF16_ATOL)


def generates(model) -> bool:
    """Whether ``model`` has ``generate`` and is a causal LM or an encoder-decoder with an LM head."""
    causal = type(model).__name__.endswith("ForCausalLM")
    seq2seq = bool(getattr(model.config, "is_encoder_decoder", False))
    return callable(getattr(model, "generate", None)) and model.can_generate() and (causal or seq2seq)


def check_generate(model, inputs, key, backend, rec) -> None:
    if not generates(model):
        raise NotApplicable(f"{type(model).__name__} is not a generating causal LM or encoder-decoder")
    model.eval()
    options = {"max_new_tokens": NEW_TOKENS, "do_sample": False, "return_dict_in_generate": True,
               "output_logits": True}
    with torch.no_grad():
        ref = model.generate(**inputs, **options)
        rec["stage"] = "call"
        model.forward = torch.compile(model.forward, backend=backend)  # what generate calls per step
        out = model.generate(**inputs, **options)
    rec["stage"] = "numerics"
    if len(out.logits) == len(ref.logits):
        rec["max_abs_diff"] = max((o - r).abs().max().item() for o, r in zip(out.logits, ref.logits))
    if out.sequences.shape != ref.sequences.shape or not torch.equal(out.sequences, ref.sequences):
        differ = (out.sequences != ref.sequences).sum().item() if out.sequences.shape == ref.sequences.shape \
            else "shapes"
        raise AssertionError(f"token ids differ ({differ}): compiled {out.sequences.tolist()}, eager "
                             f"{ref.sequences.tolist()}")


CHECKS = {"inference": check_inference, "training": check_training, "recompile": check_recompile,
          "output_inplace": check_output_inplace, "dynamic": check_dynamic, "bf16": check_bf16,
          "generate": check_generate}
PREPARE = {"bf16": to_bf16}
"""Per mode, ``(model, inputs) -> (model, inputs)`` applied before the caps are sized."""


def failure(exc: Exception) -> dict:
    """Type, message and traceback of ``exc`` (for a BackendCompilerFailed, of the backend's error)."""
    inner = getattr(exc, "inner_exception", None)
    shown = exc if inner is None else inner
    return {"exception": type(exc).__name__ + ("" if inner is None else f"({type(inner).__name__})"),
            "message": str(shown)[:2000],
            "traceback": "".join(traceback.format_exception(shown)).splitlines()[-20:]}


def attempt(model, inputs, key, mode: str, backend_name: str, fraction: float | None) -> dict:
    """One mode on ``model`` (which it may modify) with one cap; the record of its outcome."""
    torch._dynamo.reset()
    autopart.reset()
    if mode in PREPARE:
        model, inputs = PREPARE[mode](model, inputs)
    eager_graphs = []
    if backend_name == "autopart":
        cap = int(fraction * model_bytes(model))
        backend = autopart.backend(max_memory={d: cap for d in CAPPED}, **OPTIONS, **MODE_OPTIONS.get(mode, {}))
    else:
        backend = counting(lambda gm, example_inputs: gm.forward, eager_graphs)  # Dynamo's "eager" backend
    rec = {"passed": False, "stage": "eager", "fraction": fraction}
    try:
        CHECKS[mode](model, inputs, key, backend, rec)
        rec.update(passed=True, stage="")
    except NotApplicable as exc:
        rec.update(passed=None, stage="n/a", message=str(exc))
    except Exception as exc:
        rec.update(failure(exc))
        inner = getattr(exc, "inner_exception", None)
        if rec["stage"].startswith("call"):
            rec["stage"] = ("compile" if inner is not None else "run") + rec["stage"][4:]
        rec["capacity_refused"] = isinstance(inner, ValueError) and "raise max_memory" in str(inner)
    if backend_name == "autopart":
        rec["compilations"] = [
            {"graph": c.graph_name, "nodes": len(c.graph.graph.nodes),
             "devices": c.plan.devices_used if c.plan else [],
             "solver_status": c.plan.solver_status if c.plan else None,
             "partitions": sum(n.startswith("submod_") for n, _ in c.runner.module.named_children())
             if c.runner else 0,
             "fallback": c.fallback_reason}
            for c in backend.compilations
        ]
        rec["graphs"] = len(rec["compilations"])
        rec["devices"] = list(dict.fromkeys(d for c in rec["compilations"] for d in c["devices"]))
    else:
        rec["graphs"] = len(eager_graphs)
    return rec


def worker(name: str, modes: list[str], backend_name: str, records: Path) -> None:
    """Build ``name`` and append one JSON line per mode to ``records``."""
    from _zoo_models import MODELS

    torch.set_num_threads(1)
    torch.manual_seed(0)
    try:
        model, inputs, key = MODELS[name]()
        about = {"class": type(model).__name__, "model_bytes": model_bytes(model)}
    except Exception as exc:
        model, about = None, {"passed": False, "stage": "build", **failure(exc)}
    for mode in modes:
        start = time.perf_counter()
        rec, refused = dict(about), []
        if model is not None:
            ladder = GRAD_FRACTIONS if mode in MODE_OPTIONS else FRACTIONS
            for fraction in ladder if backend_name == "autopart" else (None,):
                rec = about | attempt(copy.deepcopy(model), inputs, key, mode, backend_name, fraction)
                if not rec.pop("capacity_refused", False) or fraction == ladder[-1]:
                    break
                refused.append({"fraction": fraction, "message": rec["message"]})
        rec.update(model=name, mode=mode, refused=refused, wall_s=round(time.perf_counter() - start, 2))
        with records.open("a") as fh:
            fh.write(json.dumps(rec) + "\n")


# --------------------------------------------------------------------------- driver


def run_model(name: str, modes: list[str], backend_name: str, timeout: float) -> tuple[list[dict], bool]:
    """Run the worker for ``name``; (a record per mode, whether the harness broke)."""
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="zoo-") as tmp:
        records = Path(tmp) / "records.jsonl"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--records", str(records),
               "--backend", backend_name, "--modes", *modes]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=dict(os.environ, OMP_NUM_THREADS="1"))
        try:
            output, timed_out = proc.communicate(timeout=timeout)[0], False
        except subprocess.TimeoutExpired:
            proc.kill()
            output, timed_out = proc.communicate()[0], True
        lines = records.read_text().splitlines() if records.exists() else []
    done = {r["mode"]: r for r in map(json.loads, lines)}
    tail = [line for line in output.splitlines() if line.strip()][-20:]
    harness_broke = not timed_out and proc.returncode == 1  # an exception outside the checks
    if timed_out:
        lost = {"stage": "timeout", "exception": "Timeout", "message": f"no result within {timeout:.0f} s"}
    else:
        code = f"signal {-proc.returncode}" if proc.returncode < 0 else f"exit {proc.returncode}"
        lost = {"stage": "crash", "exception": code, "message": tail[-1] if tail else ""}
    recs = [done.get(m) or dict(lost, model=name, mode=m, passed=False, output_tail=tail) for m in modes]
    wall = time.perf_counter() - start
    failed = [f"{r['mode']} ({r['stage']})" for r in recs if r["passed"] is False]
    skipped = [r["mode"] for r in recs if r["passed"] is None]
    print(f"{name:14s} {len(modes) - len(failed) - len(skipped)}/{len(modes) - len(skipped)} passed in "
          f"{wall:5.1f} s" + (f"; n/a: {', '.join(skipped)}" if skipped else "")
          + (f"; failed: {', '.join(failed)}" if failed else ""), file=sys.stderr, flush=True)
    if harness_broke:
        print(f"{name}: the worker failed outside the checks:\n" + "\n".join(tail), file=sys.stderr)
    return recs, harness_broke


def cell(text, n: int = 100) -> str:
    text = " ".join(str(text or "").split()).replace("|", "\\|")
    return text[:n] + ("..." if len(text) > n else "")


def fmt_diff(r: dict) -> str:
    def f(x):
        return "" if x is None else "0" if x == 0 else f"{x:.1e}"

    grad = r.get("max_abs_grad_diff")
    return f(r.get("max_abs_diff")) + (f" (grads {f(grad)})" if grad is not None else "")


def summary(results: list[dict], modes: list[str]) -> list[str]:
    lines = []
    for mode in modes:
        rows = [r for r in results if r["mode"] == mode]
        failed = [r["model"] for r in rows if r["passed"] is False]
        skipped = [r["model"] for r in rows if r["passed"] is None]
        total = sum(r.get("wall_s") or 0 for r in rows)
        lines.append(f"- {mode}: {len(rows) - len(failed) - len(skipped)} / {len(rows) - len(skipped)} "
                     f"passed" + (f" (failed: {', '.join(failed)})" if failed else "")
                     + (f"; not applicable to {len(skipped)}: {', '.join(skipped)}" if skipped else "")
                     + f"; {total:.0f} s in all")
    return lines


RESULT = {True: "pass", False: "FAIL", None: "n/a"}


def render(payload: dict) -> str:
    env, s = payload["environment"], payload["settings"]
    fractions = ", then ".join(str(f) for f in FRACTIONS[1:])
    grad = ", then ".join(str(f) for f in GRAD_FRACTIONS)
    options = (f"autopart.backend(topology={OPTIONS['topology']!r}, max_memory = {FRACTIONS[0]} x the "
               f"model's bytes on each of {', '.join(CAPPED)} ({fractions} only when planning refuses "
               f"for lack of memory; training with optimizer='sgd' and output_inplace with "
               f"optimizer='none', whose plans reserve saved activations (and gradients): {grad}), "
               f"device_map={OPTIONS['device_map']!r}, strict=True, max_groups={OPTIONS['max_groups']})")
    lines = [
        f"# Architecture zoo: {s['backend']} against eager on {env['cpu']}", "",
        f"date {env['date']}, host {env['host']}, torch {env['torch']}, transformers {env['transformers']}, "
        f"autopart {env['autopart']} at {env['git']}, python {env['python']}; {env['cores']} usable "
        f"CPU cores, one process of 1 torch thread per model, {s['jobs']} at a time, timeout "
        f"{s['timeout_s']:.0f} s per model; whole run {payload['wall_s']:.0f} s; load average (1 min) "
        f"{payload['load_average_1min'][0]:.2f} before, {payload['load_average_1min'][1]:.2f} after", "",
        (options if s["backend"] == "autopart" else "Dynamo's eager backend (no autopart)")
        + f"; rtol {RTOL:.0e}, atol {ATOL:.0e}. Modes: inference (eval, no_grad, main output); "
        "training (train, dropout 0, main.sum().backward(), output and every parameter's .grad, None "
        "against a tensor a mismatch); recompile (eval, a second call with 3 tokens fewer or batch 1); "
        "output_inplace (train, out.mul_(2) on the returned tensor); dynamic (eval, "
        "torch.compile(dynamic=True), then a second call as recompile's, made contiguous); bf16 "
        f"(eval, the model and float inputs in bfloat16, rtol {BF16_RTOL:.0e}, atol {BF16_ATOL:.0e}, "
        "caps sized on the bfloat16 bytes); generate (causal LMs and encoder-decoders with an LM "
        f"head: greedy generate of {NEW_TOKENS} tokens with model.forward compiled, token ids "
        "equal; max abs diff over the step logits; n/a for other models).", "",
        "stage: where a failure happened (eager: the uncompiled reference; compile / run: the compiled "
        "call; numerics / grads: the comparison). cap: the fraction of the model's bytes each capped "
        "device got. graphs: graphs Dynamo captured (dynamic: those the 2nd call compiled in "
        "parentheses); devices: those the plans use; s: seconds of the mode, the uncompiled "
        "reference included.", "",
        *summary(payload["results"], s["modes"]), "",
        "| model | mode | result | stage | exception | message | max abs diff | cap | graphs | devices | s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in payload["results"]:
        lines.append(
            f"| {r['model']} | {r['mode']} | {RESULT[r['passed']]} | {r['stage']} | "
            f"{r.get('exception', '')} | {cell(r.get('message'))} | {fmt_diff(r)} | "
            f"{r.get('fraction') or ''} | {r.get('graphs', '')}"
            + (f" ({r['graphs_2nd_call']} at 2nd call)" if r.get("graphs_2nd_call") else "")
            + f" | {' '.join(r.get('devices', []))} | "
            f"{r.get('wall_s', '')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", metavar="NAME", help="models to run (default: all)")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(DEFAULT_MODES),
                        help=f"modes to check (default: {' '.join(DEFAULT_MODES)})")
    parser.add_argument("--jobs", type=int, default=2, help="models run at a time")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per model, all modes")
    parser.add_argument("--backend", choices=("autopart", "eager"), default="autopart")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--records", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker, args.modes, args.backend, args.records)
        return 0

    from _zoo_models import MODELS

    names = args.only or list(MODELS)
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; the models are: {', '.join(MODELS)}")
    topo = autopart.Topology.discover()
    load_before, start = os.getloadavg()[0], time.perf_counter()
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        runs = list(pool.map(lambda n: run_model(n, args.modes, args.backend, args.timeout), names))
    results = [r for recs, _ in runs for r in recs]
    payload = {
        "environment": {
            "date": datetime.date.today().isoformat(), "host": platform.node(),
            "cpu": topo.device("cpu").model or platform.processor() or "cpu",
            "cores": len(os.sched_getaffinity(0)), "python": platform.python_version(),
            "torch": torch.__version__, "transformers": version("transformers"),
            "autopart": autopart.__version__, "git": git_state("bench/zoo.py", "bench/_zoo_models.py"),
        },
        "settings": {"backend": args.backend, "modes": args.modes, "jobs": args.jobs,
                     "timeout_s": args.timeout, "options": OPTIONS, "capped_devices": CAPPED,
                     "fractions": FRACTIONS, "rtol": RTOL, "atol": ATOL},
        "wall_s": time.perf_counter() - start,
        "load_average_1min": [load_before, os.getloadavg()[0]],
        "results": results,
    }
    text = render(payload)
    print(text)
    if not args.no_write:
        args.out.mkdir(parents=True, exist_ok=True)
        kind = "zoo" if args.backend == "autopart" else f"zoo-{args.backend}"
        stem = args.out / f"{kind}-{machine_name(topo, device='cpu')}-{payload['environment']['date']}"
        stem.with_suffix(".md").write_text(text + "\n")
        stem.with_suffix(".json").write_text(json.dumps(payload, indent=1))
        print(f"wrote {stem}.md and .json", file=sys.stderr)
    broken = [recs[0]["model"] for recs, broke in runs if broke]
    if broken:
        print(f"harness error in the worker of {', '.join(broken)}", file=sys.stderr)
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
