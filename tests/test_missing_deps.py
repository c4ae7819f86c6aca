"""A missing optional package or GPU is one line naming it and how to install it, exit 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

from alisa.cli import main


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("alisa: error:"), err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("module, dist, extra", [("triton", "triton", "kernels"), ("torch", "torch", "kernels")])
@pytest.mark.parametrize(
    "argv",
    [
        ["run", "--backend", "real", "--no-plots"],
        ["validate", "default"],
        ["calibrate", "--quick"],
    ],
    ids=["run-real", "validate", "calibrate"],
)
def test_kernels_packages_missing(monkeypatch, capsys, tmp_path, module, dist, extra, argv):
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now fails as if not installed
    out = tmp_path / "out"
    assert main([*argv, "--out", str(out)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f"'{dist}'" in line and f"pip install -e '.[{extra}]'" in line
    assert not out.exists()


@pytest.mark.parametrize("module", ["torch", "transformers"])
def test_accuracy_packages_missing(monkeypatch, capsys, tmp_path, module):
    monkeypatch.setitem(sys.modules, module, None)
    out = tmp_path / "out"
    assert main(["accuracy", "--model", "tiny-llama", "--tokens", "100", "--out", str(out)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f"'{module}'" in line and "pip install" in line
    assert not out.exists()


def test_validate_from_saved_runs_needs_no_torch(monkeypatch, capsys, tmp_path):
    """Comparing measured runs written elsewhere is CPU work: torch may be absent."""
    monkeypatch.setitem(sys.modules, "torch", None)
    code = main(["validate", "default", "--real-from", str(tmp_path / "none"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "no measured run" in _one_error_line(err)


def test_any_missing_package_is_one_line(tmp_path):
    """The net under the explicit checks: a core package that fails to import mid-command."""
    out = tmp_path / "o"
    code = (
        "import sys; sys.modules['simpy'] = None; from alisa.cli import main; "
        f"sys.exit(main(['run', '--no-plots', '--out', {str(out)!r}]))"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 2, p.stderr[-800:]
    line = _one_error_line(p.stderr)
    assert "'simpy'" in line and "pip install simpy" in line
    assert not out.exists()
