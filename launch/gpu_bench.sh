#!/usr/bin/env bash
# Training throughput on a lent GPU, in one go: within FJ_BENCH_BUDGET_S (540 s) wall, compiles included.
#
#   bash launch/gpu_bench.sh                   # on the GPU machine, from the repo root; carry: wheels
#   FJ_BENCH_TINY=1 PYTHON=.venv/bin/python OUT=/tmp/fjb bash launch/gpu_bench.sh   # CPU dry run, tiny models
#
# Measurements, in priority order, each its own process under a hard `timeout` cut to the time left (the later
# ones are skipped once the budget runs out). BEST is the fastest classify config measured so far
# (FJ_BENCH_BEST, default 's2d,batch=512': the space-to-depth stem at batch 512, 6,155 img/s on an H100 on device).
#   classify_r50_device         ResNet-50@224 classify, bf16, batch 256, 10,575 ids, one on-device batch reused;
#                               also writes the compiled step's optimized HLO (profile/classify_r50_step.hlo.txt.gz)
#   classify_r50_device_best    BEST on device
#   classify_r50_pipeline_best_devaug[_noprefetch]   BEST through the grain loader (ArrayRecord JPEGs, worker
#                               processes) with data.augment_on=device (the host decodes; crop, flip and jitter run
#                               on the GPU), thread prefetch to the device [numpy straight into the step]
#   classify_r50_pipeline_best[_noprefetch]          the same with the augmentation on the host
#   classify_r50_pipeline_devaug, classify_r50_pipeline   batch 256, plain stem, through the loader
#   distill_vgg16_device, distill_r50_device, siamese_device   the other tasks (configs/bench_distill.py,
#                               configs/bench_siamese.py), on-device batch
#   distill_r50_pipeline_devaug, siamese_pipeline_devaug, distill_vgg16_pipeline_devaug, and the three with the
#                               augmentation on the host
#   classify_r50_profile        (FJ_BENCH_PROFILE=1, the default) BEST on device again, then 3 steps under
#                               jax.profiler: its record's 'profile' holds device busy vs wall ms per step and the
#                               top kernels / HLO ops; the trace itself is profile/classify_r50.xplane.pb.gz
# Pipeline runs time 150 steps after 30 warm-up steps, so what grain buffered while the step compiled is spent
# before the clock starts; img/s counts every stall of the loader (the median window is the step's own speed).
# What the budget cut off can run in a second call: FJ_BENCH_ONLY='name ...'.
# Each writes $FJ_BENCH_WORK/<name>.json (a record, or {"name", "error"}); after each, every record so far goes to
# $OUT/summary.json, so a run cut short still returns what it measured; $OUT/summary.md closes. $OUT keeps few
# files, each under 16 MiB: summary.json, summary.md and profile/ (trace and HLO, gzipped).
# The compiled steps go to a persistent compilation cache, so the pipeline and profile runs reuse the device run's.
# Env: OUT, PYTHON (python3), FJ_BENCH_ONLY (names to run), FJ_BENCH_BEST, FJ_BENCH_PIPE_STEPS (e.g.
# '--steps=300 --warmup=20'), FJ_BENCH_BUDGET_S (540), FJ_BENCH_PROFILE (1; 0: no profile run), FJ_BENCH_DATA_DIR
# (/tmp/fj_bench_data), FJ_BENCH_WORK (/tmp/fj_bench_runs), FJ_BENCH_TINY, FJ_BENCH_WORKERS (grain worker
# processes; default cpu_count - 4), XLA_FLAGS (recorded in every JSON).
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
  CAP_BIG=600 CAP_SMALL=600
  export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
  [[ "${XLA_FLAGS:-}" == *device_count* ]] || export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=2"
else
  BUDGET=${FJ_BENCH_BUDGET_S:-540}
  ARG=''
  STEPS=(--steps=30 --warmup=5 --window=5)
  PROFILE_STEPS=(--steps=10 --warmup=3 --window=5 --profile_steps=3)
  PIPE_STEPS=(--steps=150 --warmup=30 --window=10)  # longer: grain's buffers fill during compilation
  # shellcheck disable=SC2206
  [[ -n "${FJ_BENCH_PIPE_STEPS:-}" ]] && PIPE_STEPS=($FJ_BENCH_PIPE_STEPS)
  PREP=(--prepare_identities=200 --prepare_images=8 --prepare_size=250)
  CAP_BIG=170 CAP_SMALL=110  # a fresh compile: ~20-75 s on an H100, after ~15 s of setup
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
import facejax.train.throughput, facejax.data.tfds_source
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

run() {  # NAME CAP ARGS...: one measurement under a hard timeout cut to the budget left
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
  echo "== $name (limit ${limit}s, at $(elapsed)s)"
  timeout -k 5 "$limit" "$PY" -m launch.benchmark_train \
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

wait_prep() {
  if [[ -n "${PREP_PID:-}" ]]; then
    wait "$PREP_PID"; echo "prepare: exit $? ($(elapsed)s): $(tail -c 300 "$PREP_LOG")"; PREP_PID=''
  fi
}

R50=configs/bench_resnet50.py
D=configs/bench_distill.py
S=configs/bench_siamese.py
BEST=${FJ_BENCH_BEST:-s2d,batch=512}
PIPE=(--data=loader "${PIPE_STEPS[@]}" "${WORKERS[@]}")
DEVAUG=--config.data.augment_on=device
run classify_r50_device "$CAP_BIG" --config="$R50:${ARG#,}" --data=device "${STEPS[@]}" \
  --hlo_out="$OUT/profile/classify_r50_step.hlo.txt.gz"
run classify_r50_device_best "$CAP_BIG" --config="$R50:$BEST$ARG" --data=device "${STEPS[@]}"
wait_prep
# The goal is end to end: the fastest config through the loader, the augmentation on the GPU and on the host.
for aug in devaug host; do
  flag='' sfx=''
  [[ $aug == devaug ]] && flag=$DEVAUG sfx=_devaug
  run "classify_r50_pipeline_best$sfx" "$CAP_SMALL" --config="$R50:$BEST,data_dir=$DATA_DIR$ARG" "${PIPE[@]}" $flag
  run "classify_r50_pipeline_best${sfx}_noprefetch" "$CAP_SMALL" --config="$R50:$BEST,data_dir=$DATA_DIR$ARG" \
    "${PIPE[@]}" --config.bench.prefetch=none $flag
done
run classify_r50_pipeline_devaug "$CAP_SMALL" --config="$R50:data_dir=$DATA_DIR$ARG" "${PIPE[@]}" $DEVAUG
run classify_r50_pipeline "$CAP_SMALL" --config="$R50:data_dir=$DATA_DIR$ARG" "${PIPE[@]}"
run distill_vgg16_device "$CAP_BIG" --config="$D:teacher=vgg16$ARG" --data=device "${STEPS[@]}"
run distill_r50_device "$CAP_BIG" --config="$D:teacher=resnet50$ARG" --data=device "${STEPS[@]}"
run siamese_device "$CAP_SMALL" --config="$S:${ARG#,}" --data=device "${STEPS[@]}"
# Through the loader: the steps compiled above come from the persistent cache.
for aug in devaug host; do
  flag='' sfx=''
  [[ $aug == devaug ]] && flag=$DEVAUG sfx=_devaug
  run "distill_r50_pipeline$sfx" "$CAP_SMALL" --config="$D:teacher=resnet50,data_dir=$DATA_DIR$ARG" "${PIPE[@]}" $flag
  run "siamese_pipeline$sfx" "$CAP_SMALL" --config="$S:data_dir=$DATA_DIR$ARG" "${PIPE[@]}" $flag
  run "distill_vgg16_pipeline$sfx" "$CAP_SMALL" --config="$D:teacher=vgg16,data_dir=$DATA_DIR$ARG" "${PIPE[@]}" $flag
done
if [[ "$PROFILE" == 1 && ( -z "${FJ_BENCH_ONLY:-}" || " $FJ_BENCH_ONLY " == *" classify_r50_profile "* ) ]]; then
  run classify_r50_profile "$CAP_SMALL" --config="$R50:$BEST$ARG" --data=device "${PROFILE_STEPS[@]}" \
    --profile_dir="$PROF_DIR"
  # shellcheck disable=SC2012
  keep_gzipped "$(ls -t "$PROF_DIR"/plugins/profile/*/*.xplane.pb 2>/dev/null | head -1)" \
    "$OUT/profile/classify_r50.xplane.pb.gz"
fi

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
