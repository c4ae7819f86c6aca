"""Byte formulas against hand-computed values from the public configs."""

from alisa.sim.catalog import get_model, model_names
from alisa.sim.models import (hidden_bytes_per_token_per_layer, kv_bytes_per_token, param_count,
                              stored_kv_bytes_per_token_per_layer, weight_bytes)


def test_opt13b_kv_bytes_per_token():
    # 2 (K,V) x 40 layers x 5120 x 2 B
    assert kv_bytes_per_token(get_model("opt-13b")) == 819_200


def test_gqa_kv_bytes_per_token():
    # Llama-3-8B: 2 x 32 layers x 8 kv heads x 128 x 2 B
    assert kv_bytes_per_token(get_model("llama-3-8b")) == 131_072
    # SmolLM2-135M: 2 x 30 x 3 x 64 x 2 B
    assert kv_bytes_per_token(get_model("smollm2-135m")) == 23_040


def test_int8_kv_halves_bytes_plus_scales():
    m = get_model("opt-13b")
    # per layer: 2 x 5120 x 1 B + one fp16 scale per token, head and tensor: 2 x 40 x 2 B
    assert stored_kv_bytes_per_token_per_layer(m, True) == 10_240 + 160
    assert stored_kv_bytes_per_token_per_layer(m, False) == 20_480


def test_hidden_is_half_of_kv_for_mha():
    m = get_model("opt-13b")
    assert 2 * hidden_bytes_per_token_per_layer(m) == stored_kv_bytes_per_token_per_layer(m, False)


def test_llama7b_param_count_matches_published():
    # LLaMA-7B has 6,738,415,616 parameters (embeddings + untied head + 32 layers + norm)
    assert param_count(get_model("llama-7b")) == 6_738_415_616
    assert weight_bytes(get_model("llama-7b")) == 2 * 6_738_415_616


def test_opt_param_counts_near_published():
    # published sizes: OPT-6.7B 6.66e9, OPT-13B 12.85e9, OPT-30B 29.97e9 parameters
    for name, want in [("opt-6.7b", 6.658e9), ("opt-13b", 12.853e9), ("opt-30b", 29.975e9)]:
        assert abs(param_count(get_model(name)) - want) / want < 0.002, name


def test_llama3_8b_and_smollm_param_counts():
    assert param_count(get_model("llama-3-8b")) == 8_030_261_248
    assert param_count(get_model("smollm2-135m")) == 134_515_008


def test_catalog_complete():
    want = {"opt-6.7b", "opt-13b", "opt-30b", "opt-66b", "llama-7b", "llama-13b", "llama-33b", "llama-65b",
            "llama-2-7b", "llama-2-13b", "llama-2-70b", "llama-3-8b", "llama-3-70b", "mistral-7b", "smollm2-135m"}
    assert want <= set(model_names())
