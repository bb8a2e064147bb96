#!/usr/bin/python3
"""bench_torch.py: the step bench_step times, in PyTorch, for the paired table
of `make bench` (benchmarks/run.sh, section 1).

The same GPT-2 124M (12 layers, 768 wide, 12 heads, 50257 tokens, tied
embeddings, tanh GELU, causal attention), the same micro-batch of random
tokens, the same step: forward with the mean cross-entropy, backward, AdamW.
fp32 runs on the BLAS Debian's python3-torch is linked to (libopenblas0-pthread
when installed); bf16 is torch.autocast("cpu", dtype=torch.bfloat16), PyTorch's
mixed precision on CPUs (oneDNN bf16 matmuls, fp32 master weights).

    /usr/bin/python3 benchmarks/bench_torch.py [B T steps threads]

Prints one RESULT line per precision: tok_s (mean over the timed steps),
best_tok_s, step seconds.
"""
import math
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, C, H):
        super().__init__()
        self.H = H
        self.ln1 = nn.LayerNorm(C)
        self.qkv = nn.Linear(C, 3 * C)
        self.o = nn.Linear(C, C)
        self.ln2 = nn.LayerNorm(C)
        self.up = nn.Linear(C, 4 * C)
        self.down = nn.Linear(4 * C, C)

    def forward(self, x, mask):
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.H, C // self.H).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(C // self.H))
        att = F.softmax(att.masked_fill(mask[:T, :T] == 0, float("-inf")), dim=-1)
        x = x + self.o((att @ v).transpose(1, 2).reshape(B, T, C))
        return x + self.down(F.gelu(self.up(self.ln2(x)), approximate="tanh"))


class GPT2(nn.Module):
    def __init__(self, L=12, C=768, H=12, V=50257, max_seq=1024):
        super().__init__()
        self.wte = nn.Embedding(V, C)
        self.wpe = nn.Embedding(max_seq, C)
        self.blocks = nn.ModuleList(Block(C, H) for _ in range(L))
        self.lnf = nn.LayerNorm(C)
        self.register_buffer("mask", torch.tril(torch.ones(max_seq, max_seq)))
        for m in self.modules():  # GPT-2's initialisation (as shardtune's): N(0, 0.02), zero biases
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, tok):
        x = self.wte(tok) + self.wpe(torch.arange(tok.shape[1]))
        for b in self.blocks:
            x = b(x, self.mask)
        return self.lnf(x) @ self.wte.weight.t()  # tied head


def bench(precision, B, T, steps):
    torch.manual_seed(1)
    model = GPT2()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    tok = torch.randint(0, 50257, (B, T))
    tgt = torch.randint(0, 50257, (B, T))
    times = []
    for s in range(steps + 1):  # step 0 warms up
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            logits = model(tok)
            loss = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), tgt.view(-1))
        loss.backward()
        opt.step()
        if s:
            times.append(time.perf_counter() - t0)
    step = sum(times) / len(times)
    n = sum(p.numel() for p in model.parameters())
    print(f"RESULT bench=torch precision={precision} params={n / 1e6:.1f}M B={B} T={T} "
          f"step_s={step:.3f} tok_s={B * T / step:.1f} best_tok_s={B * T / min(times):.1f} "
          f"loss={loss.item():.4f}", flush=True)


def main():
    a = sys.argv[1:]
    B, T, steps = (int(a[0]), int(a[1]), int(a[2])) if len(a) >= 3 else (4, 256, 3)
    threads = int(a[3]) if len(a) > 3 else 2
    torch.set_num_threads(threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"bf16 matmul by oneDNN: {torch.backends.mkldnn.is_available()}", flush=True)
    for precision in ("fp32", "bf16"):
        bench(precision, B, T, steps)


if __name__ == "__main__":
    main()
