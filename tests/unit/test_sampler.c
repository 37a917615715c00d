/* test_sampler.c: the sampler table (solver.h) on models whose answer is
 * known in closed form, its grids, its checks, and the strided DDPM step.
 *
 * Gaussian data: every pixel k is x0 ~ N(mu_k, v_k), independently. On
 * the path x_t = a x0 + s noise the marginal is N(a mu, a^2 v + s^2), so
 * the exact noise prediction is s (x - a mu) / (a^2 v + s^2), the exact
 * flow velocity mu + (t v - (1 - t)) / sigma_t^2 (x - t mu), and the
 * probability-flow ODE carries x to mu + sqrt(v) (x - a0 mu) /
 * sqrt(a0^2 v + s0^2) at the image (a 1-D monotone map between
 * Gaussians). The error of the deterministic samplers against that answer
 * must fall as 1/S (ddim, euler) or 1/S^2 (dpmpp2m, heun). The formulas
 * of each single step are checked against NumPy in
 * tests/integration/test_sampler_formulas.py. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "diffmpi/data.h"
#include "diffmpi/solver.h"
#include "test_util.h"

#define NPIX DM_PIX

typedef struct {
    dm_objective o;
    ddpm_schedule sch;
    double mu[NPIX], v[NPIX];
    int evals;
} gauss_model;

/* The exact network output of objective g->o for the Gaussian data. */
static void gauss_eval(void *ctx, float *out, const float *x, float t, int first, int k) {
    gauss_model *g = ctx;
    (void)first;
    g->evals++;
    for (int i = 0; i < k; i++)
        for (int p = 0; p < NPIX; p++) {
            double xv = x[(long)i * NPIX + p], mu = g->mu[p], v = g->v[p];
            if (g->o == OBJ_DDPM) {
                int ti = (int)lround((double)t * g->sch.T);
                double a = sqrt(g->sch.abar[ti]), s = sqrt(1.0 - g->sch.abar[ti]);
                out[(long)i * NPIX + p] = (float)(s * (xv - a * mu) / (a * a * v + s * s));
            } else {
                double tt = t, var = (1 - tt) * (1 - tt) + tt * tt * v;
                out[(long)i * NPIX + p] = (float)(mu + (tt * v - (1 - tt)) / var * (xv - tt * mu));
            }
        }
}

static void gauss_init(gauss_model *g, dm_objective o) {
    memset(g, 0, sizeof *g);
    g->o = o;
    ddpm_schedule_init(&g->sch);
    for (int p = 0; p < NPIX; p++) {
        g->mu[p] = 0.3 + 0.4 * sin(0.37 * p);
        g->v[p] = 0.02 + 0.3 * (double)(p % 11) / 11.0;
    }
}

/* RMS error of S steps of sampler s from fixed starting noise against the
 * exact ODE answer; *nfe gets the network evaluations made. */
static double walk_error(dm_objective o, dm_sampler s, dm_spacing sp, int S, int *nfe) {
    static gauss_model g;
    gauss_init(&g, o);
    solver_plan pl;
    const char *bad = solver_plan_init(&pl, o, s, sp, S, 0.0, (solver_model){gauss_eval, &g});
    EXPECT(!bad, "plan %s %d: %s", solver_name(s), S, bad ? bad : "");
    if (bad) return NAN;
    static float x[NPIX], state[NPIX], out[NPIX], work[2 * NPIX];
    double a0 = pl.p[0].a, s0 = pl.p[0].s;
    for (int p = 0; p < NPIX; p++) x[p] = (float)(2.5 * sin(1.7 * p + 0.3)); /* the noise */
    double want[NPIX];
    for (int p = 0; p < NPIX; p++)
        want[p] = g.mu[p] + sqrt(g.v[p]) * (x[p] - a0 * g.mu[p]) / sqrt(a0 * a0 * g.v[p] + s0 * s0);
    solver_block b = {.x = x, .state = state, .out = out, .work = work, .first = 0, .k = 1};
    for (int i = 0; i < S; i++) solver_step(&pl, i, &b);
    double e2 = 0;
    for (int p = 0; p < NPIX; p++) e2 += (x[p] - want[p]) * (x[p] - want[p]);
    *nfe = g.evals;
    solver_plan_free(&pl);
    return sqrt(e2 / NPIX);
}

/* The error must fall by 2^order per doubling of the steps, from S0 up. */
static void convergence(dm_objective o, dm_sampler s, dm_spacing sp, int S0, int order) {
    double err[4], slope[3];
    for (int j = 0; j < 4; j++) {
        int nfe, S = S0 << j;
        err[j] = walk_error(o, s, sp, S, &nfe);
        EXPECT(nfe == solver_evals(s, S), "%s: %d evaluations for %d steps (expected %d)",
               solver_name(s), nfe, S, solver_evals(s, S));
    }
    for (int j = 0; j < 3; j++) slope[j] = log2(err[j] / err[j + 1]);
    printf("%-8s %-4s %-7s S=%d..%d: error %.3g %.3g %.3g %.3g, order %.2f %.2f %.2f\n",
           solver_name(s), objective_get(o)->name, solver_spacing_name(sp), S0, S0 << 3,
           err[0], err[1], err[2], err[3], slope[0], slope[1], slope[2]);
    /* First order: 1/S over the last two doublings. Second order: faster
     * than 1/S^1.5 (dpmpp2m on the flow's uniform grid falls as about
     * ln(S)/S^2, 1.6-1.8 per doubling, since its first steps in lambda
     * stay about ln((i+1)/i) long whatever S). */
    int ok = order == 1 ? slope[1] > 0.8 && slope[1] < 1.3 && slope[2] > 0.8 && slope[2] < 1.3
                        : slope[1] > 1.5 && slope[2] > 1.5;
    EXPECT(ok, "%s on %s (%s): error falls as 1/S^%.2f then 1/S^%.2f, expected order %d",
           solver_name(s), objective_get(o)->name, solver_spacing_name(sp), slope[1], slope[2],
           order);
    EXPECT(err[3] < (order == 1 ? 0.05 : 0.01), "%s: error %.3g at %d steps", solver_name(s),
           err[3], S0 << 3);
}

static void test_convergence(void) {
    convergence(OBJ_DDPM, SAMPLER_DDIM, SPACING_UNIFORM, 10, 1);
    convergence(OBJ_DDPM, SAMPLER_DDIM, SPACING_LOGSNR, 10, 1);
    convergence(OBJ_DDPM, SAMPLER_DPMPP2M, SPACING_UNIFORM, 10, 2);
    convergence(OBJ_DDPM, SAMPLER_DPMPP2M, SPACING_LOGSNR, 10, 2);
    convergence(OBJ_FLOW, SAMPLER_EULER, SPACING_UNIFORM, 10, 1);
    convergence(OBJ_FLOW, SAMPLER_HEUN, SPACING_UNIFORM, 10, 2);
    convergence(OBJ_FLOW, SAMPLER_DPMPP2M, SPACING_UNIFORM, 80, 2);
}

static void test_grids(void) {
    ddpm_schedule s;
    ddpm_schedule_init(&s);
    path_point p[301];
    const dm_objective_def *d = objective_get(OBJ_DDPM), *f = objective_get(OBJ_FLOW);
    for (int S = 1; S <= 300; S += S < 20 ? 1 : 37) {
        for (int sp = 0; sp < SPACING_COUNT; sp++) {
            EXPECT(d->grid(&s, sp, S, p) == NULL, "ddpm grid of %d steps", S);
            int ok = p[0].index == 299 && p[S].index == -1 && p[S].a == 1.0 && p[S].s == 0.0;
            for (int i = 0; i < S; i++) {
                ok &= p[i].index > p[i + 1].index && p[i].t == (float)p[i].index / 300.0f;
                ok &= fabs(p[i].a * p[i].a - s.abar[p[i].index]) < 1e-12;
            }
            if (S > 1) ok &= p[S - 1].index == 0;
            EXPECT(ok, "ddpm %s grid of %d steps: 299 .. 0, then the image",
                   solver_spacing_name(sp), S);
        }
    }
    EXPECT(d->grid(&s, SPACING_UNIFORM, 301, p) != NULL, "a DDPM has 300 times");
    /* log-SNR: 10 steps are about 0.68 apart in lambda (rounded to trained
     * times, which lie 0.03-0.5 apart in lambda). */
    d->grid(&s, SPACING_LOGSNR, 10, p);
    for (int i = 0; i + 2 < 10; i++) {
        double h = log(p[i + 1].a / p[i + 1].s) - log(p[i].a / p[i].s);
        EXPECT(fabs(h - 0.68) < 0.15, "logsnr step %d: h = %.3f", i, h);
    }
    EXPECT(f->grid(&s, SPACING_UNIFORM, 8, p) == NULL && p[0].t == 0.0f && p[8].t == 1.0f &&
               p[3].a == 3.0 / 8 && p[3].s == 5.0 / 8,
           "flow grid: t = i/S, a = t, s = 1 - t");
    EXPECT(f->grid(&s, SPACING_LOGSNR, 8, p) != NULL, "flow refuses logsnr");
}

static void expect_refusal(dm_objective o, dm_sampler s, dm_spacing sp, int S, double eta,
                           const char *words) {
    const char *why = solver_check(o, s, sp, S, eta);
    EXPECT(why && strstr(why, words), "%s on %s, %d steps, eta %g: refused with '%s' (got '%s')",
           solver_name(s), objective_get(o)->name, S, eta, words, why ? why : "(accepted)");
}

static void test_refusals(void) {
    expect_refusal(OBJ_DDPM, SAMPLER_EULER, SPACING_UNIFORM, 20, 0, "cannot sample a ddpm");
    expect_refusal(OBJ_DDPM, SAMPLER_HEUN, SPACING_UNIFORM, 20, 0, "cannot sample a ddpm");
    expect_refusal(OBJ_FLOW, SAMPLER_DDPM, SPACING_UNIFORM, 20, 0, "cannot sample a flow");
    expect_refusal(OBJ_FLOW, SAMPLER_DDIM, SPACING_UNIFORM, 20, 0, "cannot sample a flow");
    expect_refusal(OBJ_DDPM, SAMPLER_DPMPP2M, SPACING_UNIFORM, 0, 0, "at least 1");
    expect_refusal(OBJ_DDPM, SAMPLER_DDIM, SPACING_UNIFORM, 20, 1.5, "[0, 1]");
    expect_refusal(OBJ_DDPM, SAMPLER_DPMPP2M, SPACING_UNIFORM, 20, 0.5, "ddim only");
    expect_refusal(OBJ_DDPM, SAMPLER_AUTO, SPACING_UNIFORM, 301, 0, "at most 300");
    expect_refusal(OBJ_FLOW, SAMPLER_EULER, SPACING_LOGSNR, 20, 0, "only sample_spacing = uniform");
    expect_refusal(OBJ_DENOISE, SAMPLER_AUTO, SPACING_UNIFORM, 20, 0, "diffusion objective");
    EXPECT(solver_check(OBJ_DDPM, SAMPLER_DDIM, SPACING_LOGSNR, 300, 1.0) == NULL,
           "ddim, 300 logsnr steps, eta 1");
    EXPECT(solver_check(OBJ_FLOW, SAMPLER_HEUN, SPACING_UNIFORM, 1000, 0) == NULL, "heun 1000");
    EXPECT(solver_resolve(SAMPLER_AUTO, OBJ_DDPM, 0) == SAMPLER_DDPM &&
               solver_resolve(SAMPLER_AUTO, OBJ_DDPM, 1) == SAMPLER_DDPM &&
               solver_resolve(SAMPLER_AUTO, OBJ_FLOW, 0) == SAMPLER_EULER &&
               solver_resolve(SAMPLER_AUTO, OBJ_FLOW, 1) == SAMPLER_DPMPP2M &&
               solver_resolve(SAMPLER_HEUN, OBJ_FLOW, 1) == SAMPLER_HEUN,
           "auto: ddpm for ddpm, euler for time flow, dpmpp2m for class flow");
    EXPECT(solver_evals(SAMPLER_HEUN, 10) == 19 && solver_evals(SAMPLER_DPMPP2M, 10) == 10,
           "heun: two evaluations a step, one for the last");
}

/* The strided ancestral step (t = 200 -> 150) by hand: the posterior's
 * mean and variance; and ddim at eta = 1 is the same step (Song et al.:
 * eta = 1 is the DDPM posterior), computed by another formula. */
static void fixed_eval(void *ctx, float *out, const float *x, float t, int first, int k) {
    (void)x, (void)t, (void)first;
    memcpy(out, ctx, sizeof(float) * (size_t)k * NPIX);
}

static void test_strided_ddpm(void) {
    ddpm_schedule s;
    ddpm_schedule_init(&s);
    static float x[NPIX], eps[NPIX], z[NPIX], y[NPIX], out[NPIX], work[NPIX];
    for (int p = 0; p < NPIX; p++) {
        x[p] = (float)sin(0.3 * p), eps[p] = (float)cos(0.7 * p), z[p] = (float)sin(1.1 * p + 2);
        y[p] = x[p];
    }
    int t = 200, tp = 150;
    double ab = s.abar[t], ap = s.abar[tp], beta = 1 - ab / ap, err = 0;
    double var = beta * (1 - ap) / (1 - ab);
    float want[NPIX];
    for (int p = 0; p < NPIX; p++) {
        double x0 = (x[p] - sqrt(1 - ab) * eps[p]) / sqrt(ab);
        want[p] = (float)(sqrt(ap) * beta / (1 - ab) * x0 + sqrt(ab / ap) * (1 - ap) / (1 - ab) * x[p] +
                          sqrt(var) * z[p]);
    }
    ddpm_step(&s, t, tp, x, eps, z, NPIX);
    for (int p = 0; p < NPIX; p++) err = fmax(err, fabs(x[p] - want[p]));
    EXPECT(err < 1e-5, "strided ddpm step: posterior mean and variance (max error %g)", err);
    /* ddim eta = 1 on a 2-step grid whose first step is 299 -> 0: compare
     * through a plan whose grid we read, against ddpm_step on it. */
    solver_plan pl;
    EXPECT(!solver_plan_init(&pl, OBJ_DDPM, SAMPLER_DDIM, SPACING_UNIFORM, 3, 1.0,
                             (solver_model){fixed_eval, eps}),
           "ddim plan");
    int i = 0, ti = pl.p[i].index, tn = pl.p[i + 1].index;
    solver_block b = {.x = y, .out = out, .work = work, .z = z, .k = 1};
    for (int p = 0; p < NPIX; p++) y[p] = (float)sin(0.3 * p);
    solver_step(&pl, i, &b);
    for (int p = 0; p < NPIX; p++) x[p] = (float)sin(0.3 * p);
    ddpm_step(&s, ti, tn, x, eps, z, NPIX);
    err = 0;
    for (int p = 0; p < NPIX; p++) err = fmax(err, fabs(x[p] - y[p]));
    EXPECT(err < 1e-5, "ddim eta 1 (%d -> %d) = the strided ddpm step (max difference %g)", ti,
           tn, err);
    solver_plan_free(&pl);
}

/* DDIM's inversion: S steps forward from noise, then the same grid
 * backwards from the image, must come back to the noise, the closer the
 * more steps (as 1/S: two first-order walks; the data's small variances
 * make the noise far more sensitive than the images). */
static double round_trip(dm_objective o, dm_sampler s, int S) {
    static gauss_model g;
    gauss_init(&g, o);
    static float x[NPIX], x0[NPIX], out[NPIX], work[2 * NPIX];
    for (int p = 0; p < NPIX; p++) x[p] = x0[p] = (float)(2.0 * sin(1.3 * p + 0.1));
    solver_block b = {.x = x, .out = out, .work = work, .k = 1};
    solver_plan pl;
    for (int dir = 0; dir < 2; dir++) {
        EXPECT(!solver_plan_init(&pl, o, s, SPACING_UNIFORM, S, 0.0,
                                 (solver_model){gauss_eval, &g}),
               "round trip plan");
        if (dir == 1) solver_plan_reverse(&pl);
        for (int i = 0; i < S; i++) solver_step(&pl, i, &b);
        if (dir == 1)
            EXPECT(pl.p[0].a == 1.0 && pl.p[0].s == 0.0 && pl.p[S].s > 0.9 && pl.p[0].t >= 0,
                   "reversed grid: from the image (a = 1) to the noise");
        solver_plan_free(&pl);
    }
    double e2 = 0;
    for (int p = 0; p < NPIX; p++) e2 += (x[p] - x0[p]) * (x[p] - x0[p]);
    return sqrt(e2 / NPIX);
}

static void test_inversion(void) {
    for (int m = 0; m < 2; m++) {
        dm_objective o = m ? OBJ_FLOW : OBJ_DDPM;
        dm_sampler s = solver_inverse_default(o);
        EXPECT(s == (m ? SAMPLER_EULER : SAMPLER_DDIM), "invert's sampler for %s: %s",
               objective_get(o)->name, solver_name(s));
        double e20 = round_trip(o, s, 20), e80 = round_trip(o, s, 80);
        printf("inversion %-5s %-5s: noise back within %.3g (20 steps), %.3g (80 steps)\n",
               solver_name(s), objective_get(o)->name, e20, e80);
        EXPECT(e80 < e20 / 3 && e20 < 0.5, "%s: inversion error %.3g at 20, %.3g at 80 steps",
               solver_name(s), e20, e80);
    }
}

int main(void) {
    test_grids();
    test_refusals();
    test_strided_ddpm();
    test_convergence();
    test_inversion();
    return test_finish("test_sampler");
}
