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
rm -rf .gpu_parts/studiogan && mkdir -p .gpu_parts/studiogan
(cd "$(dirname "$SG")" && tar cf - --exclude=__pycache__ "$(basename "$SG")") \
  | tar xf - -C .gpu_parts/studiogan
[ -d .gpu_parts/studiogan/src ] || mv ".gpu_parts/studiogan/$(basename "$SG")" .gpu_parts/studiogan/src
# the race reads CIFAR10/ReACGAN.yaml only: the other datasets' configs would cost call 1 ~0.1 MiB
find .gpu_parts/studiogan/src/configs -mindepth 1 -maxdepth 1 ! -name CIFAR10 -exec rm -rf {} +
ls .whl/ml_collections-1.1.0-py3-none-any.whl 2>/dev/null || $PY -m pip download --no-deps \
  --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 -d .whl ml_collections==1.1.0
# A call carries at most 64 MiB: the working tree that travels (tracked files and untracked ones
# git does not ignore) plus its carried paths. Call 1 is the fullest (part1 + studiogan + .whl),
# so the part size is what it leaves, less 512 KiB for what gets committed before the lease.
# one du for the whole list (xargs could split it, and tail -1 would then see one batch's total)
tree=$(git ls-files -z --cached --others --exclude-standard | du -cb --files0-from=- | tail -1 \
  | cut -f1)
extra=$(du -sb .gpu_parts/studiogan .whl | awk '{s+=$1} END {print s}')
room=$(( (64 << 20) - tree - extra - (512 << 10) ))
PART_MIB=${PART_MIB:-$(awk -v r="$room" 'BEGIN {printf "%.2f", r / 1048576 - 0.005}')}
echo "working tree that travels: $tree bytes; studiogan + .whl: $extra bytes; parts: $PART_MIB MiB"
$PY experiments/gpu_pack.py pack --out .gpu_parts --part_mib "$PART_MIB" \
  --file "cifar10.npz=$PREP/cifar10_raw.npz:xz" --file "inception_fid_2015-12-05.msgpack=$W"
git status --short --untracked-files=all | head
du -sb .gpu_parts/part* .gpu_parts/studiogan .whl
call1=$(( tree + extra + $(du -sb .gpu_parts/part1 | cut -f1) ))
echo "call 1 carries $call1 bytes (limit $((64 << 20)))"
if [ "$call1" -gt $(( 64 << 20 )) ]; then
  echo "call 1 would carry more than 64 MiB: set a smaller PART_MIB" >&2
  exit 1
fi
n=$(ls -d .gpu_parts/part* | wc -l)
echo
echo "The device calls, back to back (experiments/GPU_RUNBOOK.md; B = budget_left_s - 75 of the"
echo "reply before the last call):"
echo "  1: carry [\".gpu_parts/part1\", \".gpu_parts/studiogan\", \".whl\"]" \
  "command 'bash experiments/gpu_run.sh .gpu_parts/part1 race 300' timeout 360"
for k in $(seq 2 $((n - 1))); do
  echo "  $k: carry [\".gpu_parts/part$k\"] command 'bash experiments/gpu_run.sh .gpu_parts/part$k - 0'" \
    "timeout 120"
done
echo "  $n: carry [\".gpu_parts/part$n\", \".whl\"]" \
  "command 'bash experiments/gpu_run.sh .gpu_parts/part$n reacgan,biggan_pd B' timeout B + 45"
