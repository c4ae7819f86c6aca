"""Bundled scenarios (``scenarios/``): list them and resolve a name to a file."""

from __future__ import annotations

import importlib
from pathlib import Path

from .errors import InputError

DEFAULT_SCENARIO = "default"


def package_dir(package: str) -> Path:
    """The folder of a bundled data package (``alisa.scenarios``, ``alisa.hardware_profiles``).

    Not ``importlib.resources.files``: the design card's top-level folders have no
    ``__init__.py`` (so none shadows an installed distribution of the same bare name, such
    as ``kernels``), which makes them namespace packages, and an editable install lists a
    placeholder path entry beside the real folder, which ``files`` rejects.
    """
    for entry in importlib.import_module(package).__path__:
        if Path(entry).is_dir():
            return Path(entry)
    raise ModuleNotFoundError(f"{package} has no folder on disk; is alisa installed?")


def scenarios_dir() -> Path:
    return package_dir("alisa.scenarios")


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
