#!/usr/bin/env bash
# The validation matrix's measured side on a GPU machine (the simulated side and the
# comparison run anywhere, from what this writes):
#   bash benchmarks/validation_matrix.sh OUT [alisa dense-gpu flexgen]   # default: all three
#   bash benchmarks/validation_matrix.sh OUT smoke                        # 64 steps, llama-7b, batch 32
#   VAL_SWEEP='{"model": [llama-7b, opt-6.7b], "workload.batch_size": [32], "workload.gen_len": [512, 1024]}' \
#   VAL_TAG=-b32 bash benchmarks/validation_matrix.sh OUT alisa          # part of a policy's sweep
# Each policy's runs are packed into OUT/validation-<policy>.tgz (the device tool returns
# few files, not deep folders). Then, on any machine:
#   mkdir -p results/val-real && for f in OUT/validation-*.tgz; do tar xzf $f -C results/val-real; done
#   alisa validate scenarios/validation/*.yaml --real-from results/val-real --out results/validation
# (with PROFILE set, give the comparison the same profile: --set hardware=$PROFILE)
# PROFILE (optional) runs the scenarios on that hardware profile instead of the one they
# name (h100-80gb-measured): the profile calibrated on this machine.
set -uo pipefail
OUT=${1:?output folder}; shift
HW=(); [ -n "${PROFILE:-}" ] && HW=(--set "hardware=$PROFILE")
POLICIES=${*:-alisa dense-gpu flexgen}
TMP=$(mktemp -d)
for p in $POLICIES; do
  echo "--- $p ($(date -u +%T))"
  if [ "$p" = smoke ]; then
    for q in alisa dense-gpu flexgen; do
      alisa validate "scenarios/validation/$q.yaml" --real-only --out "$TMP/smoke" "${HW[@]}" \
        --set 'sweep={"model": [llama-7b], "workload.batch_size": [32], "workload.gen_len": [64]}'
    done
    tar czf "$OUT/validation-smoke.tgz" -C "$TMP/smoke" .
    continue
  fi
  # VAL_SWEEP (optional) replaces the sweep, to split the matrix over several calls
  alisa validate "scenarios/validation/$p.yaml" --real-only --out "$TMP/$p" "${HW[@]}" ${VAL_SWEEP:+--set "sweep=$VAL_SWEEP"}
  tar czf "$OUT/validation-$p${VAL_TAG:-}.tgz" -C "$TMP/$p" .
done
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$OUT/validation-machine.txt"
python3 -c "import torch, triton, platform; print('torch', torch.__version__, 'triton', triton.__version__, 'python', platform.python_version())" >> "$OUT/validation-machine.txt"
date -u +%FT%TZ >> "$OUT/validation-machine.txt"
