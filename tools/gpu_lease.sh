#!/usr/bin/env bash
# The `gpu` report preset on a lent GPU machine whose image already has jax, torch, flax and optax
# (but not this project), within one command of at most 10 minutes:
#
#   bash tools/gpu_lease.sh OUT_DIR
#
# Optional inputs next to the checkout (ignored by git, carried to the machine):
#   .whl/*.whl    packages the image lacks (tyro and its needs), installed with --target /tmp/site
#   .gpu/lego     the dataset (default: the built-in procedural scene)
#   .gpu/lpips    LPIPS weight files (alexnet.ckpt, vgg16.ckpt), via TENSORF_BENCH_LPIPS_WEIGHTS
# The report is written to $RUN (default .gpurun/report) and copied, as run.tgz, to OUT_DIR every
# 20 s, so that what finished comes back even if the command is stopped. Environment overrides:
# PRESET (default gpu), DATA (default .gpu/lego; "none": the built-in scene), PY (default python3),
# LIMIT_S (default 540: the report is interrupted then).
set -u
OUT_DIR=${1:-${OUT:-/tmp/gpu-out}}
PRESET=${PRESET:-gpu}
PY=${PY:-python3}
LIMIT_S=${LIMIT_S:-540}
RUN=${RUN:-$PWD/.gpurun/report}
mkdir -p "$OUT_DIR" "$(dirname "$RUN")"
export TENSORF_BENCH_ALLOCATOR=${TENSORF_BENCH_ALLOCATOR:-system} MPLBACKEND=Agg PYTHONUNBUFFERED=1
# JAX and torch share the GPU inside the benchmark process: cap JAX's preallocation
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.45}
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

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv 2>/dev/null
"$PY" - <<'PY' || exit 3
import importlib.metadata as md, jax, jax.numpy as jnp, torch
print({n: md.version(n) for n in ("jax", "jaxlib", "flax", "optax", "torch", "numpy", "tyro")})
print("jax devices:", jax.devices(), "| torch cuda:", torch.cuda.is_available())
x = jnp.ones((1024, 1024)); print("jit ok:", float(jax.jit(lambda a: (a @ a).sum())(x)))
import tensorf_bench.cli, jax_tensorf.run, torch_reference.run  # noqa: F401
PY

pack() {
  [ -d "$RUN" ] || return 0
  tar czf "$OUT_DIR/run.tgz.tmp" --exclude='*.npz' --exclude='*.th' -C "$(dirname "$RUN")" "$(basename "$RUN")" 2>/dev/null \
    && mv "$OUT_DIR/run.tgz.tmp" "$OUT_DIR/run.tgz"
}
( while sleep 20; do pack; done ) &
PACKER=$!
if [ -f "$RUN/report.json" ]; then
  timeout -s INT -k 30 "$LIMIT_S" "$PY" -m tensorf_bench.cli report --resume "$RUN" --no-progress
else
  timeout -s INT -k 30 "$LIMIT_S" "$PY" -m tensorf_bench.cli report --preset "$PRESET" "${DATA_ARGS[@]}" --out "$RUN" --no-progress
fi
rc=$?
kill "$PACKER" 2>/dev/null
pack
echo "report exit code: $rc"
for f in "$RUN"/stages/*.json; do "$PY" -c "import json,sys; d=json.load(open(sys.argv[1])); print(d.get('name'), d.get('status'), round(d.get('seconds') or 0), (d.get('error') or '')[:150])" "$f"; done 2>/dev/null
exit $rc
