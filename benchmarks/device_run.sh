#!/usr/bin/env bash
# Run the GPU-side work on a machine whose Python already has torch + triton (e.g. the
# lent H100): install carried wheels for what it lacks, install alisa without deps, then
# run the stages named as arguments. Results go to $OUT (default ./device-out).
#   bash benchmarks/device_run.sh ktest kbench calibrate validate
# PROFILE names the calibrated profile (default h100-80gb-measured, the H100's); on another
# GPU give it that GPU's name, e.g. PROFILE=h200-141gb-measured: calibrate-use writes it
# into hardware_profiles/ and the val-* stages then run the scenarios on it.
set -uo pipefail
OUT=${OUT:-device-out}; mkdir -p "$OUT"
# without PROFILE, the lent GPU's own name: h100-80gb-measured or h200-141gb-measured
if [ -z "${PROFILE:-}" ]; then
  case $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1) in
    *H200*) PROFILE=h200-141gb-measured ;;
    *) PROFILE=h100-80gb-measured ;;
  esac
fi
export PROFILE
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
python3 -m pip install -q --no-deps --no-build-isolation -e . >/tmp/pip.log 2>&1 || { cat /tmp/pip.log; exit 1; }
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv | tee "$OUT/nvidia-smi.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name(0))"
for stage in "$@"; do
  echo "=== $stage ($(date -u +%T))"
  case $stage in
    ktest) python3 -m pytest -q -p no:cacheprovider tests/test_kernels.py 2>&1 | tee "$OUT/ktest.log" | tail -5 ;;
    kbench) python3 benchmarks/kernels.py --out "$OUT" 2>&1 | tee "$OUT/kbench.log" | tail -120 ;;
    calibrate) alisa calibrate --name "$PROFILE" --out "$OUT/$PROFILE.yaml" 2>&1 | tee "$OUT/calibrate.log" | tail -40 ;;
    # calibrate, then use the new profile for what follows (the ALISA plan's recompute ratio depends on it)
    calibrate-use) alisa calibrate --name "$PROFILE" --out "$OUT/$PROFILE.yaml" ${CAL_ARGS:-} 2>&1 | tee "$OUT/calibrate.log" | tail -40
                   cp "$OUT/$PROFILE.yaml" "$OUT/$PROFILE.measurements.json" hardware_profiles/ ;;
    realtest) timeout 300 python3 -m pytest -q -x --tb=short -o faulthandler_timeout=75 -p no:cacheprovider tests/test_real_backend.py 2>&1 | tee "$OUT/realtest.log" | tail -15 ;;
    # the device gather's slow Phase III segments: the kernels alone (micro), the executor at fixed ratios (run)
    mixedrun) python3 benchmarks/debug/mixed_gather.py "$OUT" run 2>&1 | tee "$OUT/mixedrun.log" | tail -20 ;;
    # the tiny run's GPU-only token difference: where its selection leaves the reference's
    seldiff) for a in "--gather host" "--gather device" "--gather host --eager"; do
               python3 benchmarks/debug/selection_diff.py --gen 16 $a; done 2>&1 | tee "$OUT/seldiff.log" | tail -30 ;;
    validate) bash benchmarks/validation_matrix.sh "$OUT" 2>&1 | tee "$OUT/validate.log" | tail -60 ;;
    # the calibrate -> validate routine (docs/validation.md): routine-1 calibrates and writes
    # $PROFILE; copy it into hardware_profiles/ before routine-2 and later calls
    routine-[0-9]*) python3 benchmarks/gpu_routine.py run "$OUT" --call "${stage#routine-}" --profile "$PROFILE" ${ROUTINE_ARGS:-} 2>&1 | tee "$OUT/$stage.log" | tail -30 ;;
    # real FlexGen and HF runs beside our backend under one memory cap (docs/peers.md); needs the
    # carried wheels flexgen, pulp, accelerate in .whl/
    peers) python3 benchmarks/peers/run_peers.py run /tmp/peers --profile "$PROFILE" 2>&1 | tee "$OUT/peers.log" | tail -30
           tar czf "$OUT/peers.tgz" -C /tmp peers ;;
    # val-alisa-r2: a repeat of a policy's runs, in its own process, packed as validation-alisa-r2.tgz
    val-*-r[0-9]*) p=${stage#val-}; VAL_TAG=-${p##*-} bash benchmarks/validation_matrix.sh "$OUT" "${p%-r*}" 2>&1 | tee "$OUT/$stage.log" | tail -40 ;;
    val-*) bash benchmarks/validation_matrix.sh "$OUT" "${stage#val-}" 2>&1 | tee "$OUT/$stage.log" | tail -40 ;;
    *) echo "unknown stage $stage" ;;
  esac
done
echo "=== done ($(date -u +%T))"
