#!/usr/bin/env bash
# CPU side of the issue-19 GPU check: build everything the device calls carry (all ignored by git).
#
#   bash experiments/gpu_prepare.sh [STUDIOGAN_SRC] [SHARED_NPZ]
#
# Writes .gpu_parts/part1..4 (CIFAR-10 train+test LZMA + converted Inception weights, <= 54.5 MiB
# each, sha256 manifest), .gpu_parts/studiogan/src (a copy of StudioGAN's src/, no __pycache__)
# and .whl/ml_collections-1.1.0 (not in the device image). ~5 min on 2 busy cores (LZMA).
set -euo pipefail
SG=${1:-/work/studiogan/src}
NPZ=${2:-../shared/data/cifar10.npz}
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=/work/main/.venv/bin/python
PREP=${PREP:-/tmp/gpu_prep}
mkdir -p "$PREP" .gpu_parts .whl
export PYTHONPATH=$PWD
W="$PREP/inception_fid_2015-12-05.msgpack"
[ -f "$W" ] || $PY -m reacgan_jax.evaluation.convert --output "$W"
[ -f "$PREP/cifar10_raw.npz" ] || $PY experiments/gpu_pack.py cifar "$NPZ" "$PREP/cifar10_raw.npz"
$PY experiments/gpu_pack.py pack --out .gpu_parts --part_mib 54.5 \
  --file "cifar10.npz=$PREP/cifar10_raw.npz:xz" --file "inception_fid_2015-12-05.msgpack=$W"
rm -rf .gpu_parts/studiogan && mkdir -p .gpu_parts/studiogan
(cd "$(dirname "$SG")" && tar cf - --exclude=__pycache__ "$(basename "$SG")") \
  | tar xf - -C .gpu_parts/studiogan
[ -d .gpu_parts/studiogan/src ] || mv ".gpu_parts/studiogan/$(basename "$SG")" .gpu_parts/studiogan/src
ls .whl/ml_collections-1.1.0-py3-none-any.whl 2>/dev/null || $PY -m pip download --no-deps \
  --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 -d .whl ml_collections==1.1.0
echo "tracked tree: $(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1) bytes"
git status --short --untracked-files=all | head
du -sb .gpu_parts/part* .gpu_parts/studiogan .whl
