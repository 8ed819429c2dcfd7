#!/usr/bin/env bash
# Measurements for a lent GPU machine whose image already has jax, torch, flax and optax (but not this
# project), one call per part, each well inside a call's 10 minutes:
#
#   bash tools/gpu_lease.sh quality OUT_DIR   # ~8 min: train --preset gpu --minutes 2, then the
#                                             # report's JAX top-k and torch runs (36 s each), then a
#                                             # short JAX run again (persistent compilation cache warm)
#   bash tools/gpu_lease.sh bench OUT_DIR     # ~7 min: the lookup profile (HLO/PTX of the train step,
#                                             # scatter atomics, per-variant lookups), then the
#                                             # framework, precision, lookup and official benchmark groups
#   bash tools/gpu_lease.sh report OUT_DIR    # the whole `gpu` report preset (interrupted at LIMIT_S)
#
# Optional inputs next to the checkout (ignored by git, carried to the machine with `carry`):
#   .whl/*.whl    packages the image lacks (tyro and its needs, tensorboardX), installed with --target /tmp/site
#   .gpu/lego     the dataset: the lego train split and test views 0, 20, ..., 180 (default: the built-in scene)
#   .gpu/lpips    LPIPS weight files (alexnet.ckpt), via TENSORF_BENCH_LPIPS_WEIGHTS (VGG does not fit a call)
# Everything a part writes is packed into OUT_DIR/<part>.tgz every 20 s and at the end, so that what
# finished comes back even if the command is stopped. Environment overrides: DATA (default .gpu/lego;
# "none": the built-in scene), PY (default python3), LIMIT_S (default 540: each part is interrupted then).
set -u
MODE=${1:-quality}
OUT_DIR=${2:-${OUT:-/tmp/gpu-out}}
PY=${PY:-python3}
LIMIT_S=${LIMIT_S:-540}
WORK=${WORK:-$PWD/.gpurun}
mkdir -p "$OUT_DIR" "$WORK"
export TENSORF_BENCH_ALLOCATOR=${TENSORF_BENCH_ALLOCATOR:-system} MPLBACKEND=Agg PYTHONUNBUFFERED=1
export TENSORF_BENCH_JAX_CACHE=${TENSORF_BENCH_JAX_CACHE:-$WORK/jax-cache}
if ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 2
  export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
[ -d .gpu/lpips ] && export TENSORF_BENCH_LPIPS_WEIGHTS=$PWD/.gpu/lpips
DATA=${DATA:-$PWD/.gpu/lego}
DATA_ARGS=()
[ -d "$DATA" ] && DATA_ARGS=(--data "$DATA")
CLI=("$PY" -m tensorf_bench.cli)
T0=$(date +%s)
left() { echo $(( LIMIT_S - ($(date +%s) - T0) )); }

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv 2>/dev/null
"$PY" - <<'PY' || exit 3
import importlib.metadata as md, jax, jax.numpy as jnp, torch
print({n: md.version(n) for n in ("jax", "jaxlib", "flax", "optax", "torch", "numpy", "tyro")})
print("jax devices:", jax.devices(), "| torch cuda:", torch.cuda.is_available())
x = jnp.ones((1024, 1024)); print("jit ok:", float(jax.jit(lambda a: (a @ a).sum())(x)))
import tensorf_bench.cli, jax_tensorf.run, torch_reference.run  # noqa: F401
PY

pack() {
  tar czf "$OUT_DIR/$MODE.tgz.tmp" --exclude='*.npz' --exclude='*.th' --exclude='jax-cache' -C "$WORK" "$MODE" 2>/dev/null \
    && mv "$OUT_DIR/$MODE.tgz.tmp" "$OUT_DIR/$MODE.tgz"
}
RUN=$WORK/$MODE
mkdir -p "$RUN"
( while sleep 20; do pack; done ) &
PACKER=$!
step() {  # step NAME SECONDS CMD...: run CMD with at most SECONDS (and what is left), log to RUN/NAME.log
  local name=$1 limit=$2; shift 2
  local t; t=$(left); [ "$t" -lt "$limit" ] && limit=$t
  if [ "$limit" -le 5 ]; then echo "skipped $name: no time left"; return 0; fi
  echo "=== $name (at most ${limit}s): $*"
  timeout -s INT -k 20 "$limit" "$@" >"$RUN/$name.log" 2>&1
  local rc=$?
  echo "=== $name exit $rc after $(( $(date +%s) - T0 ))s"; tail -n 4 "$RUN/$name.log"
}
case "$MODE" in
  quality)
    step train2 230 "${CLI[@]}" train "${DATA_ARGS[@]}" --preset gpu --minutes 2 --no-lpips --out "$RUN/train2"
    step report 250 "${CLI[@]}" report --preset gpu "${DATA_ARGS[@]}" --only jax-topk torch --skip bench parity \
      --out "$RUN/report" --no-progress
    step warm 80 "${CLI[@]}" train "${DATA_ARGS[@]}" --preset gpu --minutes 0.6 --no-lpips --out "$RUN/warm"
    ;;
  bench)
    step lookup 240 "$PY" tools/gpu_lookup_profile.py "$RUN/lookup" --size gpu \
      --cases flat:fp32,flat:bf16,vjp:fp32,vjp:bf16,pallas:fp32
    step bench 270 "${CLI[@]}" bench --size gpu --select 'framework or precision or lookup or official' \
      --out "$RUN/bench.json"
    ;;
  report)
    if [ -f "$RUN/report/report.json" ]; then
      step report "$LIMIT_S" "${CLI[@]}" report --resume "$RUN/report" --no-progress
    else
      step report "$LIMIT_S" "${CLI[@]}" report --preset gpu "${DATA_ARGS[@]}" --out "$RUN/report" --no-progress
    fi
    ;;
  *) echo "unknown part $MODE: quality, bench or report"; kill "$PACKER"; exit 2 ;;
esac
kill "$PACKER" 2>/dev/null
pack
"$PY" - "$RUN" <<'PY' 2>/dev/null
import json, pathlib, sys
for p in sorted(pathlib.Path(sys.argv[1]).rglob("run.json")):
    d = json.loads(p.read_text())
    mean = (d.get("eval") or {}).get("mean", {})
    print(p.parent.name, d.get("framework"), "steps", d.get("steps"), "first step", d.get("time_to_first_step"),
          "compiles", len(d.get("compiles") or []), "psnr", mean.get("psnr"), "eval s", d.get("eval_render_seconds"))
PY
exit 0
