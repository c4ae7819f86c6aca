import sys, torch
from alisa.kernels.swa_triton import sparse_decode_attention
torch.manual_seed(0)
def case(B,HQ,hkv,D,ctx,I,bn,splits):
    q=torch.randn(B,HQ,D,device="cuda").half(); k=torch.randn(B,hkv,ctx,D,device="cuda").half(); v=torch.randn_like(k)
    idx=torch.rand(B,hkv,ctx,device="cuda").argsort(-1)[..., :I].sort(-1).values.to(torch.int32).contiguous()
    ln=torch.full((B,hkv),I,device="cuda",dtype=torch.int32)
    o,_,_=sparse_decode_attention(q,k,v,idx,ln,block_n=bn,num_splits=splits)
    torch.cuda.synchronize()
    gi=idx.long()[...,None].expand(-1,-1,-1,D)
    r=torch.nn.functional.scaled_dot_product_attention(q[:,:,None],torch.gather(k,2,gi),torch.gather(v,2,gi),enable_gqa=HQ!=hkv)[:,:,0]
    return float((o.float()-r.float()).norm()/r.float().norm())
cfg=[(int(a) if a.isdigit() else None) for a in sys.argv[1:]]
try:
    print(sys.argv[1:], case(*cfg))
except Exception as e:
    print(sys.argv[1:], "FAIL", str(e).splitlines()[0])
