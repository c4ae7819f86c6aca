"""flexgen: FlexGen's offloading (ICML 2023) as a policy.

Modelled: the zig-zag block schedule (a block of gpu_batch_size x num_gpu_batches
sequences goes through one layer at a time, so a layer's weights cross PCIe once per block
and step, and each GPU batch's CPU-resident KV crosses for its attention); the six
placement percentages (weights, KV cache and activations on GPU and CPU), with weights
placed tensor by tensor as FlexGen's ``init_weight_list`` does (a tensor goes to the
device whose cumulative percentage its size midpoint falls in, so "20% on GPU" can mean
8% of the bytes); the policy search as a linear program over (wg, cg) for each
(gpu_batch_size, num_gpu_batches) that divides the batch, minimising the per-layer time
max(compute, PCIe, CPU) from the cost model under the GPU and host memory limits (scipy
``linprog``) where percentages are not given; attention on the CPU for the CPU-resident KV
(``cpu_cache_compute``); 4-bit group-wise compression of weights and/or KV.

What FlexGen's own code costs (``runtime: flexgen``, the default), read off its
pytorch_backend.py and compression.py, not fitted:
* decode attention on the GPU copies K and V into a new layout before its two bmm
  (``permute().reshape()``): the attended KV crosses GPU memory 3 times;
* attention on the CPU also converts K and V to fp32 first: 7 times, at the host
  memory's bandwidth;
* the KV cache on the CPU is pageable (``pin_memory=False``): its copies run at the
  pageable rate;
* de-compression writes fp16 from packed 4-bit values in six element-wise passes (6.5
  times the fp16 bytes it makes, 7 kernels per tensor), for every weight matrix of a
  layer per GPU batch, and for a GPU batch's whole allocated cache per layer and step;
  compression of new KV about 11 passes (12 kernels per tensor);
* the GPU's working memory per GPU batch (its cost model's peak terms), not per block.
``runtime: alisa`` times the same placement as this project's real backend runs it (fused
attention, pinned host KV; the FlexGen-like validation).

Left out: disk offload (refused by name), the fraction of attention FlexGen overlaps
across GPU batches beyond the per-layer pipeline, its exact I/O scheduling.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.optimize import linprog

from ..errors import InputError
from ..hardware import GB
from ..memory import MemoryLayout, workspace_bytes
from ..models import GROUP4_COMPRESSED_FRACTION, ModelSpec, layer_gemm_shapes, layer_weight_bytes, weight_bytes
from ..plan import LayerPlan, OutOfMemory, StepPlan
from ..scenario import FlexGenPolicyConfig
from .base import Policy

COMPRESSED_FRACTION = GROUP4_COMPRESSED_FRACTION
GPU_ATTENTION_PASSES = 3.0  # mha_gen: K, V permute/reshape copies (read + write) and the bmm reads
CPU_ATTENTION_PASSES = 7.0  # ... and on the CPU the fp16 -> fp32 conversion of both (read 2 B, write 4 B)
DECOMPRESS_PASSES = 6.5  # compression.py decompress: shift, strided assign, and, strided assign, div_, add_
DECOMPRESS_KERNELS = 7
COMPRESS_PASSES = 11.0  # compress: min, max, sub, mul_, clamp_, round_, to(uint8), shift, or, cat
COMPRESS_KERNELS = 12


@dataclass(frozen=True)
class PlacementProblem:
    """Per-layer, per-step quantities of one (gpu_batch_size, num_gpu_batches) choice."""

    compute_s: float  # GPU compute of one layer for the whole block (attention all on GPU)
    compute_attn_cpu_s: float  # with cpu_cache_compute: GPU compute saved per unit of (1 - cg)
    weight_layer_bytes: float  # one layer's streamed bytes if all its weights were on host
    kv_layer_bytes: float  # one layer's KV for the block at the mean context
    h2d_s_per_byte: float
    cpu_attn_s_per_byte: float  # with cpu_cache_compute: CPU time per KV byte attended there
    cpu_cache_compute: bool
    gpu_free_bytes: float  # GPU memory for weights-on-GPU + KV-on-GPU
    cpu_free_bytes: float
    weights_total_bytes: float  # all layers' weights (stored size)
    kv_total_bytes: float  # the whole cache at the longest context (stored size)
    kv_h2d_s_per_byte: float | None = None  # the host KV's copy rate where it differs (pageable); None: h2d's
    cpu_attention_serial: bool = False  # the GPU waits for the CPU's attention (FlexGen's code), not beside it


@dataclass(frozen=True)
class Placement:
    wg: float
    cg: float
    layer_time_s: float


def solve_placement(p: PlacementProblem) -> Placement | None:
    """min t over x = (wg, cg, t) subject to
        t >= compute (- (1 - cg) * saved GPU attention, with cpu_cache_compute)
        t >= (1 - wg) W h + (1 - cg) K h          (PCIe; without cpu_cache_compute)
        t >= (1 - wg) W h                          (PCIe; with cpu_cache_compute)
        t >= (1 - cg) K c                          (CPU attention; with cpu_cache_compute)
        wg Wtot + cg Ktot <= GPU free;  (1 - wg) Wtot + (1 - cg) Ktot <= CPU free
    None when infeasible."""
    W, K, h = p.weight_layer_bytes, p.kv_layer_bytes, p.h2d_s_per_byte
    hk = p.kv_h2d_s_per_byte if p.kv_h2d_s_per_byte is not None else h
    A, b = [], []
    if p.cpu_cache_compute and p.cpu_attention_serial:
        # t >= compute - (1 - cg) s + (1 - cg) K c: the CPU's share of attention in line
        #   -> (c K - s) cg - t <= -(compute - s + c K)
        cK = K * p.cpu_attn_s_per_byte
        A.append([0.0, cK - p.compute_attn_cpu_s, -1.0])
        b.append(-(p.compute_s - p.compute_attn_cpu_s + cK))
        A.append([-W * h, 0.0, -1.0])
        b.append(-W * h)
    elif p.cpu_cache_compute:
        # t >= compute - (1 - cg) s  ->  -s cg - t <= -(compute - s)
        A.append([0.0, -p.compute_attn_cpu_s, -1.0])
        b.append(-(p.compute_s - p.compute_attn_cpu_s))
        A.append([-W * h, 0.0, -1.0])
        b.append(-W * h)
        A.append([0.0, -K * p.cpu_attn_s_per_byte, -1.0])
        b.append(-K * p.cpu_attn_s_per_byte)
    else:
        A.append([0.0, 0.0, -1.0])
        b.append(-p.compute_s)
        A.append([-W * h, -K * hk, -1.0])
        b.append(-(W * h + K * hk))
    A.append([p.weights_total_bytes, p.kv_total_bytes, 0.0])
    b.append(p.gpu_free_bytes)
    A.append([-p.weights_total_bytes, -p.kv_total_bytes, 0.0])
    b.append(p.cpu_free_bytes - p.weights_total_bytes - p.kv_total_bytes)
    A_ = np.array(A, dtype=float)
    b_ = np.array(b, dtype=float)
    norm = np.maximum(np.abs(A_).max(axis=1), np.abs(b_))  # rows of seconds and of bytes: scale each
    norm[norm == 0] = 1.0
    # a tiny preference for more on the GPU breaks ties (same time, less PCIe traffic)
    res = linprog(
        c=[-1e-9, -1e-9, 1.0],
        A_ub=A_ / norm[:, None],
        b_ub=b_ / norm,
        bounds=[(0, 1), (0, 1), (0, None)],
        method="highs",
    )
    if not res.success:
        return None
    wg, cg, t = (float(v) for v in res.x)
    return Placement(min(1.0, max(0.0, wg)), min(1.0, max(0.0, cg)), t)


# -- FlexGen's placement of weight tensors ----------------------------------------------------


def _placed(sizes: list[float], wg: float, wc: float) -> tuple[float, float]:
    """(GPU bytes, CPU bytes) of one FlexGen layer's tensors: a tensor goes to the first
    device whose cumulative percentage its size midpoint falls below (``get_choice``)."""
    total = sum(sizes)
    gpu = cpu = 0.0
    cum = 0.0
    for s in sizes:
        cum += s
        mid = 100.0 * (cum - s / 2) / total
        if mid < 100.0 * wg:
            gpu += s
        elif mid < 100.0 * (wg + wc):
            cpu += s
        else:
            raise InputError("a weight tensor lands on disk; disk offload is not modelled", field="policy")
    return gpu, cpu


def layer_weight_split(model: ModelSpec, wg: float, wc: float) -> tuple[float, float]:
    """(GPU, CPU) fp16 bytes of one decoder layer's weight matrices under FlexGen's rule:
    its attention (q, k, v, out) and its MLP are two FlexGen layers, placed apart."""
    h, q, kv = model.hidden_size, model.q_dim, model.kv_dim
    attn = [h * q, h * kv, h * kv, q * h]
    mlp = [n * k for name, n, k in layer_gemm_shapes(model) if name not in ("qkv_proj", "o_proj")]
    g1, c1 = _placed([x * model.dtype_bytes for x in attn], wg, wc)
    g2, c2 = _placed([x * model.dtype_bytes for x in mlp], wg, wc)
    share = (g1 + g2) / (g1 + g2 + c1 + c2)  # biases and norms (under 0.1%) go with the matrices' share
    lw = layer_weight_bytes(model)
    return share * lw, (1.0 - share) * lw


def tensor_share_within(model: ModelSpec, share: float) -> float:
    """The weights' GPU percentage (as a fraction) that FlexGen's tensor rule turns into
    the most GPU bytes not above ``share`` of the layer: the tensor rule moves whole tensors,
    so an LP share in between rounds down to the last tensor boundary."""
    lw = layer_weight_bytes(model)
    cands = sorted({share} | {i / 1000 for i in range(int(share * 1000) + 1)}, reverse=True)
    for c in cands:
        g, _ = layer_weight_split(model, c, 1.0 - c)
        if g <= share * lw + 1e-6:
            return c
    return 0.0


def embedding_split(model: ModelSpec, wg: float, wc: float) -> tuple[float, float]:
    """(GPU, CPU) bytes of the input and output embeddings (the output layer loads its own
    copy of the token embedding), placed by the same rule."""
    h, v, dt = model.hidden_size, model.vocab_size, model.dtype_bytes
    g1, c1 = _placed([v * h * dt, model.max_positions * h * dt], wg, wc)
    g2, c2 = _placed([2 * h * dt, v * h * dt], wg, wc)
    return g1 + g2, c1 + c2


def working_bytes(model: ModelSpec, gbs: int, prompt: int, ctx: int, cache_on_gpu: bool, act_on_gpu: bool) -> float:
    """FlexGen's GPU working memory for one GPU batch (its cost model's peak terms): the
    prefill's largest stage (q, k, v; the attention scores; the MLP; the logits over every
    prompt position), the decode's buffers for a GPU batch's layer cache (K and V, double
    buffered) where the cache is not resident, and the hidden-state buffers where
    activations live on the CPU."""
    h, f, nh, v, dt = model.hidden_size, model.ffn_dim, model.num_heads, model.vocab_size, model.dtype_bytes
    s = prompt
    stages = [
        4 * gbs * s * h * dt,  # input, q, k, v
        gbs * (2 * s * h + 2 * nh * s * s) * dt,  # q, k, scores and their softmax
        gbs * s * (h + f) * dt,  # MLP in and intermediate
        gbs * s * v * dt,  # FlexGen's output layer computes logits for every position
    ]
    cache = 0.0 if cache_on_gpu else 2 * 2 * gbs * ctx * model.kv_dim * dt
    hidden = 0.0 if act_on_gpu else 2 * gbs * s * h * dt
    return max(stages) + cache + hidden


class FlexGenPolicy(Policy):
    name = "flexgen"

    def __init__(self, scenario, coster) -> None:
        cfg: FlexGenPolicyConfig = scenario.policy
        self.cfg = cfg
        self.flexgen_code = cfg.runtime == "flexgen"
        if cfg.compress_cache:
            coster.kv_bytes = math.ceil(coster.kv_fp16_bytes * COMPRESSED_FRACTION)
            coster.kv_row_bytes = (coster.kv_bytes,)  # what a fetched token's KV moves as
            if self.flexgen_code:
                coster.kv_compressed = True  # stored 4-bit, attended de-compressed (the codec is costed apart)
            else:
                coster.int8_kv = True  # de-quantisation inside attention, as for INT8
        self.w_factor = COMPRESSED_FRACTION if cfg.compress_weight else 1.0
        self.act_cpu = self._activations_on_cpu()
        super().__init__(scenario, coster)

    def _activations_on_cpu(self) -> bool:
        g, c = self.cfg.act_gpu_percent, self.cfg.act_cpu_percent
        if (g, c) not in ((100, 0), (0, 100)):
            raise InputError(
                f"activations {g:g}% GPU / {c:g}% CPU: only all on the GPU or all on the CPU is modelled",
                field="policy.act_gpu_percent",
            )
        if c and not self.flexgen_code:
            raise InputError("the real backend keeps activations on the GPU", field="policy.act_cpu_percent")
        return bool(c)

    # -- layout and search -------------------------------------------------------------------
    def _gpu_batch_sizes(self) -> list[int]:
        cfg = self.cfg
        if cfg.num_gpu_batches is not None:
            gbs = cfg.gpu_batch_size or self.batch // cfg.num_gpu_batches
            if gbs * cfg.num_gpu_batches != self.batch:
                raise InputError(
                    f"gpu_batch_size x num_gpu_batches ({gbs} x {cfg.num_gpu_batches}) must equal batch_size "
                    f"{self.batch}",
                    field="policy.num_gpu_batches",
                )
            return [gbs]
        if cfg.gpu_batch_size is not None:
            if self.batch % cfg.gpu_batch_size:
                raise InputError(
                    f"gpu_batch_size {cfg.gpu_batch_size} does not divide batch_size {self.batch}",
                    field="policy.gpu_batch_size",
                )
            return [cfg.gpu_batch_size]
        # largest first: on a tie (PCIe-bound) the larger GPU batch wastes less compute
        return [g for g in range(self.batch, 0, -1) if self.batch % g == 0 and (g & (g - 1) == 0 or g == self.batch)]

    def _fixed_fractions(self) -> tuple[float, float, float, float] | None:
        """(wg, wc, cg, cc) where the percentages are given (the rest of each on the CPU),
        None where the LP chooses."""
        cfg = self.cfg
        if cfg.weights_gpu_percent is None and cfg.cache_gpu_percent is None:
            return None
        wg = (cfg.weights_gpu_percent if cfg.weights_gpu_percent is not None else 100.0) / 100
        cg = (cfg.cache_gpu_percent if cfg.cache_gpu_percent is not None else 100.0) / 100
        wc = cfg.weights_cpu_percent / 100 if cfg.weights_cpu_percent is not None else 1.0 - wg
        cc = cfg.cache_cpu_percent / 100 if cfg.cache_cpu_percent is not None else 1.0 - cg
        for what, g, c in (("weights", wg, wc), ("cache", cg, cc)):
            if g + c > 1.0 + 1e-9:
                raise InputError(f"{what} GPU + CPU percentages exceed 100", field=f"policy.{what}_cpu_percent")
            if g + c < 1.0 - 1e-9:
                raise InputError(
                    f"{100 * (1 - g - c):g}% of the {what} on disk: disk offload is not modelled",
                    field=f"policy.{what}_cpu_percent",
                )
        return wg, wc, cg, cc

    def plan_layout(self) -> MemoryLayout:
        if not self.flexgen_code:
            return self._layout_alisa()
        return self._layout_flexgen()

    def _search(self, gpu_free_of: Any, cpu_free: float, lw: float) -> None:
        """Choose (gpu batch, cpu_cache_compute, wg, cg): fixed where the scenario fixes
        them, else the LP's best."""
        m, wl = self.model, self.sc.workload
        n_max = wl.prompt_len + wl.gen_len
        n_mean = wl.prompt_len + wl.gen_len / 2
        kvb = self.coster.kv_bytes
        fixed = self._fixed_fractions()
        best: tuple[float, int, Placement, bool] | None = None
        tried: list[dict[str, Any]] = []
        ccc_options = (False, True) if self.cfg.cpu_cache_compute == "auto" else (bool(self.cfg.cpu_cache_compute),)
        for ccc, gbs in ((c, g) for c in ccc_options for g in self._gpu_batch_sizes()):
            ngb = self.batch // gbs
            attn_kv = gbs * n_mean * (self.coster.kv_fp16_bytes if self.coster.kv_compressed else kvb)
            passes = GPU_ATTENTION_PASSES if self.flexgen_code else 1.0
            attn_gpu = ngb * self.coster.cost.attention_decode_s(passes * attn_kv, self.coster.int8_kv, contiguous=True)
            compute = ngb * self.coster.dense_layer_compute_s(gbs, decode=True) + attn_gpu
            cpu_passes = CPU_ATTENTION_PASSES if self.flexgen_code else 1.0
            prob = PlacementProblem(
                compute_s=compute,
                compute_attn_cpu_s=attn_gpu,
                weight_layer_bytes=lw,
                kv_layer_bytes=self.batch * n_mean * kvb,
                h2d_s_per_byte=self._h2d_slope(),
                cpu_attn_s_per_byte=self.coster.cost.cpu_attention_s(1e9, 0.0, cpu_passes) / 1e9,
                cpu_cache_compute=ccc,
                gpu_free_bytes=gpu_free_of(gbs, ccc),
                cpu_free_bytes=cpu_free,
                weights_total_bytes=m.num_layers * lw,
                kv_total_bytes=self.batch * m.num_layers * n_max * kvb,
                kv_h2d_s_per_byte=self._h2d_slope(pinned=False) if self.flexgen_code else None,
                cpu_attention_serial=self.flexgen_code,
            )
            pl = self._fixed(prob, fixed) if fixed is not None else solve_placement(prob)
            tried.append(
                {
                    "gpu_batch_size": gbs,
                    "num_gpu_batches": ngb,
                    "cpu_cache_compute": ccc,
                    **(asdict(pl) if pl else {"infeasible": True}),
                }
            )
            if pl is not None and (best is None or pl.layer_time_s < best[0] - 1e-12):
                best = (pl.layer_time_s, gbs, pl, ccc)
        self.search = tried
        if best is None:
            raise InputError(self._infeasible_reason(), field="policy")
        _, self.gbs, self.placement, self.ccc = best
        self.ngb = self.batch // self.gbs

    def _infeasible_reason(self) -> str:
        m, wl = self.model, self.sc.workload
        lw = layer_weight_bytes(m) * self.w_factor
        n_max = wl.prompt_len + wl.gen_len
        kv = self.batch * m.num_layers * n_max * self.coster.kv_bytes
        hw = self.sc.hardware
        have = hw.gpu_memory_bytes + hw.cpu_memory_bytes
        need = m.num_layers * lw + kv
        if need > have:
            return (
                f"FlexGen's placement LP is infeasible: weights + KV cache ({need / GB:.1f} GB) exceed GPU + host "
                f"memory ({have / GB:.1f} GB) by {(need - have) / GB:.1f} GB; lower the batch or the sequence "
                "length, or enable compression"
            )
        return (
            "FlexGen's placement LP is infeasible for every GPU batch size: the GPU's working memory for one GPU "
            "batch leaves too little for weights and KV; lower gpu_batch_size or enable compression"
        )

    def _fixed(self, prob: PlacementProblem, fixed: tuple[float, float, float, float]) -> Placement | None:
        wg, wc, cg, _ = fixed
        if self.flexgen_code:  # the bytes FlexGen's tensor rule puts on the GPU; the layout says if they fit
            wg = layer_weight_split(self.model, wg, wc)[0] / layer_weight_bytes(self.model)
        elif wg * prob.weights_total_bytes + cg * prob.kv_total_bytes > prob.gpu_free_bytes:
            return None
        h = prob.h2d_s_per_byte
        hk = prob.kv_h2d_s_per_byte if prob.kv_h2d_s_per_byte is not None else h
        t = max(prob.compute_s, (1 - wg) * prob.weight_layer_bytes * h + (1 - cg) * prob.kv_layer_bytes * hk)
        return Placement(wg, cg, t)

    def _layout_alisa(self) -> MemoryLayout:
        """The real backend's FlexGen-like offload: its own workspace for the whole batch."""
        hw, m, wl = self.sc.hardware, self.model, self.sc.workload
        lw = layer_weight_bytes(m) * self.w_factor
        non_layer = weight_bytes(m) - m.num_layers * layer_weight_bytes(m)
        ws = workspace_bytes(m, self.batch, wl.prompt_len)
        reserved = hw.gpu_reserved_gb * GB
        gpu_free = hw.gpu_memory_bytes - reserved - ws - non_layer - 2 * lw
        self._search(lambda gbs, ccc: gpu_free, hw.cpu_memory_bytes, lw)
        n_max = wl.prompt_len + wl.gen_len
        wg = self.placement.wg
        self.layer_gpu = wg * layer_weight_bytes(m)
        self.stream_bytes = (1 - wg) * layer_weight_bytes(m)
        w_gpu = non_layer + 2 * lw + wg * m.num_layers * lw
        w_cpu = (1 - wg) * m.num_layers * lw
        kv_gpu = self.placement.cg * self.batch * m.num_layers * n_max * self.coster.kv_bytes
        return MemoryLayout(hw.gpu_memory_bytes, hw.cpu_memory_bytes, reserved, ws, w_gpu, w_cpu, 0, kv_gpu)

    def _layout_flexgen(self) -> MemoryLayout:
        """FlexGen's own memory: weights placed tensor by tensor, working memory per GPU
        batch, activations where the policy puts them. A placement that does not fit names
        the pool that is short and by how much."""
        hw, m, wl = self.sc.hardware, self.model, self.sc.workload
        n_max = wl.prompt_len + wl.gen_len
        lw16 = layer_weight_bytes(m)
        reserved = hw.gpu_reserved_gb * GB
        fixed = self._fixed_fractions()
        kv_total = self.batch * m.num_layers * n_max * self.coster.kv_bytes

        non_layer = weight_bytes(m) - m.num_layers * lw16
        hidden = 0.0 if self.act_cpu else self.batch * wl.prompt_len * m.hidden_size * m.dtype_bytes

        def gpu_free(gbs: int, ccc: bool) -> float:
            # what is left for the layers' weights and the cache the LP places: the GPU less
            # its reserve, the working memory of one GPU batch, two streamed-layer buffers,
            # the embeddings and the block's activations
            work = working_bytes(m, gbs, wl.prompt_len, n_max, cache_on_gpu=False, act_on_gpu=not self.act_cpu)
            return hw.gpu_memory_bytes - reserved - work - (2 * lw16 + non_layer) * self.w_factor - hidden

        self._search(gpu_free, hw.cpu_memory_bytes, lw16 * self.w_factor)
        if fixed is not None:
            wg, wc, cg, cc = fixed
        else:  # the LP's share, as the largest tensor placement within it
            wg = tensor_share_within(m, self.placement.wg)
            cg = self.placement.cg
            wc, cc = 1.0 - wg, 1.0 - cg
        lg, lc = layer_weight_split(m, wg, wc)  # fp16 bytes
        eg, ec = embedding_split(m, wg, wc)
        wf = self.w_factor
        self.layer_gpu, self.stream_bytes = lg, lc + ec / m.num_layers  # embeddings stream beside the layers
        w_gpu = (m.num_layers * lg + eg) * wf
        w_cpu = (m.num_layers * lc + ec) * wf
        self.placement = Placement(lg / (lg + lc), cg, self.placement.layer_time_s)
        work = working_bytes(m, self.gbs, wl.prompt_len, n_max, cache_on_gpu=cg >= 1.0, act_on_gpu=not self.act_cpu)
        stream_buf = 2 * lc * wf
        kv_gpu = cg * kv_total
        hidden_gpu = 0.0 if self.act_cpu else self.batch * wl.prompt_len * m.hidden_size * m.dtype_bytes
        need_gpu = reserved + work + stream_buf + w_gpu + kv_gpu + hidden_gpu
        if need_gpu > hw.gpu_memory_bytes:
            raise InputError(
                f"the GPU is short by {(need_gpu - hw.gpu_memory_bytes) / GB:.2f} GB: FlexGen's placement needs "
                f"{need_gpu / GB:.2f} GB (weights {w_gpu / GB:.2f}, KV {kv_gpu / GB:.2f}, working memory of one "
                f"GPU batch {work / GB:.2f}, streamed-layer buffers {stream_buf / GB:.2f}, activations "
                f"{hidden_gpu / GB:.2f}, reserved {reserved / GB:.2f}); the GPU has {hw.gpu_memory_bytes / GB:.2f} GB",
                field="policy",
            )
        cpu_attn_ws = (
            2 * self.gbs * n_max * m.num_heads * m.head_dim * 4 if self.ccc else 0.0
        )  # fp32 K and V of a GPU batch
        hidden_cpu = self.batch * wl.prompt_len * m.hidden_size * m.dtype_bytes if self.act_cpu else 0.0
        need_cpu = w_cpu + cc * kv_total + hidden_cpu + cpu_attn_ws
        if need_cpu > hw.cpu_memory_bytes:
            raise InputError(
                f"host memory is short by {(need_cpu - hw.cpu_memory_bytes) / GB:.2f} GB: FlexGen's placement needs "
                f"{need_cpu / GB:.2f} GB (weights {w_cpu / GB:.2f}, KV {cc * kv_total / GB:.2f}, activations "
                f"{hidden_cpu / GB:.2f}, CPU attention's fp32 workspace {cpu_attn_ws / GB:.2f}); the host has "
                f"{hw.cpu_memory_bytes / GB:.2f} GB",
                field="policy",
            )
        # the layout's workspace carries everything the GPU holds beyond weights and KV
        return MemoryLayout(
            hw.gpu_memory_bytes, hw.cpu_memory_bytes, reserved, work + stream_buf + hidden_gpu, w_gpu, w_cpu, 0, kv_gpu
        )

    def _h2d_slope(self, pinned: bool = True) -> float:
        c = self.coster.cost
        return (c.h2d_s(2e9, pinned=pinned) - c.h2d_s(1e9, pinned=pinned)) / 1e9

    # -- plans ---------------------------------------------------------------------------
    def _cpu_tokens(self, n: int) -> int:
        # rounding towards the host keeps the GPU share within what the LP budgeted
        return min(n, math.ceil((1.0 - self.placement.cg) * n - 1e-9))

    def _codec(self, n: int, new: int, prefill: bool) -> tuple[float, int]:
        """FlexGen's compression code's GPU memory traffic and kernels in one layer of a
        step (all its GPU batches)."""
        if not self.flexgen_code:
            return 0.0, 0
        m, ngb, wl = self.model, self.ngb, self.sc.workload
        traffic, kernels = 0.0, 0
        if self.cfg.compress_weight:  # every matrix de-compressed once per GPU batch
            traffic += ngb * DECOMPRESS_PASSES * layer_weight_bytes(m)
            kernels += ngb * DECOMPRESS_KERNELS * (len(layer_gemm_shapes(m)) + 2)  # q, k, v split
        if self.cfg.compress_cache:
            kv16 = self.coster.kv_fp16_bytes
            traffic += COMPRESS_PASSES * self.batch * new * kv16  # the new tokens' K and V
            kernels += ngb * 2 * COMPRESS_KERNELS
            if not prefill:  # the GPU batch's whole allocated cache, every layer and step
                alloc = wl.prompt_len + wl.gen_len - 1
                traffic += DECOMPRESS_PASSES * self.batch * alloc * kv16
                kernels += ngb * 2 * DECOMPRESS_KERNELS
        return traffic, kernels

    def _layers(self, n: int, new: int, prefill: bool, d2h: int) -> tuple[LayerPlan, ...]:
        """One plan entry per layer (the real backend's one GPU batch), or, for FlexGen's
        code, per layer and GPU batch, in its zig-zag order: layer j's weights come with
        its first GPU batch, each GPU batch's host KV with it, and each fetch is issued one
        entry ahead and synchronised after it (``fetch_lag`` 2: it overlaps one GPU batch's
        compute; without ``overlap``, none)."""
        cpu = self._cpu_tokens(n) if not prefill else 0
        ccc = self.ccc
        codec, kernels = self._codec(n, new, prefill)
        fg = self.flexgen_code
        per = self.ngb if fg else 1  # plan entries per layer
        common: dict[str, Any] = dict(
            new_tokens=new,
            attended_tokens=n,
            attention_contiguous=True,  # whole caches, no selection
            prefill=prefill,
            weight_compression=self.w_factor,
            contiguous_fetch=True,
            h2d_kv_tokens=0 if ccc else cpu,
            cpu_attention_tokens=cpu if ccc else 0,
            d2h_kv_tokens=d2h,
        )
        if not fg:
            lp = LayerPlan(
                **common, weight_h2d_bytes=int(self.stream_bytes), sub_batches=self.ngb, sync_fetch=not self.cfg.overlap
            )
            return (lp,) * self.model.num_layers
        cpu_passes = CPU_ATTENTION_PASSES + (DECOMPRESS_PASSES if self.cfg.compress_cache else 0.0)
        entries = [
            LayerPlan(
                **common,
                seqs=self.gbs,
                weight_h2d_bytes=int(self.stream_bytes) if k == 0 else 0,
                attention_passes=GPU_ATTENTION_PASSES,
                cpu_attention_passes=cpu_passes,
                cpu_attention_inline=True,
                codec_bytes=codec / per,
                codec_kernels=kernels // per,
                activation_offload=self.act_cpu,
                kv_pageable=True,
                pageable_fetch=not self.cfg.pin_weight,
                fetch_lag=2 if self.cfg.overlap else 1,
            )
            for k in range(per)
        ]
        return tuple(entries) * self.model.num_layers

    def prefill(self) -> StepPlan | OutOfMemory:
        p = self.sc.workload.prompt_len
        cpu = self._cpu_tokens(p)
        return StepPlan(-1, "prefill", p, self.batch, self._layers(p, p, True, cpu), p - cpu, cpu)

    def decode(self, step: int) -> StepPlan | OutOfMemory:
        n = self.sc.workload.prompt_len + step + 1
        cpu = self._cpu_tokens(n)
        d2h = cpu - self._cpu_tokens(n - 1)
        return StepPlan(step, "I" if cpu == 0 else "II", n, self.batch, self._layers(n, 1, False, d2h), n - cpu, cpu)

    def summary(self) -> dict[str, Any]:
        out = super().summary()
        out.update(
            flexgen_policy={
                "gpu_batch_size": self.gbs,
                "num_gpu_batches": self.ngb,
                "weights_gpu_percent": round(100 * self.placement.wg, 2),
                "cache_gpu_percent": round(100 * self.placement.cg, 2),
                "activations_gpu_percent": 0.0 if self.act_cpu else 100.0,
                "cpu_cache_compute": self.ccc,
                "compress_weight": self.cfg.compress_weight,
                "compress_cache": self.cfg.compress_cache,
                "overlap": self.cfg.overlap,
                "runtime": self.cfg.runtime,
                "lp_layer_time_s": self.placement.layer_time_s,
            },
            flexgen_search=self.search,
        )
        return out
