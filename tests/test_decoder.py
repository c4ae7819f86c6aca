"""The compact decoder against transformers' own models on the same weights (fp32)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from alisa.runtime.decoder import Decoder, KVCache, dense_causal  # noqa: E402


def _pair(family: str):
    m = _tiny(family)
    return m, Decoder.from_hf(m)


def _tiny(family: str):
    torch.manual_seed(0)
    if family == "llama":
        cfg = transformers.LlamaConfig(
            vocab_size=97,
            hidden_size=64,
            intermediate_size=96,
            num_hidden_layers=2,
            num_attention_heads=8,
            num_key_value_heads=2,
            max_position_embeddings=128,
            rms_norm_eps=1e-5,
        )
        m = transformers.LlamaForCausalLM(cfg)
    else:
        cfg = transformers.OPTConfig(
            vocab_size=97,
            hidden_size=64,
            ffn_dim=96,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=128,
            word_embed_proj_dim=64,
            do_layer_norm_before=True,
        )
        m = transformers.OPTForCausalLM(cfg)
    return m.eval().float()


@pytest.mark.parametrize("family", ["llama", "opt"])
def test_prefill_logits_match_transformers(family):
    m, dec = _pair(family)
    ids = torch.randint(0, 97, (2, 40))
    with torch.no_grad():
        ref = m(ids).logits
    out = dec.forward(ids)
    assert (out - ref).abs().max() < 1e-4


@pytest.mark.parametrize("family", ["llama", "opt"])
def test_token_by_token_decode_matches_transformers(family):
    m, dec = _pair(family)
    ids = torch.randint(0, 97, (1, 30))
    with torch.no_grad():
        ref = m(ids).logits
    cache = KVCache(dec.cfg, 1, 30, torch.float32, "cpu")
    for t in range(30):

        def attend(layer, q, k, v):
            K, V = cache.append(layer, k, v)
            return dense_causal(q, K, V, dec.scale)

        logits = dec.forward(ids[:, t : t + 1], attend, start=t)
        assert (logits[0, -1] - ref[0, t]).abs().max() < 1e-4, t
