"""integration.sampler_formulas: one step of every sampler of solver.h
(tests/sampler/sampler_cases.c writes them) against the papers' formulas
written out here in NumPy, in double precision, from these sources only:

  schedule   SPEC.md: beta linear 1e-4..0.02 over T = 300, abar = prod(1 - beta)
  ddpm       Ho et al. 2020, eq. 6-7: the posterior q(x_s | x_t, x0) of a
             stretch t -> s, alpha = abar_t / abar_s, beta = 1 - alpha; the
             course's noise sqrt(beta_t) for s = t - 1, the posterior's own
             variance beta (1 - abar_s) / (1 - abar_t) when steps are skipped
  ddim       Song et al. 2021, eq. 12 and 16
  dpmpp2m    Lu et al. 2022 (DPM-Solver++), Algorithm 2, with lambda =
             ln(alpha / sigma)
  euler/heun Karras et al. 2022, Algorithm 1 on the flow's ODE dx/dt = u
  flow path  x_t = (1 - t) noise + t x1: alpha = t, sigma = 1 - t, and the
             data estimate x1 = x_t + (1 - t) u

The grids are rebuilt here too (uniform: t_i = round((T-1)(S-1-i)/(S-1));
logsnr: even in lambda, nearest trained time, made strictly decreasing).
Then the check itself is checked: a formula changed on purpose (the large
variance for skipped steps, DPM-Solver++ without its correction, Heun's
second evaluation at the wrong time) must fail it.

usage: test_sampler_formulas.py DIFFMPI SOURCE_DIR   (DM_SAMPLER_CASES:
the sampler_cases program)"""
import os
import subprocess
import sys
import tempfile

import h5py
import numpy as np

T = 300
beta = np.linspace(1e-4, 0.02, T)
abar = np.cumprod(1.0 - beta)
lam_t = 0.5 * np.log(abar / (1.0 - abar))
failures = []


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what, flush=True)
    if not cond:
        failures.append(what)


def ddpm_grid(S, spacing):
    if spacing == "uniform":
        ts = [((T - 1) * (S - 1 - i) + (S - 1) // 2) // (S - 1) if S > 1 else T - 1
              for i in range(S)]
    else:
        want = np.linspace(lam_t[T - 1], lam_t[0], S) if S > 1 else [lam_t[T - 1]]
        ts = [int(np.argmin(np.abs(lam_t - w))) for w in want]
        for i in range(S - 2, -1, -1):
            ts[i] = max(ts[i], ts[i + 1] + 1)
        for i in range(1, S):
            ts[i] = min(ts[i], ts[i - 1] - 1)
    return ts + [-1]


def coef(objective, grid, i, S):
    """(alpha, sigma, network time) of grid point i."""
    if objective == "ddpm":
        t = grid[i]
        ab = abar[t] if t >= 0 else 1.0
        return np.sqrt(ab), np.sqrt(1.0 - ab), t / T
    t = i / S
    return t, 1.0 - t, t


def reference(c, mutate=None):
    obj, smp = c["objective"], c["sampler"]
    S, i, eta = c["steps"], c["step"], c["eta"]
    x = c["x"].astype(np.float64)
    o1, o2 = c["out1"].astype(np.float64), c["out2"].astype(np.float64)
    z, prev = c["z"].astype(np.float64), c["prev"].astype(np.float64)
    grid = ddpm_grid(S, c["spacing"]) if obj == "ddpm" else None
    a, s, _ = coef(obj, grid, i, S)
    a1, s1, _ = coef(obj, grid, i + 1, S)
    x0 = (x - s * o1) / a if obj == "ddpm" else x + (1.0 - i / S) * o1
    if smp == "ddpm":
        t, tp = grid[i], grid[i + 1]
        ab, ap = abar[t], (abar[tp] if tp >= 0 else 1.0)
        al = ab / ap
        b = 1.0 - al
        mean = np.sqrt(ap) * b / (1 - ab) * x0 + np.sqrt(al) * (1 - ap) / (1 - ab) * x
        var = b if (tp == t - 1 or mutate == "large_variance") else b * (1 - ap) / (1 - ab)
        return mean + (np.sqrt(var) * z if tp >= 0 else 0.0)
    if smp == "ddim":
        sig = eta * np.sqrt((1 - a1 ** 2) / (1 - a ** 2)) * np.sqrt(1 - a ** 2 / a1 ** 2)
        return a1 * x0 + np.sqrt(np.maximum(1 - a1 ** 2 - sig ** 2, 0)) * o1 + sig * z
    if smp == "dpmpp2m":
        if s1 == 0:  # into the image: h infinite, x = x0
            return x0
        lam, lam1 = np.log(a / s) if a > 0 else -np.inf, np.log(a1 / s1)
        h = lam1 - lam
        first = i == 0 or coef(obj, grid, i - 1, S)[0] == 0 or mutate == "no_correction"
        if first:
            D = x0
        else:
            ap_, sp_, _ = coef(obj, grid, i - 1, S)
            r = (lam - np.log(ap_ / sp_)) / h
            D = (1 + 1 / (2 * r)) * x0 - 1 / (2 * r) * prev
        # x_i = (sigma_i / sigma_{i-1}) x_{i-1} - alpha_i (e^{-h} - 1) D
        em = np.exp(-h) if np.isfinite(h) else 0.0
        return (s1 / s) * x - a1 * (em - 1.0) * D
    h = 1.0 / S
    if smp == "euler" or i + 1 == S:
        return x + h * o1
    if smp == "heun":
        return x + h / 2 * (o1 + o2)
    raise SystemExit(f"unknown sampler {smp}")


def expected_evals(c):
    """(evaluations, network times, input of the second) per the papers."""
    obj, S, i = c["objective"], c["steps"], c["step"]
    grid = ddpm_grid(S, c["spacing"]) if obj == "ddpm" else None
    t0 = coef(obj, grid, i, S)[2]
    if c["sampler"] == "heun" and i + 1 < S:
        x = c["x"].astype(np.float64)
        return 2, [t0, (i + 1) / S], x + c["out1"] / S
    return 1, [t0], None


def relerr(got, want):
    return float(np.max(np.abs(got - want)) / max(1.0, float(np.max(np.abs(want)))))


def main():
    prog = os.environ.get("DM_SAMPLER_CASES")
    if not prog:
        sys.exit("DM_SAMPLER_CASES is not set (the sampler_cases program)")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "cases.h5")
        r = subprocess.run([prog, path], capture_output=True, text=True)
        check(r.returncode == 0, f"sampler_cases ran ({r.stderr.strip()[-200:]})")
        if r.returncode:
            sys.exit(1)
        with h5py.File(path, "r") as f:
            cases = []
            for name in sorted(f):
                g = f[name]
                c = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in g.attrs.items()}
                c.update({k: g[k][()] for k in g})
                c["name"] = name
                cases.append(c)
    check(len(cases) >= 18, f"{len(cases)} cases")
    for c in cases:
        what = (f"{c['name']}: {c['sampler']} on {c['objective']} ({c['spacing']}), "
                f"step {c['step']} of {c['steps']}, eta {c['eta']:g}")
        want = reference(c)
        e = relerr(c["x_next"].astype(np.float64), want)
        check(e < 2e-5, f"{what}: max error {e:.2e} against the formula")
        n, ts, x2 = expected_evals(c)
        ok = c["evals"] == n and np.allclose(c["eval_t"][:n], ts, atol=1e-7)
        if x2 is not None:
            ok = ok and relerr(c["eval_x2"].astype(np.float64), x2) < 2e-6
        check(ok, f"{what}: {c['evals']} evaluation(s) at t = {list(c['eval_t'][:c['evals']])}"
                  f" (expected {n} at {ts})")
        stochastic = c["sampler"] == "ddpm" or (c["sampler"] == "ddim" and c["eta"] > 0)
        check(bool(c["uses_noise"]) == (stochastic and c["step"] + 1 < c["steps"]),
              f"{what}: fresh noise {'drawn' if c['uses_noise'] else 'not drawn'}")
    # The check can fail: formulas changed on purpose must not match.
    by = {(c["sampler"], c["objective"], c["steps"], c["step"]): c for c in cases}
    for key, mutation in (((("ddpm", "ddpm", 20, 3)), "large_variance"),
                          ((("dpmpp2m", "ddpm", 12, 5)), "no_correction"),
                          ((("dpmpp2m", "flow", 9, 4)), "no_correction")):
        c = by[key]
        e = relerr(c["x_next"].astype(np.float64), reference(c, mutation))
        check(e > 1e-3, f"self-test: {key[0]} step {key[3]} of {key[2]} ({key[1]}) with "
                        f"{mutation} differs by {e:.2e}")
    c = by[("heun", "flow", 7, 2)]
    wrong_t = np.allclose(c["eval_t"][:2], [2 / 7, 2 / 7], atol=1e-7)
    check(not wrong_t, "self-test: heun's second evaluation is not at the first's time")
    print(f"{len(failures) == 0 and 'all checks passed' or 'failures: ' + ', '.join(failures)}")
    sys.exit(1 if failures else 0)


main()
