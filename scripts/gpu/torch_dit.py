"""PyTorch timing reference for a DiT training step and inference forward (CPU or CUDA).

Extends shared/bench/torch_dit_ref.py with device, dtype and TF32 options. The network
is the same (same modules, default init, zero pos embedding, MSE on the first 4 output
channels, AdamW lr 1e-4 wd 0), so `params` matches the reference and the Rust model.

usage: torch_dit.py [--depth 12] [--hidden 384] [--heads 6] [--patch 2] [--size 32]
                    [--batch 8] [--iters 5] [--threads 0] [--device cpu|cuda]
                    [--dtype f32|bf16|f16] [--tf32] [--seed 0]

--dtype bf16/f16 casts the WHOLE network, optimizer state and inputs to that dtype
(`model.to(dtype)`, pure half precision, no autocast, no master weights), because the
Rust side (burn 0.21) has no autocast. --tf32 enables TF32 for cuda matmul and cudnn;
without it PyTorch's defaults are left alone (matmul TF32 off). --threads 0 keeps the
torch default (only matters on cpu).

Timing: one untimed warm-up, then the median of --iters runs of a training step
(zero_grad, forward, loss, backward, AdamW step) and of a no_grad forward, with
torch.cuda.synchronize() around each timer on cuda. Prints one JSON line on stdout;
errors exit non-zero (2) with one line on stderr.
"""
import argparse, json, math, statistics, sys, time
import torch, torch.nn as nn, torch.nn.functional as F

DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}


def fail(msg):
    print(f"torch_dit.py: error: {msg}", file=sys.stderr)
    sys.exit(2)


def modulate(x, shift, scale):
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class TEmb(nn.Module):
    def __init__(self, d, f=256):
        super().__init__()
        self.f = f
        self.mlp = nn.Sequential(nn.Linear(f, d), nn.SiLU(), nn.Linear(d, d))

    def forward(self, t):
        # vs the reference: freqs on t's device; sinusoid in f32, cast to the net dtype
        half = self.f // 2
        idx = torch.arange(half, dtype=torch.float32, device=t.device)
        a = t[:, None].float() * torch.exp(-math.log(10000) * idx / half)[None]
        return self.mlp(torch.cat([torch.cos(a), torch.sin(a)], -1).to(self.mlp[0].weight.dtype))


class Block(nn.Module):
    def __init__(self, d, h):
        super().__init__()
        self.h = h
        self.n1 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.n2 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.fc1 = nn.Linear(d, 4 * d)
        self.fc2 = nn.Linear(4 * d, d)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))

    def attn(self, x):
        B, N, D = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.h, D // self.h).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(q, k, v)
        return self.proj(o.transpose(1, 2).reshape(B, N, D))

    def forward(self, x, c):
        sm, cm, gm, sp, cp, gp = self.ada(c).chunk(6, dim=1)
        x = x + gm.unsqueeze(1) * self.attn(modulate(self.n1(x), sm, cm))
        h = F.gelu(self.fc1(modulate(self.n2(x), sp, cp)), approximate="tanh")
        return x + gp.unsqueeze(1) * self.fc2(h)


class DiT(nn.Module):
    def __init__(self, depth, d, h, p, size, cin=4, ncls=1000):
        super().__init__()
        self.p, self.cout = p, 2 * cin
        self.emb = nn.Conv2d(cin, d, p, p)
        self.pos = nn.Parameter(torch.zeros(1, (size // p) ** 2, d), requires_grad=False)
        self.t = TEmb(d)
        self.null_t = nn.Parameter(torch.zeros(d))
        self.y = nn.Embedding(ncls + 1, d)
        self.blocks = nn.ModuleList([Block(d, h) for _ in range(depth)])
        self.nf = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.fada = nn.Sequential(nn.SiLU(), nn.Linear(d, 2 * d))
        self.lin = nn.Linear(d, p * p * self.cout)

    def forward(self, x, t, y):
        B, C, H, W = x.shape
        x = self.emb(x).flatten(2).transpose(1, 2) + self.pos
        c = self.t(t) + self.y(y)
        for b in self.blocks:
            x = b(x, c)
        s, sc = self.fada(c).chunk(2, dim=1)
        x = self.lin(modulate(self.nf(x), s, sc))
        hp = H // self.p
        x = x.reshape(B, hp, hp, self.p, self.p, self.cout)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(B, self.cout, H, W)


def parse_args():
    ap = argparse.ArgumentParser(description="DiT PyTorch timing reference")
    ap.error = fail  # one-line errors, no usage dump
    for k, v in dict(depth=12, hidden=384, heads=6, patch=2, size=32, batch=8, iters=5, threads=0).items():
        ap.add_argument("--" + k, type=int, default=v)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--dtype", choices=list(DTYPES), default="f32")
    ap.add_argument("--tf32", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    for k in ("depth", "hidden", "heads", "patch", "size", "batch", "iters", "threads"):
        if getattr(a, k) < (k != "threads"):
            fail(f"--{k} must be >= {int(k != 'threads')}")
    if a.hidden % a.heads:
        fail(f"--hidden {a.hidden} is not divisible by --heads {a.heads}")
    if a.size % a.patch:
        fail(f"--size {a.size} is not divisible by --patch {a.patch}")
    if a.device == "cuda" and not torch.cuda.is_available():
        fail("--device cuda: no CUDA GPU is available to this PyTorch build")
    return a


def main():
    a = parse_args()
    dev, dt, cuda = torch.device("cuda:0" if a.device == "cuda" else "cpu"), DTYPES[a.dtype], a.device == "cuda"
    if a.threads: torch.set_num_threads(a.threads)
    if a.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(a.seed)
    m = DiT(a.depth, a.hidden, a.heads, a.patch, a.size).to(device=dev, dtype=dt)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-4, weight_decay=0)
    x = torch.randn(a.batch, 4, a.size, a.size).to(device=dev, dtype=dt)  # seeded on cpu
    t = torch.randint(0, 1000, (a.batch,)).to(dev)
    y = torch.randint(0, 1000, (a.batch,)).to(dev)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    last = {}

    def step():
        opt.zero_grad()
        last["loss"] = loss = ((m(x, t, y)[:, :4] - x) ** 2).mean()
        loss.backward()
        opt.step()

    def fwd():
        with torch.no_grad():
            m(x, t, y)

    def timed(f):  # -> (median ms, peak bytes or None)
        if cuda:
            sync(); torch.cuda.reset_peak_memory_stats()
        ts = []
        for _ in range(a.iters):
            sync(); t0 = time.perf_counter(); f(); sync()
            ts.append(time.perf_counter() - t0)
        return 1e3 * statistics.median(ts), (torch.cuda.max_memory_allocated() if cuda else None)

    try: step(); fwd(); sync()  # untimed warm-up
    except (RuntimeError, NotImplementedError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        fail(f"--dtype {a.dtype} on --device {a.device} failed in warm-up: {first}")
    train_ms, train_peak = timed(step)
    fwd_ms, fwd_peak = timed(fwd)
    print(json.dumps(dict(
        train_step_ms=train_ms, forward_ms=fwd_ms,
        params=sum(p.numel() for p in m.parameters()),  # incl. frozen pos, as the reference
        torch_threads=torch.get_num_threads(), device=str(dev),
        gpu_name=torch.cuda.get_device_name(0) if cuda else None,
        dtype=a.dtype, tf32=bool(torch.backends.cuda.matmul.allow_tf32),
        torch_version=torch.__version__,
        peak_memory_bytes=train_peak, peak_memory_forward_bytes=fwd_peak,
        loss_finite=bool(torch.isfinite(last["loss"]).item()),  # pure f16 AdamW can go NaN
        depth=a.depth, hidden=a.hidden, heads=a.heads, patch=a.patch, size=a.size,
        batch=a.batch, iters=a.iters, seed=a.seed)))


if __name__ == "__main__":
    main()
