"""Host dispatch cost of the real backend's per-layer calls, and GPU time of GEMM and
attention timed one-at-a-time (calibration's way) vs back-to-back vs in a CUDA graph."""
import time, torch, json, sys
from alisa.kernels.swa_triton import sparse_decode_attention, importance_update

dev = "cuda"
def host_rate(fn, n=2000):
    for _ in range(20): fn()
    torch.cuda.synchronize(); t0 = time.perf_counter()
    for _ in range(n): fn()
    t1 = time.perf_counter(); torch.cuda.synchronize(); t2 = time.perf_counter()
    return (t1 - t0) / n * 1e6, (t2 - t0) / n * 1e6

def single(fn, n=50):
    ts = []
    for _ in range(n):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); fn(); b.record(); b.synchronize(); ts.append(a.elapsed_time(b) * 1e3)
    return sorted(ts)[n // 2]

def graphed(fn, reps=20, n=20):
    s = torch.cuda.Stream(); s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3): fn()
    torch.cuda.current_stream().wait_stream(s); torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(reps): fn()
    g.replay(); torch.cuda.synchronize()
    ts = []
    for _ in range(n):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); g.replay(); b.record(); b.synchronize(); ts.append(a.elapsed_time(b) * 1e3 / reps)
    return sorted(ts)[n // 2]

out = {}
x = torch.randn(8, 4096, device=dev, dtype=torch.float16)
w = torch.randn(4096, 12288, device=dev, dtype=torch.float16)
for name, fn in {"add_": lambda: x.add_(1.0), "matmul m8 12288x4096": lambda: torch.matmul(x, w)}.items():
    out[name] = dict(host_us=host_rate(fn), single_us=single(fn), graph_us=graphed(fn))
for b, a in ((8, 128), (8, 512), (32, 512), (32, 2048)):
    hkv, hq, d = 32, 32, 128
    q = torch.randn(b, hq, d, device=dev, dtype=torch.float16)
    k = torch.randn(b, hkv, 2 * a, d, device=dev, dtype=torch.float16); v = torch.randn_like(k)
    idx = torch.arange(a, device=dev, dtype=torch.int32).expand(b, hkv, a)
    ln = torch.full((b, hkv), a, device=dev, dtype=torch.int32)
    o = torch.empty(b, hq, d, device=dev, dtype=torch.float16)
    fn = lambda: sparse_decode_attention(q, k, v, idx, ln, out=o)
    fs = lambda: sparse_decode_attention(q, k, v, idx, ln, out=o, return_scores=True)
    out[f"attn b{b} a{a}"] = dict(host_us=host_rate(fn, 500), single_us=single(fn), graph_us=graphed(fn),
                                  kv_mb=b * hkv * a * d * 4 / 1e6, scores_host_us=host_rate(fs, 500))
    score = torch.zeros(b, 1, 4 * a, device=dev); ri = torch.zeros(b, 1, 4, a, device=dev, dtype=torch.int32)
    rw = torch.zeros(b, 1, 4, a, device=dev); rl = torch.zeros(b, 1, 4, device=dev, dtype=torch.int32)
    _, lse, sc = fs()
    out[f"importance b{b} a{a}"] = dict(host_us=host_rate(lambda: importance_update(score, ri, rw, rl, 0, idx[:, :1], ln[:, :1], sc, lse), 500))
g = torch.cuda.CUDAGraph()
y = torch.zeros(8, 4096, device=dev, dtype=torch.float16)
s = torch.cuda.Stream(); s.wait_stream(torch.cuda.current_stream())
with torch.cuda.stream(s):
    y.add_(1)
torch.cuda.current_stream().wait_stream(s)
with torch.cuda.graph(g):
    for _ in range(20): y.add_(1.0)
out["graph replay (20 nodes)"] = dict(host_us=host_rate(g.replay, 1000))
pool = torch.zeros(32, 1025, 2, 32, 128, device=dev, dtype=torch.float16).view(32 * 1025, 2, 32, 128)
rows = torch.randn(32, 2, 32, 128, device=dev, dtype=torch.float16); fl = torch.arange(32, device=dev) * 1025
out["index_copy_"] = dict(host_us=host_rate(lambda: pool.index_copy_(0, fl, rows)))
out["torch.full"] = dict(host_us=host_rate(lambda: torch.full((32, 32), 5, dtype=torch.int32, device=dev)))
ev = torch.cuda.Event(enable_timing=True)
out["event record"] = dict(host_us=host_rate(lambda: ev.record()))
for k2, v2 in out.items():
    print(f"{k2:28s} " + " ".join(f"{a}={b if not isinstance(b, tuple) else tuple(round(c, 1) for c in b)}" if not isinstance(b, float) else f"{a}={b:.1f}" for a, b in v2.items()))
json.dump(out, open(sys.argv[1] + "/host_costs.json", "w"), indent=1)
