"""Sweeps: the pool and Ray write the same bytes; a sweep resumes from its point files;
a point that raises is recorded; a killed worker loses only the points in flight."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from alisa.cli import main
from alisa.sim import sweep as sweep_mod
from alisa.sim.bundled import resolve_scenario
from alisa.sim.scenario import expand_sweep

SHORT = ["workload.gen_len=48"]  # pcie-whatif's 10 points, each well under a second


def _points(sets: list[str] | None = None):
    return expand_sweep(resolve_scenario("pcie-whatif"), [*SHORT, *(sets or [])])


def _files(out: Path) -> tuple[bytes, bytes]:
    return (out / "sweep.csv").read_bytes(), (out / "sweep.json").read_bytes()


def test_engines_write_the_same_bytes(tmp_path):
    pytest.importorskip("ray")
    outs = {}
    for name, argv in {
        "serial": ["--jobs", "1"],
        "pool": ["--jobs", "2"],
        "ray": ["--engine", "ray", "--jobs", "2"],  # starts and stops its own local cluster
    }.items():
        out = tmp_path / name
        assert main(["sweep", "pcie-whatif", "--out", str(out), *(f"--set={s}" for s in SHORT), *argv]) == 0
        outs[name] = _files(out)
    assert outs["serial"] == outs["pool"] == outs["ray"]
    rows = outs["pool"][0].decode().splitlines()
    assert len(rows) == 11 and "sim_wall_s" not in rows[0]  # 10 points; nothing that changes run to run


def test_resume_computes_only_what_is_missing(tmp_path, monkeypatch):
    out = tmp_path / "s"
    points = _points()
    first = sweep_mod.run_sweep(points, out, jobs=1)
    assert first.computed == 10 and first.reused == 0
    want = _files(out)
    files = sorted((out / "points").glob("*.json"))
    for f in files[:3]:
        f.unlink()  # never written
    files[3].write_text(files[3].read_text()[:40])  # cut off mid-write
    (out / "sweep.csv").unlink()
    kept = {f: f.stat().st_mtime_ns for f in files[4:]}
    calls = []
    real = sweep_mod.evaluate
    monkeypatch.setattr(sweep_mod, "evaluate", lambda sc, exact=False: calls.append(sc) or real(sc, exact))
    again = sweep_mod.run_sweep(points, out, jobs=1)
    assert (again.computed, again.reused, len(calls)) == (4, 6, 4)
    assert _files(out) == want
    assert all(f.stat().st_mtime_ns == t for f, t in kept.items())  # finished points untouched


def test_a_point_that_raises_is_recorded_and_retried(tmp_path, monkeypatch):
    out = tmp_path / "s"
    points = _points()
    real = sweep_mod.simulate

    def flaky(sc, timing=None, exact=False):
        if sc.hardware.pcie_h2d_gbps == 16 and sc.policy.int8_kv:
            raise RuntimeError("injected failure")
        return real(sc, timing, exact)

    monkeypatch.setattr(sweep_mod, "simulate", flaky)
    rep = sweep_mod.run_sweep(points, out, jobs=1)
    bad = [r for r in rep.rows if r["error"]]
    assert len(bad) == 1 and "injected failure" in bad[0]["error"] and rep.failed == [5]
    assert all(r["throughput_tokens_per_s"] > 0 for r in rep.rows if not r["error"])
    monkeypatch.setattr(sweep_mod, "simulate", real)
    rep = sweep_mod.run_sweep(points, out, jobs=1)
    assert (rep.computed, rep.reused, rep.failed) == (1, 9, [])


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_a_killed_worker_loses_only_the_points_in_flight(tmp_path):
    out = tmp_path / "s"
    # the full 10 points (~0.3 s each) on 2 workers: time enough to kill one mid-sweep
    argv = ["sweep", "pcie-whatif", "--out", str(out), "--jobs", "2"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "alisa.cli", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.time() + 60
        while time.time() < deadline and len(list((out / "points").glob("*.json"))) < 2:
            time.sleep(0.05)
        workers = [c for c in _children(proc.pid) if "python" in Path(f"/proc/{c}/cmdline").read_text(errors="ignore")]
        assert workers, "no pool worker to kill"
        os.kill(workers[0], signal.SIGKILL)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 1, err[-800:]
    assert "did not finish" in err and "Traceback" not in err
    done = {f: f.stat().st_mtime_ns for f in (out / "points").glob("*.json")}
    assert 2 <= len(done) < 10
    assert not (out / "sweep.csv").exists()  # the summary waits for every point
    # the re-run completes the sweep and leaves finished points alone
    p = subprocess.run([sys.executable, "-m", "alisa.cli", *argv], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-800:]
    assert f"{10 - len(done)} computed, {len(done)} reused" in p.stdout
    assert all(f.stat().st_mtime_ns == t for f, t in done.items())
    clean = tmp_path / "clean"
    sweep_mod.run_sweep(expand_sweep(resolve_scenario("pcie-whatif")), clean, jobs=2)
    assert _files(out) == _files(clean)


def test_ray_engine_without_ray_is_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)
    assert main(["sweep", "pcie-whatif", "--engine", "ray", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "'ray'" in err and "pip install -e '.[ray]'" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_point_files_name_their_scenario(tmp_path):
    out = tmp_path / "s"
    sweep_mod.run_sweep(_points()[:2], out, jobs=1)
    for f in (out / "points").glob("*.json"):
        data = json.loads(f.read_text())
        assert data["key"] == f.stem and data["result"]["scenario"]["name"] == "pcie-whatif"
