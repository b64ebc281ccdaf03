"""GPU smoke check of the models: a small Rodimus / Rodimus+ on CUDA (Triton GLA, FlexAttention) against the same
weights on the CPU path (chunked torch), forward, gradients and cached greedy decoding.

    PYTHONPATH=src python3 benchmarks/gpu/model_smoke.py
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
from slimkv import RodimusConfig, RodimusForCausalLM  # noqa: E402


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


for block in ("rodimus", "rodimus_plus"):
    torch.manual_seed(0)
    cfg = RodimusConfig(vocab_size=1000, hidden_size=256, num_hidden_layers=2, block_type=block, num_heads=2,
                        window_size=128, max_position_embeddings=4096)
    cpu = RodimusForCausalLM(cfg).float()
    gpu = RodimusForCausalLM(cfg).cuda()
    gpu.load_state_dict(cpu.state_dict())
    ids = torch.randint(0, 1000, (2, 300))
    out_c = cpu(ids, labels=ids)
    out_c.loss.backward()
    out_g = gpu(ids.cuda(), labels=ids.cuda())
    out_g.loss.backward()
    gw = {n: p.grad for n, p in cpu.named_parameters()}
    worst = max(rel(p.grad.cpu(), gw[n]) for n, p in gpu.named_parameters())
    print(f"{block}: fp32 logits rel err {rel(out_g.logits.cpu(), out_c.logits):.2e}, worst grad rel err {worst:.2e}")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        lb = gpu(ids.cuda()).logits
    print(f"{block}: bf16 autocast logits rel err {rel(lb.float().cpu(), out_c.logits):.2e}")
    gpu.eval()
    cpu.eval()
    with torch.no_grad():
        a = gpu.generate(ids[:, :20].cuda(), max_new_tokens=30, do_sample=False).cpu()
        b = cpu.generate(ids[:, :20], max_new_tokens=30, do_sample=False)
    print(f"{block}: greedy tokens equal on GPU and CPU: {torch.equal(a, b)} ({(a != b).sum().item()} differ)")
