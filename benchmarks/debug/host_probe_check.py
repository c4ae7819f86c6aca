"""Is the host-issue probe linear in depth? The host's own ms per decode step (median)
of each probe at several depths (calibration uses two). Usage: python benchmarks/debug/host_probe_check.py OUT"""
import json
import sys

import yaml

from alisa.calibration.host_issue import PROBES, _host_per_step, _scenario

out = {}
hw = yaml.safe_load(open("hardware_profiles/h100-80gb-measured.yaml"))
for probe in sys.argv[2].split(",") if len(sys.argv) > 2 else PROBES:
    for L in (2, 8, 16, 32):
        r = _host_per_step(_scenario(L, PROBES[probe], hw, 40))
        step_s, pre_s = r["own_seconds"], r["prefill_seconds"]
        out[f"{probe} L{L}"] = (step_s * 1e3, pre_s * 1e3)
        print(f"{probe:10s} L{L:3d} host/step {step_s * 1e3:7.3f} ms  prefill {pre_s * 1e3:7.3f} ms", flush=True)
json.dump(out, open(f"{sys.argv[1]}/host_probe_check.json", "w"), indent=1)
