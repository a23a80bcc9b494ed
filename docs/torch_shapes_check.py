"""Cross-check of the default recipe in PyTorch (a diagnostic, not part of the product or CI).

Trains the `tiny` DiT (depth 4, hidden 128, 4 heads, patch 2; DiT init, adaLN-Zero) on a numpy
re-implementation of the built-in 16-px `shapes` data (solid backgrounds only; the product also
grades half of them) with DiT's linear DDPM schedule and plain ε-MSE, AdamW, warm-up 100,
clipping 1.0, EMA 0.999 with warm-up — the recipe of `cargo xtask train` without noise dropout
and without the learned variance — then:

- prints, every 500 steps, how much the model uses the label (ε-MSE with the true label over
  the null label's, at k = 500 and 700, for the model and its EMA),
- writes OUT (40 DDIM-50 samples, columns = classes),
- writes OUT with `_denoise` (rows: real images, then x_t and the x̂0 prediction at
  k = 100, 300, 500, 700, 900),
- prints the same label-use ratio at k = 300, 500, 700 for the EMA on 500 images.

What it showed (2 threads, 1500 steps ≈ 2.5 min): with the scattered layout every setting tried
gives backgrounds and blobs, even at 6000 steps or with a velocity objective; at lr 5e-4 even
the centred layout does (label-use ratio 0.93 at k = 300); the centred layout at lr 2e-3 gives
recognisable shapes (ratio ≈ 0.45). Hence the product's defaults. Flags: --steps, --batch, --lr,
--layout centred|scattered (with --jitter, --rmin/--rmax to override it), --patch,
--minsnr G (min-SNR-γ weighting), --lognorm M (logit-normal timestep draw), --ystd, --ylr
(label-table init and lr multiplier), --cfg.

usage: python torch_shapes_check.py --steps 1500 --out check.png   (torch from PyPI)
"""
import math, sys, time, zlib, struct, argparse
from pathlib import Path
import numpy as np
import torch, torch.nn as nn, torch.nn.functional as F

ap = argparse.ArgumentParser()
ap.add_argument("--steps", type=int, default=1500)
ap.add_argument("--batch", type=int, default=32)
ap.add_argument("--lr", type=float, default=2e-3)
ap.add_argument("--layout", default="centred", choices=["centred", "scattered"])
ap.add_argument("--jitter", type=float, default=None, help="centre jitter in px (centred)")
ap.add_argument("--patch", type=int, default=2)
ap.add_argument("--depth", type=int, default=4)
ap.add_argument("--hidden", type=int, default=128)
ap.add_argument("--out", default="torch_shapes_check.png")
ap.add_argument("--data", default="")
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--ystd", type=float, default=0.02)
ap.add_argument("--ylr", type=float, default=1.0)
ap.add_argument("--lognorm", type=float, default=None)
ap.add_argument("--cfg", type=float, default=1.0)
ap.add_argument("--rmin", type=float, default=None)
ap.add_argument("--rmax", type=float, default=None)
ap.add_argument("--fgdist", type=float, default=0.36)
ap.add_argument("--minsnr", type=float, default=0)
ap.add_argument("--ema", type=float, default=0.999)
args = ap.parse_args()
# The product's layouts (nag-train/src/data/shapes.rs, ShapesLayout).
centred = args.layout == "centred"
if args.rmin is None: args.rmin = 0.37 if centred else 0.22
if args.rmax is None: args.rmax = 0.41 if centred else 0.40
if args.jitter is None: args.jitter = 16 / 32 if centred else None
torch.set_num_threads(args.threads)
torch.manual_seed(0)
rng = np.random.default_rng(0)
S = 16


def inside(c, u, v):
    au, av = np.abs(u), np.abs(v)
    if c == 0: return u * u + v * v <= 1
    if c == 1: return np.maximum(au, av) <= 0.8
    if c == 2: return (v >= -0.9) & (v <= 0.8) & (au <= 0.95 * (v + 0.9) / 1.7)
    if c == 3: return ((au <= 0.3) & (av <= 1)) | ((av <= 0.3) & (au <= 1))
    if c == 4: r = u * u + v * v; return (r >= 0.3025) & (r <= 1)
    if c == 5: return (au <= 1) & (av <= 0.3)
    if c == 6: return (au <= 0.3) & (av <= 1)
    if c == 7: return au + av <= 1
    if c == 8:
        a, b = np.abs(u + v) * 0.5 ** 0.5, np.abs(u - v) * 0.5 ** 0.5
        return ((a <= 0.25) & (b <= 1)) | ((b <= 0.25) & (a <= 1))
    return (v <= 0.5) & (u * u + (v - 0.5) ** 2 <= 1)


ss = (np.arange(S * 4) + 0.5) / 4
SY, SX = np.meshgrid(ss, ss, indexing="ij")


def make(i):
    c = i % 10
    r = S * rng.uniform(args.rmin, args.rmax)
    cx, cy = rng.uniform(r, S - r), rng.uniform(r, S - r)
    if args.jitter is not None:
        cx, cy = S / 2 + rng.uniform(-args.jitter, args.jitter), S / 2 + rng.uniform(-args.jitter, args.jitter)
    bg = rng.random(3)
    while True:
        fg = rng.random(3)
        if ((fg - bg) ** 2).sum() >= args.fgdist: break
    m = inside(c, (SX - cx) / r, (SY - cy) / r).astype(np.float32)
    cov = m.reshape(S, 4, S, 4).mean((1, 3))
    img = bg[:, None, None] * (1 - cov) + fg[:, None, None] * cov
    return (img * 2 - 1).astype(np.float32), c


if args.data:
    d = np.load(args.data)
    X, Y = torch.tensor(d["x"]), torch.tensor(d["y"]).long()
else:
    N = 50000
    t0 = time.time()
    items = [make(i) for i in range(N)]
    X = torch.tensor(np.stack([a for a, _ in items]))
    Y = torch.tensor([b for _, b in items]).long()
    print("data", time.time() - t0, file=sys.stderr)


def sincos(d, g):
    gh = np.arange(g, dtype=np.float64)
    grid = np.meshgrid(gh, gh)  # w first like DiT
    grid = np.stack(grid, 0).reshape(2, 1, g, g)

    def one(dd, pos):
        om = 1.0 / 10000 ** (np.arange(dd // 2) / (dd / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), om)
        return np.concatenate([np.sin(out), np.cos(out)], 1)

    return np.concatenate([one(d // 2, grid[0]), one(d // 2, grid[1])], 1)


# The transformer block and adaLN modulation of the PyTorch reference DiT (same modules in the
# same order, so the same draws initialise them).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts" / "gpu"))
from torch_dit import Block, modulate  # noqa: E402


class DiT(nn.Module):
    def __init__(self, depth, d, h, p, cin=3, ncls=10):
        super().__init__()
        self.p, self.cin, self.ncls = p, cin, ncls
        self.emb = nn.Conv2d(cin, d, p, p)
        g = S // p
        self.register_buffer("pos", torch.tensor(sincos(d, g), dtype=torch.float32)[None])
        self.tm = nn.Sequential(nn.Linear(256, d), nn.SiLU(), nn.Linear(d, d))
        self.y = nn.Embedding(ncls + 1, d)
        self.blocks = nn.ModuleList([Block(d, h) for _ in range(depth)])
        self.fn = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.fada = nn.Linear(d, 2 * d)
        self.flin = nn.Linear(d, p * p * cin)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight); nn.init.zeros_(m.bias)
        w = self.emb.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1)); nn.init.zeros_(self.emb.bias)
        nn.init.normal_(self.y.weight, std=args.ystd)
        nn.init.normal_(self.tm[0].weight, std=0.02); nn.init.normal_(self.tm[2].weight, std=0.02)
        for b in self.blocks:
            nn.init.zeros_(b.ada[1].weight); nn.init.zeros_(b.ada[1].bias)
        for m in [self.fada, self.flin]:
            nn.init.zeros_(m.weight); nn.init.zeros_(m.bias)

    def temb(self, t):
        half = 128
        freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
        a = t[:, None].float() * freqs[None]
        return self.tm(torch.cat([torch.cos(a), torch.sin(a)], -1))

    def forward(self, x, t, y):
        x = self.emb(x).flatten(2).transpose(1, 2) + self.pos
        c = self.temb(t) + self.y(y)
        for b in self.blocks:
            x = b(x, c)
        sh, sc = self.fada(F.silu(c)).chunk(2, 1)
        x = self.flin(modulate(self.fn(x), sh, sc))
        B, T, _ = x.shape
        g, p = S // self.p, self.p
        x = x.reshape(B, g, g, p, p, self.cin).permute(0, 5, 1, 3, 2, 4).reshape(B, self.cin, S, S)
        return x


model = DiT(args.depth, args.hidden, 4, args.patch)
ema = DiT(args.depth, args.hidden, 4, args.patch)
ema.load_state_dict(model.state_dict())
betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
abar = torch.cumprod(1 - betas, 0).float()
others = [p for n_, p in model.named_parameters() if not n_.startswith("y.")]
opt = torch.optim.AdamW([{"params": others, "mult": 1.0}, {"params": model.y.parameters(), "mult": args.ylr}], lr=args.lr, weight_decay=0)
t0 = time.time()
for step in range(args.steps):
    lr = args.lr * min(1.0, (step + 1) / 100)
    for gparam in opt.param_groups: gparam["lr"] = lr * gparam["mult"]
    idx = torch.randint(0, X.shape[0], (args.batch,))
    x0, y = X[idx], Y[idx].clone()
    y[torch.rand(args.batch) < 0.1] = 10
    if args.lognorm is not None:
        k = (torch.sigmoid(torch.randn(args.batch) + args.lognorm) * 1000).long().clamp(0, 999)
    else:
        k = torch.randint(0, 1000, (args.batch,))
    e = torch.randn_like(x0)
    a = abar[k].view(-1, 1, 1, 1)
    xt = a.sqrt() * x0 + (1 - a).sqrt() * e
    if args.minsnr > 0:
        snr = a.view(-1) / (1 - a.view(-1))
        wt = torch.clamp(snr, max=args.minsnr) / snr
        loss = (wt * ((model(xt, k.float(), y) - e) ** 2).mean((1, 2, 3))).mean()
    else:
        loss = F.mse_loss(model(xt, k.float(), y), e)
    opt.zero_grad(); loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    dcy = min(args.ema, (1 + step) / (10 + step))
    with torch.no_grad():
        for pe, pm in zip(ema.parameters(), model.parameters()):
            pe.mul_(dcy).add_(pm, alpha=1 - dcy)
    if step % 100 == 0:
        print(step, loss.item(), f"{time.time()-t0:.0f}s", file=sys.stderr)
    if step % 500 == 499:
        with torch.no_grad():
            ii = torch.arange(200)
            xr, yr_ = X[ii], Y[ii]
            ee = torch.randn(xr.shape, generator=torch.Generator().manual_seed(7))
            out = []
            for kk in [500, 700]:
                aa = abar[kk]
                xt_ = aa.sqrt() * xr + (1 - aa).sqrt() * ee
                for mm in [model, ema]:
                    mc = float(((mm(xt_, torch.full((200,), float(kk)), yr_) - ee) ** 2).mean())
                    mu = float(((mm(xt_, torch.full((200,), float(kk)), torch.full((200,), 10)) - ee) ** 2).mean())
                    out.append(f"{mc / mu:.3f}")
            print("label use", step + 1, "k500 model/ema", out[0], out[1], "k700", out[2], out[3], file=sys.stderr)
print("train", time.time() - t0, file=sys.stderr)
torch.save({"ema": ema.state_dict(), "model": model.state_dict()}, args.out + ".pt")
with torch.no_grad():
    # Denoising check on real images: rows = x_t, x0-pred for k in ks.
    ks = [100, 300, 500, 700, 900]
    idx = torch.arange(10)
    x0r, yr = X[idx], Y[idx]
    e = torch.randn(x0r.shape, generator=torch.Generator().manual_seed(5))
    rows = [x0r]
    for kk in ks:
        a = abar[kk]
        xt = a.sqrt() * x0r + (1 - a).sqrt() * e
        ep = ema(xt, torch.full((10,), float(kk)), yr)
        rows += [xt.clamp(-1, 1), ((xt - (1 - a).sqrt() * ep) / a.sqrt()).clamp(-1, 1)]
        print("k", kk, "eps mse", float(((ep - e) ** 2).mean()), file=sys.stderr)
    # Label use: eps-MSE with the true label vs the null label, 500 real images per k.
    idx = torch.arange(500)
    x0r, yr = X[idx], Y[idx]
    e = torch.randn(x0r.shape, generator=torch.Generator().manual_seed(6))
    for kk in [300, 500, 700]:
        a = abar[kk]
        xt = a.sqrt() * x0r + (1 - a).sqrt() * e
        mc = float(((ema(xt, torch.full((500,), float(kk)), yr) - e) ** 2).mean())
        mu = float(((ema(xt, torch.full((500,), float(kk)), torch.full((500,), 10)) - e) ** 2).mean())
        print("label use k", kk, "cond", mc, "uncond", mu, "ratio", mc / mu, file=sys.stderr)
    DEN = torch.stack(rows)
with torch.no_grad():
    res = {}
    for name, m in [("ema", ema)]:
        n = 40
        y = torch.arange(n) % 10
        g = torch.Generator().manual_seed(1)
        x = torch.randn(n, 3, S, S, generator=g)
        ts = np.linspace(999, 0, 50).round().astype(int)
        for i, t in enumerate(ts):
            a = abar[t]
            ap_ = abar[ts[i + 1]] if i + 1 < len(ts) else torch.tensor(1.0)
            eps = m(x, torch.full((n,), float(t)), y)
            if args.cfg != 1.0:
                eu = m(x, torch.full((n,), float(t)), torch.full((n,), 10))
                eps = eu + args.cfg * (eps - eu)
            x0 = ((x - (1 - a).sqrt() * eps) / a.sqrt()).clamp(-1, 1)
            eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
            x = ap_.sqrt() * x0 + (1 - ap_).sqrt() * eps
        res[name] = x


def png(path, img):  # img HxWx3 uint8
    h, w, _ = img.shape
    raw = b"".join(b"\x00" + img[r].tobytes() for r in range(h))
    def chunk(t, d): return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xffffffff)
    open(path, "wb").write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


x = res["ema"]
grid = np.zeros((4 * 18, 10 * 18, 3), np.uint8)
for i in range(40):
    r, c = i // 10, i % 10
    im = ((x[i].permute(1, 2, 0).numpy() + 1) * 127.5).clip(0, 255).astype(np.uint8)
    grid[r * 18 + 1:r * 18 + 17, c * 18 + 1:c * 18 + 17] = im
grid = grid.repeat(3, 0).repeat(3, 1)
png(args.out, grid)
R = DEN.shape[0]
g2 = np.zeros((R * 18, 10 * 18, 3), np.uint8)
for r in range(R):
    for c in range(10):
        g2[r * 18 + 1:r * 18 + 17, c * 18 + 1:c * 18 + 17] = ((DEN[r, c].permute(1, 2, 0).numpy() + 1) * 127.5).clip(0, 255).astype(np.uint8)
png(args.out.replace(".png", "_denoise.png"), g2.repeat(3, 0).repeat(3, 1))
print("wrote", args.out, file=sys.stderr)
