#!/usr/bin/env bash
# Fill wheels/ (git-ignored) with the packages facejax needs that the GPU image ('cuda': JAX, flax, optax, orbax,
# etils, numpy, protobuf, pyarrow, ... preinstalled) lacks: grain, ml_collections, tensorflow-datasets,
# array_record, simplejpeg and their missing dependencies, for CPython 3.11 and 3.12 on manylinux x86_64 (3.10 is
# tried and reported missing).
# Versions are the ones this repo's venv runs its tests with. launch/gpu_bench.sh installs from here with
# --no-index --no-deps, only what the machine cannot import.
#   bash launch/fetch_wheels.sh        # -> wheels/, ~16 MB
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
DEST=${WHEELS:-wheels}
mkdir -p "$DEST"
PLATFORMS=()
for p in manylinux1_x86_64 manylinux2010_x86_64 manylinux2014_x86_64 manylinux_2_17_x86_64 manylinux_2_24_x86_64 \
         manylinux_2_27_x86_64 manylinux_2_28_x86_64; do
  PLATFORMS+=(--platform "$p")
done
# Compiled: one wheel per Python version.
BINARY=(grain==0.2.18 array_record==0.8.6 dm-tree==0.1.10 simplejpeg==1.9.0)
# Pure Python (or abi3): one wheel serves all three. protobuf and etils are fallbacks: installed only when the
# image's own versions cannot import tensorflow_datasets/grain.
PURE=(ml_collections==1.1.0 tensorflow-datasets==4.9.10 tensorflow-metadata==1.21.0 googleapis-common-protos==1.76.0
      simple_parsing==0.1.9 docstring-parser==0.18.0 immutabledict==4.3.1 termcolor==3.3.0 toml==0.10.2
      portpicker==1.6.0 protobuf==7.36.2 etils==1.15.0)
# grain 0.2.18 and array_record 0.8.6 have no CPython 3.10 wheels (both need >= 3.11), and facejax imports
# grain everywhere: a 3.10 image is not supported. The GPU image's python3 is 3.12.
for v in 3.10 3.11 3.12; do
  for pkg in "${BINARY[@]}"; do
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$v" --implementation cp \
      "${PLATFORMS[@]}" -d "$DEST" "$pkg" 2>/dev/null || echo "fetch_wheels: no $pkg wheel for CPython $v"
  done
done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${PLATFORMS[@]}" -d "$DEST" "${PURE[@]}"
# promise has no wheel on PyPI (sdist only): build the pure-Python wheel here.
ls "$DEST"/promise-2.3-*.whl >/dev/null 2>&1 || "$PY" -m pip wheel -q --no-deps -w "$DEST" promise==2.3
ls -1 "$DEST"
du -sh "$DEST"
