"""Byte formulas against hand-computed values from the public configs."""

from alisa.sim.catalog import get_model, model_names
from alisa.sim.models import (
    hidden_bytes_per_token_per_layer,
    kv_bytes_per_token,
    param_count,
    stored_kv_bytes_per_token_per_layer,
    weight_bytes,
)


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
    want = {
        "opt-6.7b",
        "opt-13b",
        "opt-30b",
        "opt-66b",
        "llama-7b",
        "llama-13b",
        "llama-33b",
        "llama-65b",
        "llama-2-7b",
        "llama-2-13b",
        "llama-2-70b",
        "llama-3-8b",
        "llama-3-70b",
        "mistral-7b",
        "smollm2-135m",
    }
    assert want <= set(model_names())


def test_recompute_width_buckets_by_hand():
    from alisa.sim.models import recompute_width_bucket, recompute_width_buckets

    # multiples of 16 up to 64, then of a quarter of the power of two below: 80, 96, ..., 160, 192
    assert [recompute_width_bucket(r) for r in (0, 1, 16, 17, 64, 65, 91, 128, 129, 300)] == [
        0,
        16,
        16,
        32,
        64,
        80,
        96,
        128,
        160,
        320,
    ]
    assert recompute_width_bucket(50, cap=58) == 58 and recompute_width_bucket(40, cap=58) == 48
    assert recompute_width_bucket(70, cap=58) == 70  # never below the rows themselves
    assert recompute_width_buckets(91) == [16, 32, 48, 64, 80, 96]
    assert recompute_width_buckets(58, cap=58) == [16, 32, 48, 58]
    assert recompute_width_buckets(0) == []
    # a bucket is never more than a quarter wider than its rows, beyond 64
    assert all(recompute_width_bucket(r) <= 1.25 * r for r in range(64, 5000))
