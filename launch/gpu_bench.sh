#!/usr/bin/env bash
# Training throughput on a lent GPU, in one go: within FJ_BENCH_BUDGET_S (540 s) wall, compiles included.
#
#   bash launch/gpu_bench.sh                   # on the GPU machine, from the repo root; carry: wheels
#   FJ_BENCH_TINY=1 PYTHON=.venv/bin/python OUT=/tmp/fjb bash launch/gpu_bench.sh   # CPU dry run, tiny models
#
# Measurements, in priority order, each its own process under a hard `timeout` cut to the time left (the later
# ones are skipped once the budget runs out):
#   classify_r50_device         ResNet-50@224 classify, bf16, batch 256, 10,575 ids, one on-device batch reused;
#                               also writes the compiled step's optimized HLO (profile/classify_r50_step.hlo.txt.gz)
#   classify_r50_pipeline       the same through the grain loader (ArrayRecord JPEGs, worker processes), thread
#                               prefetch to device
#   classify_r50_profile        (FJ_BENCH_PROFILE=1, the default) the device run again, then 3 steps under
#                               jax.profiler: its record's 'profile' holds device busy vs wall ms per step and the
#                               top kernels / HLO ops; the trace itself is profile/classify_r50.xplane.pb.gz
#   classify_r50_device_s2d     the device run with the stem conv on 2x2 space-to-depth input (12 channels, not 3)
#   classify_r50_device_b512    the device run at batch 512
#   classify_r50_device_s2d_b512  both, if each alone beat the plain device run
#   classify_r50_pipeline_best  the fastest of those configs through the pipeline, if it is not the plain one
#   distill_vgg16_device, distill_r50_device, siamese_device   the other tasks (configs/bench_distill.py,
#                               configs/bench_siamese.py), on-device batch
#   distill_r50_pipeline, siamese_pipeline, distill_vgg16_pipeline   the same through the grain loader
#   classify_r50_device_<v>     the device run under other XLA_FLAGS, each a fresh compile (the persistent cache
#                               key includes the flags): lhs (latency-hiding scheduler), convfusion (cuDNN conv
#                               fusion, experimental), nocmdbuf (no CUDA graphs), autotune0 (no autotuning)
#   classify_r50_pipeline_cached, classify_r50_pipeline_noprefetch   decoded records cached in-process; numpy
#                               batches straight into the step
# What the budget cut off can run in a second call: FJ_BENCH_ONLY='name ...'.
# Each writes $FJ_BENCH_WORK/<name>.json (a record, or {"name", "error"}); after each, every record so far goes to
# $OUT/summary.json, so a run cut short still returns what it measured; $OUT/summary.md closes. $OUT keeps few
# files, each under 16 MiB: summary.json, summary.md and profile/ (trace and HLO, gzipped).
# The compiled steps go to a persistent compilation cache, so the pipeline and profile runs reuse the device run's.
# Env: OUT, PYTHON (python3), FJ_BENCH_ONLY (names to run), FJ_BENCH_PIPE_STEPS (e.g. '--steps=300 --warmup=20'),
# FJ_BENCH_BUDGET_S (540), FJ_BENCH_PROFILE (1; 0: no profile run), FJ_BENCH_DATA_DIR (/tmp/fj_bench_data),
# FJ_BENCH_WORK (/tmp/fj_bench_runs), FJ_BENCH_TINY, FJ_BENCH_WORKERS (grain worker processes; default
# cpu_count - 4), XLA_FLAGS (recorded in every JSON; the variants add theirs).
set -uo pipefail
cd "$(dirname "$0")/.."
START=$(date +%s)
PY=${PYTHON:-python3}
OUT=${OUT:-runs/gpu_bench}
TINY=${FJ_BENCH_TINY:-0}
DATA_DIR=${FJ_BENCH_DATA_DIR:-/tmp/fj_bench_data}
SITE=${FJ_BENCH_SITE:-/tmp/fj_site}
WORK=${FJ_BENCH_WORK:-/tmp/fj_bench_runs}
PROFILE=${FJ_BENCH_PROFILE:-1}
PROF_DIR=$WORK/trace
mkdir -p "$OUT/profile" "$WORK"
rm -rf "$WORK"/*.json "$PROF_DIR"  # this run's records only
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-/tmp/fj_jax_cache}
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=${JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS:-1}

if [[ "$TINY" == 1 ]]; then
  BUDGET=${FJ_BENCH_BUDGET_S:-1500}
  ARG=',tiny'
  STEPS=(--steps=4 --warmup=1 --window=2)
  PIPE_STEPS=(--steps=4 --warmup=1 --window=2)
  PROFILE_STEPS=(--steps=2 --warmup=1 --window=2 --profile_steps=2)
  PREP=(--prepare_identities=8 --prepare_images=4 --prepare_size=64)
  CAP_BIG=600 CAP_SMALL=600 CAP_VARIANT=600
  export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
  [[ "${XLA_FLAGS:-}" == *device_count* ]] || export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=2"
else
  BUDGET=${FJ_BENCH_BUDGET_S:-540}
  ARG=''
  STEPS=(--steps=30 --warmup=5 --window=5)
  PROFILE_STEPS=(--steps=10 --warmup=3 --window=5 --profile_steps=3)
  PIPE_STEPS=(--steps=60 --warmup=10 --window=5)  # longer: grain's buffers fill during compilation
  # shellcheck disable=SC2206
  [[ -n "${FJ_BENCH_PIPE_STEPS:-}" ]] && PIPE_STEPS=($FJ_BENCH_PIPE_STEPS)
  PREP=(--prepare_identities=200 --prepare_images=8 --prepare_size=250)
  CAP_BIG=170 CAP_SMALL=110 CAP_VARIANT=100  # a variant compiles afresh (~25 s on an H100) after ~15 s of setup
fi
RESERVE=15  # for the summary
MIN_S=40  # less than this left: skip (no room to compile and time)
WORKERS=()
[[ -n "${FJ_BENCH_WORKERS:-}" ]] && WORKERS=(--config.bench.num_workers="$FJ_BENCH_WORKERS")

elapsed() { echo $(( $(date +%s) - START )); }

echo "== machine ($(date -u +%FT%TZ))"
nvidia-smi || echo "(no nvidia-smi)"
echo "cpus: $(nproc)  python: $($PY --version 2>&1) at $(command -v "$PY")"

echo "== wheels ($(elapsed)s)"
# Install into $SITE only what this Python cannot import (the image's own jax/flax/optax/orbax stay).
NEED=$("$PY" - <<'EOF'
import importlib.util
dists = {'grain': 'grain', 'ml_collections': 'ml_collections', 'tensorflow_datasets': 'tensorflow-datasets',
         'array_record': 'array_record', 'simplejpeg': 'simplejpeg', 'tree': 'dm-tree', 'promise': 'promise',
         'simple_parsing': 'simple_parsing',
         'docstring_parser': 'docstring-parser', 'tensorflow_metadata': 'tensorflow-metadata',
         'immutabledict': 'immutabledict', 'termcolor': 'termcolor', 'toml': 'toml', 'portpicker': 'portpicker',
         'google.api': 'googleapis-common-protos', 'etils': 'etils'}
def missing(m):
  try:
    return importlib.util.find_spec(m) is None
  except ModuleNotFoundError:
    return True
print(' '.join(d for m, d in dists.items() if missing(m)))
EOF
)
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
pip_install() {
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --disable-pip-version-check \
    --find-links wheels --target "$SITE" --upgrade "$@"
}
if [[ -n "$NEED" ]]; then
  echo "installing from wheels/: $NEED"
  # shellcheck disable=SC2086
  pip_install $NEED || echo "!! wheel install failed (is wheels/ carried? bash launch/fetch_wheels.sh)"
else
  echo "nothing to install"
fi
IMPORTS='import jax, flax, optax, grain, ml_collections, tensorflow_datasets, array_record, simplejpeg
import facejax.train.benchmark, facejax.data.tfds_source
import google.protobuf, etils
print("versions: jax", jax.__version__, "flax", flax.__version__, "optax", optax.__version__, "protobuf",
      google.protobuf.__version__, "etils", etils.__version__, "tfds", tensorflow_datasets.__version__)'
if ! "$PY" -c "$IMPORTS"; then
  echo "!! imports failed with the image's protobuf/etils: installing the carried ones into $SITE"
  pip_install protobuf etils || true
  "$PY" -c "$IMPORTS" || echo "!! facejax still does not import; the runs below will fail"
fi
"$PY" -c 'import jax; print("jax devices:", jax.devices()); print("device kind:", jax.devices()[0].device_kind)'

echo "== preparing bench data in the background ($(elapsed)s)"
PREP_LOG=/tmp/fj_bench_prepare.log
# Half the cores: the first measurement is compiling meanwhile.
timeout -k 5 200 "$PY" -m launch.benchmark_train --prepare_data="$DATA_DIR" "${PREP[@]}" \
  --prepare_processes=$(( $(nproc) / 2 > 0 ? $(nproc) / 2 : 1 )) >"$PREP_LOG" 2>&1 &
PREP_PID=$!

collect() {  # every record so far -> $OUT/summary.json, in run order
  "$PY" - "$WORK" "$OUT/summary.json" <<'EOF'
import glob, json, os, sys
work, out = sys.argv[1:]
records = []
for p in sorted(glob.glob(os.path.join(work, '*.json')), key=os.path.getmtime):
  with open(p) as f:
    records.append(json.load(f))
with open(out + '.tmp', 'w') as f:
  json.dump(records, f, indent=1)
os.replace(out + '.tmp', out)
EOF
}

run() {  # NAME CAP ARGS...: one measurement under a hard timeout cut to the budget left; RUN_XLA: flags to add
  local name=$1 cap=$2
  shift 2
  if [[ -n "${FJ_BENCH_ONLY:-}" && " $FJ_BENCH_ONLY " != *" $name "* ]]; then return; fi
  local left=$(( BUDGET - $(elapsed) - RESERVE ))
  local limit=$(( cap < left ? cap : left ))
  if (( limit < MIN_S )); then
    echo "== $name: skipped, ${left}s of the budget left"
    printf '{"name": "%s", "error": "skipped: %ss of the budget left"}\n' "$name" "$left" >"$WORK/$name.json"
    collect
    return
  fi
  echo "== $name (limit ${limit}s, at $(elapsed)s)${RUN_XLA:+, XLA_FLAGS +$RUN_XLA}"
  XLA_FLAGS="${XLA_FLAGS:-}${RUN_XLA:+ $RUN_XLA}" timeout -k 5 "$limit" "$PY" -m launch.benchmark_train \
    --name="$name" --json_out="$WORK/$name.json" "$@" \
    2> >(grep -v -e '^WARNING: All log messages' -e '^I0000' -e '^E0000' >&2) | cut -c1-400
  local rc=${PIPESTATUS[0]}
  if (( rc != 0 )); then
    local why="exit $rc"
    (( rc == 124 || rc == 137 )) && why="timeout after ${limit}s"
    echo "!! $name: $why"
    printf '{"name": "%s", "error": "%s"}\n' "$name" "$why" >"$WORK/$name.json"
  fi
  collect
}

variant() {  # NAME 'XLA FLAGS' CONFIG_ARG: the ResNet-50 classify device run under these flags and config arg
  RUN_XLA=$2 run "$1" "$CAP_VARIANT" --config="$R50:$3" --data=device "${STEPS[@]}"
}

drop_if_big() {  # FILE: removed if over 16 MiB (a lent machine returns no larger file)
  if [[ -f "$1" ]] && (( $(stat -c %s "$1") > 16 * 1024 * 1024 )); then
    echo "!! $1: over 16 MiB, dropped"
    rm -f "$1"
  fi
}

keep_gzipped() {  # SRC DEST: SRC gzipped to DEST
  if [[ ! -f "$1" ]]; then echo "!! nothing to keep at '$1'"; return; fi
  gzip -c "$1" >"$2"
  drop_if_big "$2"
}

img_per_s() {  # NAME: that run's img/s, rounded; 0 if it failed, was skipped or did not run
  "$PY" - "$WORK/$1.json" <<'EOF'
import json, sys
try:
  with open(sys.argv[1]) as f:
    print(round(json.load(f).get('img_per_s') or 0))
except (OSError, ValueError):
  print(0)
EOF
}

faster() {  # NAME: succeeds if that run beat the plain classify_r50_device run
  local base
  base=$(img_per_s classify_r50_device)
  (( base > 0 && $(img_per_s "$1") > base ))
}

best_classify() {  # the config arg of the fastest classify device run if it is not the plain one, else ''
  local best=classify_r50_device name
  for name in classify_r50_device_s2d classify_r50_device_b512 classify_r50_device_s2d_b512; do
    (( $(img_per_s $name) > $(img_per_s $best) )) && best=$name
  done
  case $best in
    classify_r50_device_s2d) echo s2d ;;
    classify_r50_device_b512) echo batch=512 ;;
    classify_r50_device_s2d_b512) echo s2d,batch=512 ;;
  esac
}

wait_prep() {
  if [[ -n "${PREP_PID:-}" ]]; then
    wait "$PREP_PID"; echo "prepare: exit $? ($(elapsed)s): $(tail -c 300 "$PREP_LOG")"; PREP_PID=''
  fi
}

R50=configs/bench_resnet50.py
run classify_r50_device "$CAP_BIG" --config="$R50:${ARG#,}" --data=device "${STEPS[@]}" \
  --hlo_out="$OUT/profile/classify_r50_step.hlo.txt.gz"
wait_prep
run classify_r50_pipeline "$CAP_SMALL" --config="$R50:data_dir=$DATA_DIR$ARG" --data=pipeline \
  "${PIPE_STEPS[@]}" --config.bench.prefetch=thread "${WORKERS[@]}"
if [[ "$PROFILE" == 1 && ( -z "${FJ_BENCH_ONLY:-}" || " $FJ_BENCH_ONLY " == *" classify_r50_profile "* ) ]]; then
  run classify_r50_profile "$CAP_SMALL" --config="$R50:${ARG#,}" --data=device "${PROFILE_STEPS[@]}" \
    --profile_dir="$PROF_DIR"
  # shellcheck disable=SC2012
  keep_gzipped "$(ls -t "$PROF_DIR"/plugins/profile/*/*.xplane.pb 2>/dev/null | head -1)" \
    "$OUT/profile/classify_r50.xplane.pb.gz"
fi
variant classify_r50_device_s2d '' "s2d$ARG"
variant classify_r50_device_b512 '' "batch=512$ARG"
# s2d and b512 both faster than the plain device run: both together. Then the fastest of these classify configs
# through the real pipeline (the goal is end to end).
if faster classify_r50_device_s2d && faster classify_r50_device_b512; then
  variant classify_r50_device_s2d_b512 '' "s2d,batch=512$ARG"
fi
BEST=$(best_classify)
if [[ -n "$BEST" ]]; then
  run classify_r50_pipeline_best "$CAP_SMALL" --config="$R50:$BEST,data_dir=$DATA_DIR$ARG" --data=pipeline \
    "${PIPE_STEPS[@]}" --config.bench.prefetch=thread "${WORKERS[@]}"
fi
D=configs/bench_distill.py
S=configs/bench_siamese.py
run distill_vgg16_device "$CAP_BIG" --config="$D:teacher=vgg16$ARG" --data=device "${STEPS[@]}"
run distill_r50_device "$CAP_BIG" --config="$D:teacher=resnet50$ARG" --data=device "${STEPS[@]}"
run siamese_device "$CAP_SMALL" --config="$S:${ARG#,}" --data=device "${STEPS[@]}"
# Through the loader: the steps compiled above come from the persistent cache.
run distill_r50_pipeline "$CAP_SMALL" --config="$D:teacher=resnet50,data_dir=$DATA_DIR$ARG" --data=pipeline \
  "${PIPE_STEPS[@]}" --config.bench.prefetch=thread "${WORKERS[@]}"
run siamese_pipeline "$CAP_SMALL" --config="$S:data_dir=$DATA_DIR$ARG" --data=pipeline \
  "${PIPE_STEPS[@]}" --config.bench.prefetch=thread "${WORKERS[@]}"
run distill_vgg16_pipeline "$CAP_SMALL" --config="$D:teacher=vgg16,data_dir=$DATA_DIR$ARG" --data=pipeline \
  "${PIPE_STEPS[@]}" --config.bench.prefetch=thread "${WORKERS[@]}"
variant classify_r50_device_lhs '--xla_gpu_enable_latency_hiding_scheduler=true' "${ARG#,}"
variant classify_r50_device_convfusion '--xla_gpu_experimental_enable_conv_fusion=true' "${ARG#,}"
variant classify_r50_device_nocmdbuf '--xla_gpu_enable_command_buffer=' "${ARG#,}"
variant classify_r50_device_autotune0 '--xla_gpu_autotune_level=0' "${ARG#,}"
run classify_r50_pipeline_cached "$CAP_BIG" --config="$R50:data_dir=$DATA_DIR$ARG" \
  --data=pipeline "${PIPE_STEPS[@]}" --config.bench.prefetch=thread --config.bench.cache=decoded \
  --config.bench.num_workers=0 --config.bench.num_threads=$(( $(nproc) > 4 ? $(nproc) - 2 : 2 ))
run classify_r50_pipeline_noprefetch "$CAP_SMALL" --config="$R50:data_dir=$DATA_DIR$ARG" \
  --data=pipeline "${PIPE_STEPS[@]}" --config.bench.prefetch=none "${WORKERS[@]}"

echo "== summary ($(elapsed)s)"
wait_prep
collect
if "$PY" -m launch.benchmark_train --summarize="$WORK" 2>/dev/null; then
  cp "$WORK/summary.md" "$OUT/summary.md"
else
  cat "$OUT/summary.json"
fi
for f in "$OUT"/profile/*; do drop_if_big "$f"; done
ls -l "$OUT" "$OUT/profile"
echo "== done in $(elapsed)s"
