"""Independent reference values for nag-core's DDPM tests (numpy, f64).

Re-derives the reference DiT/ADM diffusion tables from their published definitions
(REFERENCE.md §3) and prints the numbers pinned in `ddpm.rs`'s tests. Run: python3 ddpm_reference.py
"""
import math
import numpy as np


def linear_betas(T):
    s = 1000 / T
    return np.linspace(s * 0.0001, s * 0.02, T, dtype=np.float64)


def cosine_betas(T):
    f = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
    return np.array([min(1 - f((i + 1) / T) / f(i / T), 0.999) for i in range(T)])


def space_timesteps(T, counts):
    size_per, extra = T // len(counts), T % len(counts)
    start, out = 0, []
    for i, c in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        stride = 1 if c <= 1 else (size - 1) / (c - 1)
        cur = 0.0
        for _ in range(c):
            out.append(start + round(cur))
            cur += stride
        start += size
    return sorted(set(out))


def tables(betas):
    ac = np.cumprod(1.0 - betas)
    acp = np.append(1.0, ac[:-1])
    pv = betas * (1.0 - acp) / (1.0 - ac)
    plv = np.log(np.append(pv[1], pv[1:]))
    c1 = betas * np.sqrt(acp) / (1.0 - ac)
    c2 = (1.0 - acp) * np.sqrt(1.0 - betas) / (1.0 - ac)
    return ac, pv, plv, c1, c2


b = linear_betas(1000)
ac, pv, plv, c1, c2 = tables(b)
print("linear alphas_cumprod[0,1,499,999] =", [repr(ac[i]) for i in (0, 1, 499, 999)])
print("linear post_log_var_clipped[0,1,500] =", [repr(plv[i]) for i in (0, 1, 500)])
print("linear coef1[10], coef2[10] =", repr(c1[10]), repr(c2[10]))
bc = cosine_betas(1000)
acc = np.cumprod(1 - bc)
print("cosine alphas_cumprod[0,500,999] =", [repr(acc[i]) for i in (0, 500, 999)])
for n in (250, 25):
    keep = space_timesteps(1000, [n])
    last, nb = 1.0, []
    for i in keep:
        nb.append(1 - ac[i] / last)
        last = ac[i]
    nb = np.array(nb)
    _, _, rplv, _, _ = tables(nb)
    print(f"respaced {n}: first10 =", keep[:10], "last3 =", keep[-3:], "len", len(keep))
    print(f"respaced {n}: betas[0,1,-1] =", repr(nb[0]), repr(nb[1]), repr(nb[-1]))
    print(f"respaced {n}: post_log_var_clipped[0,5] =", repr(rplv[0]), repr(rplv[5]))
print("sections 10,15,20:", space_timesteps(1000, [10, 15, 20])[:12])
