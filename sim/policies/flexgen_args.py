"""FlexGen's command line (``python -m flexgen.flex_opt ...``) as policy fields.

A user can paste the flags of a FlexGen run into ``policy.command_line``; each flag
sets the field of the same meaning. Flags that describe the run rather than the policy
(--model, --prompt-len, --gen-len) must agree with the scenario; bookkeeping flags
(--path, --debug, --log-file, ...) are ignored; flags the simulator does not model
(--attn-sparsity below 1, --sep-layer False) are refused by name.
"""

from __future__ import annotations

import shlex
from typing import Any

_BOOL_WORDS = {"true": True, "1": True, "false": False, "0": False}
_IGNORED_WITH_VALUE = {"--path", "--offload-dir", "--log-file", "--debug-mode", "--debug", "--cut-gen-len", "--verbose"}
_IGNORED_FLAGS = {"--no-log"}
PERCENT_FIELDS = (
    "weights_gpu_percent",
    "weights_cpu_percent",
    "cache_gpu_percent",
    "cache_cpu_percent",
    "act_gpu_percent",
    "act_cpu_percent",
)


def _bool(flag: str, value: str) -> bool:
    try:
        return _BOOL_WORDS[value.lower()]
    except KeyError:
        raise ValueError(f"{flag} takes True or False, got {value!r}") from None


def parse_command_line(text: str) -> dict[str, Any]:
    """The policy fields a FlexGen command line sets, plus ``_run`` (model, prompt and
    generation length, where given) for the policy to check against the scenario."""
    try:
        toks = shlex.split(text)
    except ValueError as e:
        raise ValueError(f"command_line: {e}") from None
    # tolerate a pasted 'python -m flexgen.flex_opt' prefix
    while toks and not toks[0].startswith("--"):
        toks.pop(0)
    out: dict[str, Any] = {}
    run: dict[str, Any] = {}
    i = 0

    def value() -> str:
        nonlocal i
        if i + 1 >= len(toks) or toks[i + 1].startswith("--"):
            raise ValueError(f"{toks[i]} needs a value")
        i += 1
        return toks[i]

    while i < len(toks):
        flag = toks[i].split("=", 1)[0]
        if "=" in toks[i]:  # --flag=value
            toks[i : i + 1] = [flag, toks[i].split("=", 1)[1]]
        try:
            if flag == "--gpu-batch-size":
                out["gpu_batch_size"] = int(value())
            elif flag == "--num-gpu-batches":
                out["num_gpu_batches"] = int(value())
            elif flag == "--percent":
                nums = toks[i + 1 : i + 7]
                if len(nums) != 6 or any(n.startswith("--") for n in nums):
                    raise ValueError("--percent takes six numbers: weights, cache, activations on GPU and CPU")
                out.update(zip(PERCENT_FIELDS, (float(n) for n in nums), strict=True))
                i += 6
            elif flag in ("--cpu", "--cpu-cache-compute"):
                out["cpu_cache_compute"] = True
            elif flag == "--compress-weight":
                out["compress_weight"] = True
            elif flag == "--compress-cache":
                out["compress_cache"] = True
            elif flag == "--overlap":
                out["overlap"] = _bool(flag, value())
            elif flag == "--pin-weight":
                out["pin_weight"] = _bool(flag, value())
            elif flag == "--sep-layer":
                if not _bool(flag, value()):
                    raise ValueError("--sep-layer False is not modelled")
            elif flag == "--attn-sparsity":
                if float(value()) < 1.0:
                    raise ValueError("--attn-sparsity below 1 (FlexGen's top-k attention) is not modelled")
            elif flag == "--model":
                run["model"] = value().split("/")[-1].lower()
            elif flag == "--prompt-len":
                run["prompt_len"] = int(value())
            elif flag == "--gen-len":
                run["gen_len"] = int(value())
            elif flag in _IGNORED_WITH_VALUE:
                value()
            elif flag not in _IGNORED_FLAGS:
                raise ValueError(f"unknown FlexGen flag {flag}")
        except ValueError as e:
            if "needs a value" in str(e) or "takes" in str(e) or "not modelled" in str(e) or "unknown" in str(e):
                raise
            raise ValueError(f"{flag}: {e}") from None
        i += 1
    if run:
        out["_run"] = run
    return out


def fields_from_command_line(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with its command line's fields filled in; a field given both ways is refused."""
    parsed = parse_command_line(str(data["command_line"]))
    run = parsed.pop("_run", {})
    both = sorted(k for k in parsed if k in data)
    if both:
        raise ValueError(f"{', '.join(both)} given both in command_line and as a field")
    del run  # checked against the scenario by ``check_run``
    return {**data, **parsed}


def check_run(command_line: str, model: str, prompt_len: int, gen_len: int) -> str | None:
    """Why the command line's run flags disagree with the scenario, or None."""
    run = parse_command_line(command_line).get("_run", {})
    want = {"model": model, "prompt_len": prompt_len, "gen_len": gen_len}
    for k, v in run.items():
        if v != want[k]:
            where = "model" if k == "model" else f"workload.{k}"
            return f"command_line has {k} {v}, the scenario {want[k]} ({where}): set it there"
    return None
