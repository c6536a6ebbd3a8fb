#!/usr/bin/env bash
# One device `run` call of the issue-19 GPU check (experiments/GPU_RUNBOOK.md has the sequence).
#
#   bash experiments/gpu_run.sh PART_DIR|- PHASES|- BUDGET_S [more gpu_check.py flags]
#
# 1. installs the carried wheels (.whl/: ml_collections, absent from the device image) into
#    /tmp/site;
# 2. PART_DIR (e.g. .gpu_parts/part2): verifies that part's sha256 and stashes it in
#    $STASH (/tmp/gpu_in, kept while the machine stays warm); the call that brings the last part
#    assembles and checks the files (gpu_pack.py receive);
# 3. PHASES (e.g. race, or reacgan,biggan_pd): runs experiments/gpu_check.py with what is left
#    of BUDGET_S (counted from this script's start), writing into $OUT as it goes.
# Everything it prints is also in $OUT/log_<phases>.txt. Exit status: gpu_check's, or 3 (wheels),
# 4 (a part failed its check).
set -uo pipefail
PY=${PY:-python3}
OUT=${OUT:-/tmp/gpu_out}
STASH=${STASH:-/tmp/gpu_in}
export PYTHONUNBUFFERED=1 REACGAN_JAX_CACHE=${REACGAN_JAX_CACHE:-/tmp/rj_cache}
t0=$(date +%s)
mkdir -p "$OUT" "$REACGAN_JAX_CACHE"
part=${1:?PART_DIR or -}; phases=${2:?PHASES or -}; budget=${3:-0}; shift 3 || shift $#
export PYTHONPATH=$PWD
if compgen -G ".whl/*.whl" >/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 3
  export PYTHONPATH=/tmp/site:$PWD
fi
if [ "$part" != - ]; then
  $PY experiments/gpu_pack.py receive "$part" --stash "$STASH" | tee -a "$OUT/receive.txt" || exit 4
fi
$PY experiments/gpu_pack.py status --stash "$STASH" | tee -a "$OUT/receive.txt"
[ "$phases" = - ] && exit 0
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.used,memory.total \
  --format=csv | tee -a "$OUT/receive.txt"
left=$(( budget - ($(date +%s) - t0) ))
$PY experiments/gpu_check.py --phases "$phases" --budget_s "$left" --out "$OUT" \
  --workdir /tmp/gpu_work --studiogan_src .gpu_parts/studiogan/src \
  --data "$STASH/files/cifar10.npz" \
  --inception "$STASH/files/inception_fid_2015-12-05.msgpack" "$@" 2>&1 \
  | tee "$OUT/log_${phases//,/_}.txt"
