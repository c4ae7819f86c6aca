"""The `alisa` command line. Library code returns data; this module renders it.

alisa's parts live in the design card's top-level folders and install as ``alisa.sim``,
``alisa.kernels``, ``alisa.calibration``, ``alisa.runtime``, ``alisa.accuracy`` and the
bundled data ``alisa.hardware_profiles`` and ``alisa.scenarios``. None of those folders
(nor ``alisa/``) has an ``__init__.py``: they are namespace packages, so a bare name
such as ``kernels`` always means the installed distribution, never this checkout.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from alisa.sim.atomic import check_output_folder
from alisa.sim.deps import install_hint, require
from alisa.sim.errors import InputError


def _fmt_bytes(b: float) -> str:
    return f"{b / 1e9:.2f} GB"


def _table(rows: list[tuple[str, str]]) -> str:
    w = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k.ljust(w)}  {v}" for k, v in rows)


def render_summary(r: dict[str, Any]) -> str:
    sc = r["scenario"]
    wl = sc["workload"]
    head = (
        f"{sc['name']}: {sc['model']} on {sc['hardware']} ({sc['hardware_source']}), policy {r['policy']}, "
        f"batch {wl['batch_size']}, prompt {wl['prompt_len']}, gen {wl['gen_len']}"
    )
    rows = [("backend", r["backend"])]
    if r["oom"]:
        rows.append(("OOM", f"{r['oom_pool']}: {r['oom_reason']}"))
    rows += [
        ("throughput", f"{r['throughput_tokens_per_s']:.1f} tokens/s"),
        ("tokens generated", str(r["tokens_generated"])),
        (
            "total time",
            f"{r['total_time_s']:.3f} s (prefill {r['prefill_time_s']:.3f} s, decode {r['decode_time_s']:.3f} s)",
        ),
    ]
    for ph in ("I", "II", "III"):
        p = r["phases"][ph]
        if p["steps"]:
            rows.append(
                (
                    f"phase {ph}",
                    f"{p['steps']} steps, {p['time_s']:.3f} s, {1e3 * p['time_s'] / p['steps']:.2f} ms/step",
                )
            )
    rows += [
        ("peak GPU memory", _fmt_bytes(r["peak_gpu_bytes"])),
        ("peak host memory", _fmt_bytes(r["peak_cpu_bytes"])),
        ("H2D / D2H", f"{_fmt_bytes(r['h2d_bytes'])} / {_fmt_bytes(r['d2h_bytes'])}"),
        ("recomputed tokens", str(r["recomputed_tokens"])),
        (
            ("simulation wall time", f"{r['sim_wall_s']:.3f} s ({r['sim_events']} events)")
            if r["backend"] == "sim"
            else ("device", f"{r['real']['device']}, weights {r['real']['weights']}")
        ),
    ]
    return head + "\n" + _table(rows)


def cmd_run(args: argparse.Namespace) -> int:
    from alisa.sim.bundled import resolve_scenario
    from alisa.sim.runner import run_scenario
    from alisa.sim.scenario import load_scenario

    path = resolve_scenario(args.scenario)
    sc = load_scenario(path, args.set)
    out = Path(args.out) if args.out else Path("results") / sc.name
    check_output_folder(out)
    if args.backend == "real":
        require("torch", "triton", purpose="the real backend (--backend real)")
        from alisa.runtime.executor import RealOptions
        from alisa.runtime.run import run_real

        result = run_real(
            sc,
            out,
            RealOptions(selection=args.selection, weights=args.weights, graphs=not args.eager),
            plots=not args.no_plots,
        )
    else:
        result = run_scenario(sc, out, plots=not args.no_plots, exact=args.exact)
    print(render_summary(result))
    print(
        f"\nwrote {out}/result.json, steps.csv, trace.json" + ("" if args.no_plots else ", memory.png, step_time.png")
    )
    print("open trace.json at https://ui.perfetto.dev (Open trace file) or chrome://tracing")
    return 0


def _point_label(sc_name: str, params: dict[str, Any]) -> str:
    parts = [sc_name] + [f"{k.split('.')[-1]}-{v.get('name') if isinstance(v, dict) else v}" for k, v in params.items()]
    return "_".join(str(p).replace("/", "-").replace(" ", "") for p in parts)


def cmd_validate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    if not args.real_from:  # measured runs here; comparing saved ones needs neither
        require("torch", "triton", purpose="alisa validate's measured runs (without --real-from)")
    from alisa.runtime.validate import (
        compare_repeats,
        fmt_value,
        layer_breakdown,
        read_run,
        step_series_median,
        step_time_figure,
        summarize,
        summarize_spread,
    )
    from alisa.sim.atomic import write_bytes, write_text
    from alisa.sim.bundled import resolve_scenario
    from alisa.sim.hardware import load_profile
    from alisa.sim.runner import run_scenario
    from alisa.sim.scenario import expand_sweep

    points = []
    for path in args.scenarios:
        for params, sc in expand_sweep(resolve_scenario(path), args.set):
            points.append((_point_label(sc.name, params), sc))
    if len({p[0] for p in points}) != len(points):
        raise InputError(
            "two scenarios (or sweep points) share a name; give them distinct `name:` fields", field="name"
        )
    out = Path(args.out)
    # --real-from DIR [DIR ...]: measured runs of every point, one folder per repeat
    real_froms = [Path(p) for p in args.real_from] if args.real_from else []
    for rf in real_froms:
        missing = [lab for lab, _ in points if not (rf / lab / "real" / "result.json").is_file()]
        if missing:
            raise InputError(f"no measured run for {', '.join(missing)}", file=str(rf), field="--real-from")
        for lab, sc in points:
            _check_measured_matches(rf / lab / "real" / "result.json", sc)
    # --timing: the plans are the scenario profile's (the ones the runs executed), their
    # timing another calibration's, e.g. the machine's own when the runs were planned earlier
    try:
        timing = load_profile(args.timing) if args.timing else None
    except InputError as e:  # name the flag, not the scenario field the loader assumes
        raise InputError(e.reason, file=e.file, field="--timing") from None
    rows: list[dict[str, Any]] = []
    cond_rows: list[dict[str, Any]] = []
    failures: dict[str, str] = {}
    for label, sc in tqdm(points, desc="validate", unit="scenario", file=sys.stderr):
        d = out / label
        real_dirs = [rf / label / "real" for rf in real_froms] or [d / "real"]
        if not real_froms:
            from alisa.runtime.executor import RealOptions
            from alisa.runtime.run import run_real

            try:
                run_real(
                    sc,
                    real_dirs[0],
                    RealOptions(selection=args.selection, weights=args.weights, graphs=not args.eager),
                    plots=False,
                )
            except InputError as e:
                if len(points) == 1:
                    raise
                failures[label] = e.message()
                print(f"alisa: {label}: {e.message()}", file=sys.stderr)
                continue
        if args.real_only:
            continue
        run_scenario(sc, d / "sim", plots=False, timing=timing)
        sim, sim_steps = read_run(d / "sim")
        runs = [read_run(rd) for rd in real_dirs]
        real = runs[0][0]
        metrics = compare_repeats(sim, [r for r, _ in runs])
        point_rows = _metric_rows(label, metrics)
        rows += point_rows
        # where a layer's time goes, against the first measured run's traced steps
        traced = all((x / "trace.json").is_file() for x in (d / "sim", real_dirs[0]))
        layers = layer_breakdown(d / "sim", real_dirs[0]) if traced else {}
        write_text(
            d / "validation.json",
            json.dumps(
                {
                    "scenario": label,
                    "metrics": point_rows,
                    "layers": layers,
                    "real": real.get("real", {}),
                    "real_runs": [str(rd) for rd in real_dirs],
                },
                indent=2,
            ),
        )
        if args.host_conditioned:
            cond_rows += _host_conditioned(label, sc, d, real_dirs, [r for r, _ in runs], timing)
        series = [s for _, s in runs]
        several = len(runs) > 1
        write_bytes(
            d / "step_time_compare.png",
            step_time_figure(
                sim_steps,
                step_series_median(series),
                f"{label}: simulated ({sim['scenario']['hardware']}) vs measured "
                f"({real.get('real', {}).get('device', '?')}{f', {len(runs)} runs' if several else ''})",
                repeats=series if several else None,
            ),
        )
        print(f"\n{label}")
        for r in point_rows:
            err = "n/a" if r["error"] is None else f"{100 * r['error']:+.1f}%"
            rng = (
                f"  runs {fmt_value(r['metric'], r['real_min'])} .. {fmt_value(r['metric'], r['real_max'])}"
                if r["repeats"] > 1
                else ""
            )
            print(
                f"  {r['metric']:26s} sim {fmt_value(r['metric'], r['sim']):>14s}  "
                f"measured {fmt_value(r['metric'], r['real']):>14s}  {err:>8s}{rng}"
            )
        for ph, parts in layers.items():
            print(f"  per layer, phase {ph:3s} " + "; ".join(_layer_part(k, v) for k, v in parts.items()))
    if args.real_only:
        print(f"wrote measured runs under {out}" + (f"; failed: {', '.join(failures)}" if failures else ""))
        return 0 if not failures else 1
    summary, spread = summarize(rows), summarize_spread(rows)
    fields = ["scenario", "metric", "sim", "real", "error", "real_min", "real_max", "repeats"]
    write_text(out / "validation.csv", _csv(rows, fields))
    extra: dict[str, Any] = {}
    if args.host_conditioned:
        write_text(out / "validation-host-conditioned.csv", _csv(cond_rows, [*fields, "host_factor"]))
        extra["host_conditioned"] = {
            "summary": summarize(cond_rows),
            "host_factor": {r["scenario"]: r["host_factor"] for r in cond_rows},
        }
    write_text(
        out / "summary.json",
        json.dumps(
            {
                "summary": summary,
                "measured_spread": spread,
                "failures": failures,
                "scenarios": [lab for lab, _ in points],
                "measured_runs": [str(rf) for rf in real_froms],
                "timing_profile": args.timing,
                **extra,
            },
            indent=2,
        ),
    )
    print(
        "\nmedian / worst |error| over scenarios"
        + (f" (measured: median of {len(real_froms)} runs)" if len(real_froms) > 1 else "")
    )
    for k, v in summary.items():
        print(
            f"  {k:26s} {100 * v['median_abs_error']:6.1f}% / {100 * v['worst_abs_error']:6.1f}% "
            f"({v['worst_scenario']}, n={v['n']})"
        )
    if spread:
        print("\nthe measured runs' own spread, (max - min) / median: median / worst over scenarios")
        for k, v in spread.items():
            print(
                f"  {k:26s} {100 * v['median_spread']:6.1f}% / {100 * v['worst_spread']:6.1f}% "
                f"({v['worst_scenario']}, n={v['n']})"
            )
    if args.host_conditioned:
        print("\nhost-conditioned: the same plans, the host's costs scaled by each point's measured host speed")
        for k, v in extra["host_conditioned"]["summary"].items():
            print(
                f"  {k:26s} {100 * v['median_abs_error']:6.1f}% / {100 * v['worst_abs_error']:6.1f}% "
                f"({v['worst_scenario']}, n={v['n']})"
            )
    print(f"\nwrote {out}/validation.csv, summary.json and per-scenario folders")
    return 0 if not failures else 1


def _layer_part(part: str, v: dict[str, Any]) -> str:
    err = f" ({100 * v['error']:+.0f}%)" if v["error"] is not None else ""
    return f"{part} {1e6 * v['sim_s']:.0f}/{1e6 * v['real_s']:.0f} us{err}"


def _csv(rows: list[dict[str, Any]], fields: list[str]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields)
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def _check_measured_matches(path: Path, sc: Any) -> None:
    """A measured run is compared only with the scenario it ran: same model, hardware
    profile (its plans come from it), workload and policy."""
    from alisa.sim.results import scenario_summary

    try:
        ran = json.loads(path.read_text())["scenario"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(f"not a run's result.json ({e})", file=str(path), field="scenario") from None
    want = scenario_summary(sc)
    for key in ("model", "hardware"):
        if ran.get(key) != want[key]:
            hint = f"; to compare with it, pass --set hardware={ran.get(key)}" if key == "hardware" else ""
            raise InputError(
                f"the measured run has {key} {ran.get(key)!r}, the scenario {want[key]!r}{hint}",
                file=str(path),
                field=f"scenario.{key}",
            )
    fp = ran.get("hardware_fingerprint")  # runs written before it recorded none
    if fp is not None and fp != want["hardware_fingerprint"]:
        raise InputError(
            f"the measured run was planned with another {want['hardware']} profile (fingerprint {fp}, the "
            f"scenario's {want['hardware_fingerprint']}): pass the profile it ran with (--set hardware=PATH); "
            "--timing PROFILE times those plans with another calibration",
            file=str(path),
            field="scenario.hardware_fingerprint",
        )
    for key in ("workload", "policy"):
        # field by field: a run written before a field existed lacks it (and had its default)
        for f, v in (ran.get(key) or {}).items():
            if f in want[key] and want[key][f] != v:
                raise InputError(
                    f"the measured run has {f} {v!r}, the scenario {want[key][f]!r}",
                    file=str(path),
                    field=f"scenario.{key}.{f}",
                )


def _host_conditioned(
    label: str, sc: Any, d: Path, real_dirs: list[Path], reals: list[dict[str, Any]], timing: Any = None
) -> list[dict[str, Any]]:
    """One point re-timed with its measured host speed (``--host-conditioned``): rows as
    the plain comparison's, with ``host_factor``; none where no traced step has a host
    to compare (the factor is then undefined)."""
    from alisa.runtime.host_speed import host_factor
    from alisa.runtime.validate import compare_repeats, read_run
    from alisa.sim.runner import run_scenario

    hf = host_factor(real_dirs, d / "sim" / "trace.json")
    if hf is None:
        return []
    base = timing or sc.hardware
    scaled = base.model_copy(update={"host": base.host.scaled(hf["factor"])})
    run_scenario(sc, d / "sim-host-conditioned", plots=False, timing=scaled)
    sim, _ = read_run(d / "sim-host-conditioned")
    return _metric_rows(label, compare_repeats(sim, reals), host_factor=hf["factor"])


def _metric_rows(label: str, metrics: list[Any], **extra: Any) -> list[dict[str, Any]]:
    """A point's metrics as the rows of validation.csv (and summary.json)."""
    return [
        {
            "scenario": label,
            "metric": m.name,
            "sim": m.sim,
            "real": m.real,
            "error": m.error,
            "real_min": m.real_min,
            "real_max": m.real_max,
            "repeats": m.repeats,
            **extra,
        }
        for m in metrics
    ]


def cmd_sweep(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from alisa.sim.bundled import resolve_scenario
    from alisa.sim.scenario import expand_sweep
    from alisa.sim.sweep import SweepInterrupted, run_sweep

    if args.engine == "ray":
        require("ray", purpose="alisa sweep --engine ray")
    if args.jobs is not None and args.jobs < 1:
        raise InputError(f"must be at least 1, got {args.jobs}", field="--jobs")
    path = resolve_scenario(args.scenario)
    points = expand_sweep(path, args.set)
    out = Path(args.out) if args.out else Path("results") / (Path(path).stem + "-sweep")
    check_output_folder(out)
    failed = 0
    with tqdm(total=len(points), desc="sweep", unit="pt", file=sys.stderr) as bar:

        def tick(n: int, bad: bool) -> None:
            nonlocal failed
            failed += bad
            bar.update(n)
            if failed:
                bar.set_postfix(failed=failed)

        try:
            report = run_sweep(
                points, out, jobs=args.jobs, progress=tick, engine=args.engine, address=args.address, exact=args.exact
            )
        except SweepInterrupted as e:
            bar.close()
            print(f"alisa: {e}", file=sys.stderr)
            return 1
    rows = report.rows
    keys = [k for k in rows[0] if k.startswith("param:")]
    print("  ".join(k.removeprefix("param:") for k in keys) + "  throughput_tok/s  phases(I/II/III)  oom")
    for r in rows:
        vals = "  ".join(str(r[k]) for k in keys)
        if r["error"]:
            print(f"{vals}  error: {r['error']}")
            continue
        print(
            f"{vals}  {r['throughput_tokens_per_s']:.1f}  "
            f"{r['phase_I_steps']}/{r['phase_II_steps']}/{r['phase_III_steps']}  {r['oom']}"
        )
    note = f"{report.computed} computed, {report.reused} reused from {out / 'points'}"
    if report.failed:
        note += f"; {len(report.failed)} failed (their error is in sweep.csv; a re-run tries them again)"
    print(f"\nwrote {out}/sweep.csv and sweep.json ({len(rows)} points: {note})")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from alisa.sim.bundled import resolve_scenario
    from alisa.sim.scenario import load_resolved
    from alisa.sim.search import run_search, spec_from

    require("optuna", purpose="alisa search")
    if args.engine == "ray":
        require("ray", purpose="alisa search --engine ray")
    if args.jobs is not None and args.jobs < 1:
        raise InputError(f"must be at least 1, got {args.jobs}", field="--jobs")
    path = resolve_scenario(args.scenario)
    data, file = load_resolved(path, args.set)
    spec = spec_from(data, file, args.free, args.constraint, args.objective, args.trials)
    out = Path(args.out) if args.out else Path("results") / (Path(path).stem + "-search")
    check_output_folder(out)
    seed = args.seed if args.seed is not None else int(data.get("seed") or 0)
    bad = 0
    with tqdm(total=spec.trials, desc="search", unit="trial", file=sys.stderr) as bar:

        def tick(n: int, failed: bool) -> None:
            nonlocal bad
            bad += failed
            bar.update(n)
            bar.set_postfix(infeasible=bad)

        rep = run_search(data, file, spec, out, seed, args.engine, args.jobs, args.address, args.exact, tick)
    cons = ", ".join(str(c) for c in rep.constraints) or "none"
    print(f"{len(rep.trials)} trials, objective {rep.objective}, constraints: {cons}")
    if rep.best is None or rep.best.result is None:
        print("no trial met the constraints; see trials.csv for why")
        print(f"\nwrote {out}/trials.csv")
        return 0
    r = rep.best.result
    print("best point:")
    for k, v in rep.best.values.items():
        print(f"  {k:28s} {v.get('name') if isinstance(v, dict) else v}")
    print(f"  throughput                   {r['throughput_tokens_per_s']:.1f} tokens/s")
    print(f"  per-token latency            {1e3 * r['token_latency_s']:.2f} ms")
    print(f"  peak GPU / host memory       {r['peak_gpu_bytes'] / 1e9:.2f} / {r['peak_cpu_bytes'] / 1e9:.2f} GB")
    print(f"Pareto front (throughput vs per-token latency): {len(rep.pareto)} points")
    print(f"\nwrote {out}/best.json, winner.yaml (alisa run {out}/winner.yaml), trials.csv, pareto.csv, pareto.png")
    return 0


def cmd_scenarios(_: argparse.Namespace) -> int:
    from alisa.sim.bundled import scenario_files, scenario_name
    from alisa.sim.hardware import read_yaml

    for f in scenario_files():
        data = read_yaml(f) or {}
        sweep = data.get("sweep") if isinstance(data, dict) else None
        pol = (data.get("policy") or {}).get("name", "?") if isinstance(data, dict) else "?"
        extra = f"  sweep over {', '.join(sweep)}" if sweep else ""
        print(f"{scenario_name(f):28s} {data.get('model', '?')!s:14s} {data.get('hardware', '?')!s:22s} {pol}{extra}")
    return 0


def cmd_profiles(_: argparse.Namespace) -> int:
    from alisa.sim.hardware import load_profile, profile_names

    for n in profile_names():
        p = load_profile(n)
        print(
            f"{n:22s} {p.source:9s} {p.gpu_memory_gb:7.1f} GB  HBM {p.hbm_gbps:6.0f} GB/s  "
            f"fp16 {p.fp16_tflops:6.1f} TFLOP/s  PCIe {p.pcie_h2d_gbps:5.1f} GB/s  host {p.cpu_memory_gb:.0f} GB"
        )
    return 0


def cmd_models(_: argparse.Namespace) -> int:
    from alisa.sim.catalog import get_model, model_names
    from alisa.sim.models import kv_bytes_per_token, weight_bytes

    for n in model_names():
        m = get_model(n)
        print(
            f"{n:14s} layers {m.num_layers:3d}  hidden {m.hidden_size:5d}  heads {m.num_heads:3d}/{m.num_kv_heads:<3d} "
            f"weights {weight_bytes(m) / 1e9:6.1f} GB  KV/token {kv_bytes_per_token(m) / 1e3:7.1f} KB"
        )
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from alisa.calibration.run import calibrate, refit, require_gpu, write_profile

    if args.refit:
        path = Path(args.refit)
        profile, rows = refit(path)
        write_profile(profile, rows, path)
        print(f"refitted {path} from {path.with_suffix('.measurements.json')}")
        return 0
    if args.host_processes is not None and args.host_processes < 1:
        raise InputError(f"must be at least 1, got {args.host_processes}", field="--host-processes")
    require("torch", "triton", purpose="alisa calibrate")
    require_gpu()  # before anything else: a clear message and exit 2 where there is none
    models = tuple(m.strip() for m in args.models.split(",")) if args.models else None
    name = args.name
    out = Path(args.out) if args.out else Path("hardware_profiles") / f"{name}.yaml"
    stages = 10
    with tqdm(total=stages, desc="calibrate", unit="stage", file=sys.stderr) as bar:

        def step(label: str) -> None:
            bar.set_postfix_str(label)
            if bar.n < stages and label != "launch latency":
                bar.update(1)

        profile, rows = calibrate(args.quick, name, models, progress=step, host_processes=args.host_processes)
        bar.update(stages - bar.n)
    write_profile(profile, rows, out)
    fits = profile["meta"]["fits"]
    print(
        f"{profile['gpu_name']}: HBM {profile['hbm_gbps']} GB/s, fp16 {profile['fp16_tflops']} TFLOP/s, "
        f"H2D {profile['pcie_h2d_gbps']} GB/s, D2H {profile['pcie_d2h_gbps']} GB/s, "
        f"pageable x{profile['pcie_pageable_factor']}, gather {profile['cpu_gather_gbps']} GB/s, "
        f"launch {profile['kernel_launch_us']} us"
    )
    for op, f in fits.items():
        err = f.get("mean_rel_error", f.get("roofline_mean_rel_error"))
        if err is not None:
            print(f"  fit {op:28s} mean rel. error {100 * err:6.2f}%")
    print(f"wrote {out} ({profile['meta']['wall_s']} s)")
    return 0


def _parse_list(value: str, flag: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise InputError("needs at least one value", field=flag)
    return items


def cmd_accuracy(args: argparse.Namespace) -> int:
    import datetime as dt
    import platform
    import shlex

    from alisa.kernels.selection import POLICIES, PolicySpec

    policies = _parse_list(args.policies, "--policies")
    for p in policies:
        if p not in POLICIES:
            raise InputError(f"unknown policy '{p}'; known: {', '.join(POLICIES)}", field="--policies")
    budgets = []
    for b in _parse_list(args.budgets, "--budgets"):
        try:
            v = float(b)
        except ValueError:
            raise InputError(f"budget '{b}' is not a number", field="--budgets") from None
        if not 0.0 < v <= 1.0:
            raise InputError(f"budget {v} must lie in (0, 1]", field="--budgets")
        budgets.append(v)
    if args.tokens <= args.prefill + 1:
        raise InputError(f"--tokens {args.tokens} must exceed --prefill {args.prefill} + 1", field="--tokens")
    if args.trace_out and "swa" not in policies:
        raise InputError("--trace-out records the swa policy's selections: add swa to --policies", field="--trace-out")

    require("torch", "transformers", purpose="alisa accuracy")
    from tqdm import tqdm

    from alisa.accuracy.evaluate import evaluate
    from alisa.accuracy.models import load
    from alisa.accuracy.report import rows_as_dicts, table, write_report
    from alisa.accuracy.text import SOURCE, read_text, token_ids
    from alisa.runtime.decoder import Decoder
    from alisa.sim.selection import write_trace

    text, label = read_text(args.text)
    model, tok = load(args.model)
    ids = token_ids(text, tok, model.config.vocab_size, args.tokens, label)
    specs = [PolicySpec("dense")] + [
        PolicySpec(p, b, local_fraction=args.local_fraction) for p in policies if p != "dense" for b in budgets
    ]
    trace_row = None
    if args.trace_out:
        tb = args.trace_budget if args.trace_budget is not None else budgets[0]
        match = [i for i, s in enumerate(specs) if s.name == "swa" and abs(s.budget - tb) < 1e-9]
        if not match:
            raise InputError(f"--trace-budget {tb} is not among --budgets", field="--trace-budget")
        trace_row = match[0]
    dec = Decoder.from_hf(model)
    with tqdm(total=args.tokens - 1 - args.prefill, desc="accuracy", unit="tok", file=sys.stderr) as bar:
        rows, trace = evaluate(dec, ids, specs, args.prefill, args.shared_heads, trace_row, bar.update)
    result = rows_as_dicts(rows)
    out = Path(args.out)
    meta = {
        "command": " ".join(shlex.quote(a) for a in ["alisa", *sys.argv[1:]]),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)",
        "model": args.model,
        "text": label,
        "text_source": SOURCE if args.text is None else label,
        "tokens": args.tokens,
        "prefill": args.prefill,
        "shared_heads": args.shared_heads,
        "local_fraction": args.local_fraction,
    }
    write_report(out, result, meta)
    print(table(result))
    print(f"\nwrote {out}/accuracy.csv, accuracy.json, accuracy.png")
    if trace is not None:
        if not args.trace_indices:
            from dataclasses import replace

            trace = replace(trace, indices=None, indices_offsets=None)
        write_trace(args.trace_out, trace)
        churn = trace.churn()[1:].mean() if trace.num_steps > 1 else 0.0
        print(
            f"wrote {args.trace_out} ({trace.num_steps} steps x {trace.num_layers} layers; "
            f"mean global selection churn {churn:.3f})"
        )
    return 0


def _real_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--selection",
        choices=("plan", "free"),
        default="plan",
        help="real backend: fetch the plan's count of misses (plan) or serve pure SWA (free)",
    )
    p.add_argument(
        "--weights",
        choices=("auto", "random", "real"),
        default="auto",
        help="real backend: real weights where bundled (smollm2-135m), else random",
    )
    p.add_argument(
        "--eager",
        action="store_true",
        help="real backend: run decode's norms, projections and MLP eagerly, not as CUDA graphs",
    )


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="alisa", description="Sparsity-aware KV caching: simulator and tools")
    ap.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = ap.add_subparsers(dest="cmd", required=True)

    r = sub.add_parser("run", help="run one scenario (default: the bundled default scenario)")
    r.add_argument("scenario", nargs="?", help="scenario YAML path or bundled name (see `alisa scenarios`)")
    r.add_argument("--out", help="output folder (default results/<scenario name>)")
    r.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="PATH=VALUE",
        help="override a field of the resolved scenario, e.g. workload.batch_size=32",
    )
    r.add_argument(
        "--backend",
        choices=("sim", "real"),
        default="sim",
        help="sim: the SimPy model; real: run the plans on this machine's CUDA GPU",
    )
    _real_flags(r)
    r.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    r.add_argument(
        "--exact", action="store_true", help="simulator: the full SimPy event model, not its closed form (slower)"
    )
    r.set_defaults(func=cmd_run)

    v = sub.add_parser("validate", help="run scenarios on both backends and report simulated vs measured")
    v.add_argument("scenarios", nargs="+", help="scenario YAMLs or bundled names (sweeps expand to their points)")
    v.add_argument("--out", default="results/validation")
    v.add_argument("--set", action="append", default=[], metavar="PATH=VALUE")
    _real_flags(v)
    v.add_argument("--real-only", action="store_true", help="only the measured runs (e.g. on a GPU machine)")
    v.add_argument(
        "--host-conditioned",
        action="store_true",
        help="also re-time the same plans with the profile's host costs scaled by each point's "
        "measured host speed (its traced steps' own host time over the simulated): the "
        "error left is the model's, not the process's host draw (runtime/host_speed.py)",
    )
    v.add_argument(
        "--timing",
        metavar="PROFILE",
        help="time the scenario's plans with this profile (a name or a YAML path) instead of the "
        "scenario's own: runs planned with an earlier calibration, timed by the one made on their machine",
    )
    v.add_argument(
        "--real-from",
        metavar="DIR",
        nargs="+",
        help="compare with measured runs written by --real-only; several DIRs: repeats of every point, "
        "compared by their median, with their spread reported",
    )
    v.set_defaults(func=cmd_validate)

    s = sub.add_parser("sweep", help="run the Cartesian product of a scenario's `sweep:` lists")
    s.add_argument("scenario")
    s.add_argument("--out")
    s.add_argument("--set", action="append", default=[], metavar="PATH=VALUE")
    s.add_argument("--jobs", type=int, default=None, help="worker processes (default: all cores)")
    s.add_argument(
        "--engine",
        choices=("pool", "ray"),
        default="pool",
        help="where points run: a local process pool, or Ray tasks (pip install -e '.[ray]')",
    )
    s.add_argument("--address", help="with --engine ray: the cluster to join (default: start a local one)")
    s.add_argument("--exact", action="store_true", help="time with the full SimPy event model (slower)")
    s.set_defaults(func=cmd_sweep)

    q = sub.add_parser("search", help="find the best configuration over the knobs marked free")
    q.add_argument("scenario", help="the fixed model, hardware and workload (its search: section, if any)")
    q.add_argument("--objective", choices=("throughput", "token_latency"), help="default throughput")
    q.add_argument(
        "--free",
        action="append",
        default=[],
        metavar="PATH=SPEC",
        help="a free knob: int:LOW:HIGH[:log], float:LOW:HIGH[:log], choice:A,B,... or bool "
        "(e.g. workload.batch_size=int:8:256:log, policy=choice:alisa,flexgen)",
    )
    q.add_argument(
        "--constraint",
        action="append",
        default=[],
        metavar="EXPR",
        help="peak_gpu_gb<=X, peak_host_gb<=X, token_latency_ms<=X or throughput>=X",
    )
    q.add_argument("--trials", type=int, help="configurations to try (default 48)")
    q.add_argument("--seed", type=int, help="the sampler's seed (default: the scenario's)")
    q.add_argument("--out")
    q.add_argument("--set", action="append", default=[], metavar="PATH=VALUE")
    q.add_argument("--jobs", type=int, default=None, help="worker processes (default: all cores)")
    q.add_argument("--engine", choices=("pool", "ray"), default="pool")
    q.add_argument("--address", help="with --engine ray: the cluster to join")
    q.add_argument("--exact", action="store_true", help="time with the full SimPy event model (slower)")
    q.set_defaults(func=cmd_search)

    c = sub.add_parser("calibrate", help="measure this GPU and host; write a hardware profile")
    c.add_argument("--quick", action="store_true", help="a smaller grid (about 2 minutes)")
    c.add_argument("--name", default="local-measured", help="profile name (default local-measured)")
    c.add_argument("--out", help="profile path (default hardware_profiles/<name>.yaml)")
    c.add_argument("--models", help="catalog models whose GEMM shapes to time (comma-separated)")
    c.add_argument("--refit", metavar="PROFILE", help="rebuild a measured profile from its saved raw measurements")
    c.add_argument(
        "--host-processes",
        type=int,
        default=None,
        metavar="N",
        help="fresh processes the host probes run in, each field the median over them "
        "(default 3; 1 with --quick): a process keeps its host speed, so more "
        "processes sample the machine better on a shared host",
    )
    c.set_defaults(func=cmd_calibrate)

    a = sub.add_parser("accuracy", help="SWA vs dense/local/streaming/H2O on a real model")
    a.add_argument("--model", default="smollm2-135m", help="smollm2-135m (real weights) or tiny-llama (random)")
    a.add_argument("--policies", default="dense,local,streaming,h2o,swa")
    a.add_argument("--budgets", default="0.1,0.2,0.3,0.5", help="shares of cached tokens attended, in (0, 1]")
    a.add_argument("--tokens", type=int, default=1024, help="tokens of the text to evaluate")
    a.add_argument("--prefill", type=int, default=64, help="leading tokens run dense as the prompt")
    a.add_argument("--local-fraction", type=float, default=0.5, help="window share of the budget (swa, h2o)")
    a.add_argument("--shared-heads", action="store_true", help="one selection for all KV heads of a layer")
    a.add_argument("--text", help="a UTF-8 text file (default: the bundled text)")
    a.add_argument("--out", default="results/accuracy")
    a.add_argument("--trace-out", help="write the swa selection trace (.npz) the simulator reads")
    a.add_argument("--trace-budget", type=float, help="which swa budget to trace (default: the first)")
    a.add_argument(
        "--no-trace-indices",
        dest="trace_indices",
        action="store_false",
        help="trace counts only, not the selected indices (a much smaller file)",
    )
    a.set_defaults(func=cmd_accuracy)

    sub.add_parser("scenarios", help="list bundled scenarios").set_defaults(func=cmd_scenarios)
    sub.add_parser("profiles", help="list hardware profiles").set_defaults(func=cmd_profiles)
    sub.add_parser("models", help="list the model catalog").set_defaults(func=cmd_models)
    return ap


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("alisa")
    except PackageNotFoundError:
        return "(not installed)"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except InputError as e:
        print(f"alisa: error: {e.message()}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:
        # a package this command imports is missing: an install problem, not a bug in alisa
        if not e.name or e.name.split(".")[0] == "alisa":
            raise
        print(
            f"alisa: error: alisa {args.cmd} needs the Python package '{e.name.split('.')[0]}', "
            f"which is not installed; {install_hint(e.name)}",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print("alisa: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
