#!/usr/bin/env bash
# The checks that need a CUDA GPU, for a machine with torch and CUDA but no package registry.
#
#   bash scripts/gpu_check.sh STEP...     steps: env profile offload cudatests tests overhead costmodel backward monitor monitor-training
#
# Wheels of the packages the machine lacks (pulp, highspy, platformdirs) are taken from .whl/
# (see /work/.library/device/README.md); autopart itself is installed next to them, so that Dynamo
# finds its backend entry point. Each step runs under its own time limit and appends to
# $OUT/gpu_check.log; results files of the benchmarks are written to bench/results/ and copied
# to $OUT/results.tgz after each step. All steps together stop after $BUDGET seconds (570).
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
LOG=$OUT/gpu_check.log
TOPO=bench/results/topology-$(date +%F).json
BUDGET=${BUDGET:-570}
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site

step() {  # step NAME SECONDS COMMAND...; all steps together stop after $BUDGET seconds
    local name=$1 limit=$2
    shift 2
    local left=$((BUDGET - SECONDS))
    if ((left < 30)); then echo "=== $name: skipped, ${left}s left of ${BUDGET}s" | tee -a "$LOG"; return; fi
    ((limit > left)) && limit=$left
    echo "=== $name ($(date +%T), limit ${limit}s): $*" | tee -a "$LOG"
    local t0=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee -a "$LOG"
    echo "=== $name: rc ${PIPESTATUS[0]} in $((SECONDS - t0)) s" | tee -a "$LOG"
    tar czf "$OUT/results.tgz" bench/results
}

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir --upgrade --target /tmp/site . \
    || { echo "install failed" | tee -a "$LOG"; exit 1; }

for s in "$@"; do
    case $s in
    env) step env 60 bash -c 'nvidia-smi; python3 -c "import torch, transformers, accelerate, pulp, highspy, autopart; print(torch.__version__, torch.cuda.get_device_name(), transformers.__version__, accelerate.__version__, pulp.__version__)"' ;;
    profile) step profile 150 python3 -c 'import sys; from autopart.cli import main; sys.exit(main(sys.argv[1:]))' \
        topology --profile --refresh --budget 60 --save "$TOPO" ;;
    offload) step offload 330 python3 bench/offload.py --budget 20 --repeats 5 --trace ;;
    cudatests) step cudatests 200 python3 -m pytest -q -p no:cacheprovider -n 4 tests/test_transfer.py tests/test_compression.py \
        tests/test_profiler.py tests/test_topology.py tests/test_e2e.py::test_steady_state_copies_to_a_real_gpu \
        tests/test_e2e.py::test_moved_trainable_parameters_train_on_their_planned_gpu ;;
    tests) step tests 240 python3 -m pytest -q -p no:cacheprovider -n 8 ${TESTS:-} ;;  # TESTS: files or -k
    overhead) step overhead 200 python3 bench/overhead.py --rounds 31 ;;
    costmodel)  # the profile step's topology when it ran, else the benchmark profiles per model
        topology=()
        [ -f "$TOPO" ] && topology=(--topology "$TOPO")
        step costmodel 240 python3 bench/costmodel.py --device cuda:0 --repeats 3 --rounds 2 --budget 15 "${topology[@]}" ;;
    backward)  # as costmodel: the profile step's topology when it ran
        topology=()
        [ -f "$TOPO" ] && topology=(--topology "$TOPO")
        step backward 200 python3 bench/backward.py --device cuda:0 --repeats 5 --rounds 2 --budget 15 "${topology[@]}" ;;
    monitor) step monitor 150 python3 bench/monitor.py --rounds 7 --calls 5 ;;  # after profile: plans from it
    monitor-training) step monitor-training 200 python3 bench/monitor.py --training --rounds 7 --calls 3 ;;
    *) echo "unknown step $s" | tee -a "$LOG" ;;
    esac
done
