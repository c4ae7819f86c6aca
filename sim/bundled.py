"""Bundled scenarios (``scenarios/``): list them and resolve a name to a file."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from .errors import InputError

DEFAULT_SCENARIO = "default"


def scenarios_dir() -> Path:
    return Path(str(resources.files("alisa.scenarios")))


def scenario_files() -> list[Path]:
    root = scenarios_dir()
    return sorted(p for p in root.rglob("*.yaml"))


def scenario_name(path: Path) -> str:
    return str(path.relative_to(scenarios_dir()).with_suffix(""))


def resolve_scenario(ref: str | None) -> Path:
    """A path to a YAML file, or a bundled scenario's name (``default``, ``paper/opt-13b``)."""
    ref = ref or DEFAULT_SCENARIO
    p = Path(ref)
    if p.is_file():
        return p
    cand = scenarios_dir() / f"{ref}.yaml"
    if cand.is_file():
        return cand
    if p.suffix in (".yaml", ".yml"):
        raise InputError("scenario file does not exist", file=ref)
    known = ", ".join(scenario_name(f) for f in scenario_files())
    raise InputError(f"no scenario file or bundled scenario named '{ref}'; bundled: {known}", file=ref)
