/* test_unet.c: the whole UNet's gradient (train-mode BatchNorm over two
 * micro-batches or GroupNorm, the fixed-order gradient tree), and the
 * classifier's (objective = classify, with its cross-entropy), against
 * Richardson-extrapolated central finite differences of the loss, at tiny
 * width, failing on any wrong entry checked; parameter count against
 * SPEC.md; FLOP counts against hand counts. */
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "diffmpi/dist.h"
#include "diffmpi/layers.h"
#include "diffmpi/rng.h"
#include "diffmpi/unet.h"
#include "test_util.h"

enum { D = 2, M = 2, NMB = 2, B = 3 }; /* micro-batches of 2 and 1 image */

static float x[NMB][M * 784], tgt[NMB][M * 784];
static const int sizes[NMB] = {2, 1};
static const float times[B] = {0.1f, 0.55f, 0.9f};
static const int labels[B] = {3, -1, 7};

/* Loss of the current parameters (train-mode forward), and optionally the
 * full backward into grads. */
static double loss_and_grad(unet *u, dm_dist *d, float *grads) {
    dist_set_batch(d, NMB);
    for (int j = 0; j < NMB; j++) {
        memcpy(unet_slot(u, u->in_buf, j), x[j], sizeof(float) * sizes[j] * 784);
        for (int i = 0; u->nemb && i < sizes[j]; i++)
            unet_set_cond(u, j, i, times[j * M + i], labels[j * M + i]);
    }
    unet_zero_grad(u, NMB);
    unet_forward(u, 1, NMB, sizes, B, dist_combine, d, 0.1f);
    double sse = 0, per = u->classes ? 1 : 784; /* loss terms per image */
    for (int j = 0; j < NMB; j++) {
        float *dy = u->act[u->out_buf].grad + (long)j * u->act[u->out_buf].mb_stride;
        /* The classifier: soft targets, the first 10 values per image of tgt
         * (not normalised: the general case of xent). */
        if (u->classes)
            sse += xent_forward_backward(dy, NULL, unet_slot(u, u->out_buf, j), tgt[j],
                                         u->classes, sizes[j], 1.0f / B);
        else
            sse += mse_forward_backward(dy, unet_slot(u, u->out_buf, j), tgt[j],
                                        (long)sizes[j] * 784, 1.0f / (B * 784));
    }
    if (grads) {
        unet_backward(u, NMB, sizes, B, dist_combine, d, dist_leaf_dst, dist_leaf_merge,
                      dist_segment_done);
        dist_reduce_grads(d, grads);
    }
    return sse / (B * per);
}

static void check_param_count(void) {
    int Ds[2] = {128, 64};
    /* SPEC.md's UNet plain / +time / +class (7.89M, 7.97M, 8.06M at D=128),
     * counted exactly by PyTorch on tools/diffmpi_torch.py's modules
     * (sum of numel over UNet(D, "none" | "add" | "film").parameters()):
     * one missing bias or BatchNorm affine fails. */
    long want[2][3] = {{7891073, 7974145, 8060673}, {1975361, 1996417, 2019201}};
    for (int i = 0; i < 2; i++)
        for (int cond = 0; cond < 3; cond++) {
            unet u;
            cond_mix mixes[3] = {COND_MIX_NONE, COND_MIX_ADD, COND_MIX_FILM};
            unet_shape sh = {.D = Ds[i], .mix = mixes[cond], .m = 1};
            unet_init(&u, &sh);
            EXPECT(u.nparams == want[i][cond], "D=%d cond=%d: %ld parameters, PyTorch %ld",
                   Ds[i], cond, u.nparams, want[i][cond]);
            if (cond == 2) {
                const unet_param *c1 = unet_find(&u, "c1/fc1/weight");
                EXPECT(c1 && c1->shape[0] == 2 * Ds[i] && c1->shape[1] == 10,
                       "c1/fc1/weight [2D,10] (Linear [out,in])");
                EXPECT(unet_find(&u, "t2/fc2/bias") != NULL, "t2/fc2/bias named");
            }
            unet_free(&u);
        }
    for (int i = 0; i < 2; i++) {
        unet u;
        unet_shape sh = {.D = Ds[i], .m = 1};
        unet_init(&u, &sh);
        const unet_param *h = unet_find(&u, "head/weight");
        EXPECT(h && h->shape[0] == 1 && h->shape[1] == Ds[i] && h->shape[2] == 3,
               "head weight [1,D,3,3]");
        const unet_param *t = unet_find(&u, "up1/0/weight");
        EXPECT(t && t->shape[0] == 4 * Ds[i] && t->shape[1] == Ds[i] && t->shape[2] == 4,
               "ConvTranspose weight [in,out,k,k]");
        EXPECT(unet_find(&u, "unflatten/bn_running_var") != NULL, "running var named");
        unet_free(&u);
    }
}

/* ---- The gradient against finite differences ----------------------------
 * The network computes in float, so the loss L (summed in double from the
 * float outputs) carries rounding noise: a function of the parameters that
 * changes at random when a parameter moves by one ulp, of standard deviation
 * sigma (measured per model by loss_noise: 2e-9 to 8e-9 here, L 0.2 to 0.6).
 * For entry i, with h = 4e-2 * max(|p_i|, 1) and s = h at the first level:
 *   D(t)  = (L(p_i + t) - L(p_i - t)) / (actual float step),
 *           t = s, s/2, s/4, s/8 (D0 .. D3)
 *   Qk    = (4 D(k+1) - Dk) / 3, k = 0, 1, 2 (Richardson: the O(t^2) term
 *           cancels)
 *   fd    = Q2;  est = max(|Q0 - Q1|, |Q1 - Q2|), its truncation error
 *           (two differences, because one can be small by chance while the
 *           steps are still too large for the Taylor series)
 *   eta   = 4 x the bound on fd's rounding noise (D(t) has sd
 *           sigma / (sqrt2 t)): (4 sqrt2 sigma / (2 s/8) + sqrt2 sigma /
 *           (2 s/4)) / 3 = 6 sqrt2 sigma / s; the absolute floor.
 * g passes when |g - fd| <= 1e-3 |fd| + eta + est (1e-3: float backprop
 * over thousands of terms, with room).
 * The step is chosen per entry: where est > 3e-3 |fd| + eta (the loss is
 * strongly curved in that parameter at that scale: a normalisation group
 * of small variance, say), the level moves down (s = h/2: D(h/2) ..
 * D(h/16)), and so on to s = h/8, eta growing as 1/s. An entry that has not
 * converged even there is ill-conditioned: excluded by that rule, named on
 * stderr, and at most 5 % of the entries may be. Over 20 seeds of the data
 * and the initialisation (22840 entries), the worst |g - fd| was 0.47 of
 * its tolerance and 2 entries were excluded (an unflatten bias under
 * GroupNorm). The old rule, "at most one entry off by 5 % + 2e-5", passed
 * a 2 % error in the head's bias gradient, 3 % in FiLM's class-embedding
 * gradient and 5 % in GroupNorm's dgamma; this check fails all three. */
#define FD_RTOL 1e-3
#define FD_NOISE_SIGMAS 4.0
#define FD_CONVERGED 3e-3
#define FD_LEVELS 4 /* s = h, h/2, h/4, h/8: steps down to h/64 */

typedef struct {
    long i;        /* flat parameter index */
    double fd;     /* Q2 */
    double est;    /* max(|Q0 - Q1|, |Q1 - Q2|) */
    double eta;    /* noise floor */
    int ill;       /* excluded by the rule above */
} fd_entry;

/* Does g disagree with the finite difference of entry e? */
static int fd_disagrees(double g, const fd_entry *e) {
    return fabs(g - e->fd) > FD_RTOL * fabs(e->fd) + e->eta + e->est;
}

static double loss_at(unet *u, dm_dist *d, long i, float v) {
    const float keep = u->p[i];
    u->p[i] = v;
    const double l = loss_and_grad(u, d, NULL);
    u->p[i] = keep;
    return l;
}

/* sigma: the loss at 16 consecutive floats of one parameter, whose true
 * change over 15 ulps is linear to ~1e-13; the RMS residual of a straight-
 * line fit is rounding. The largest over every 7th tensor (the first is
 * inc/0/weight, which every activation depends on). */
static double loss_noise(unet *u, dm_dist *d) {
    double worst = 0.0;
    for (int q = 0; q < u->nparams_t; q += 7) {
        const unet_param *p = &u->params[q];
        if (!p->trainable) continue;
        double xs[16], ys[16], mx = 0.0, my = 0.0, sxx = 0.0, sxy = 0.0, res = 0.0;
        float v = u->p[p->offset];
        for (int k = 0; k < 16; k++, v = nextafterf(v, INFINITY)) {
            xs[k] = v, ys[k] = loss_at(u, d, p->offset, v);
            mx += xs[k] / 16, my += ys[k] / 16;
        }
        for (int k = 0; k < 16; k++)
            sxx += (xs[k] - mx) * (xs[k] - mx), sxy += (xs[k] - mx) * (ys[k] - my);
        for (int k = 0; k < 16; k++) {
            const double e = ys[k] - my - sxy / sxx * (xs[k] - mx);
            res += e * e;
        }
        if (sqrt(res / 14) > worst) worst = sqrt(res / 14);
    }
    return worst;
}

/* Central difference at step s, over the actual float step. */
static double central(unet *u, dm_dist *d, long i, float s) {
    const float keep = u->p[i], vp = keep + s, vm = keep - s;
    return (loss_at(u, d, i, vp) - loss_at(u, d, i, vm)) / ((double)vp - (double)vm);
}

static fd_entry fd_estimate(unet *u, dm_dist *d, long i, double sigma) {
    fd_entry e = {.i = i};
    const float h = 4e-2f * (fabsf(u->p[i]) > 1 ? fabsf(u->p[i]) : 1);
    double c[FD_LEVELS + 3];
    for (int k = 0; k < 3; k++) c[k] = central(u, d, i, h / (float)(1 << k));
    for (int lev = 0; lev < FD_LEVELS; lev++) {
        const float s = h / (float)(1 << lev);
        c[lev + 3] = central(u, d, i, s / 8);
        double q[3];
        for (int k = 0; k < 3; k++) q[k] = (4 * c[lev + k + 1] - c[lev + k]) / 3;
        e.fd = q[2];
        e.est = fmax(fabs(q[0] - q[1]), fabs(q[1] - q[2]));
        e.eta = FD_NOISE_SIGMAS * 6 * sqrt(2.0) * sigma / s;
        e.ill = e.est > FD_CONVERGED * fabs(e.fd) + e.eta;
        if (!e.ill) break;
    }
    return e;
}

/* "tensor[index]" of flat parameter index i. */
static const char *entry_name(const unet *u, long i, char *buf, size_t size) {
    for (int q = 0; q < u->nparams_t; q++) {
        const unet_param *p = &u->params[q];
        if (p->trainable && i >= p->offset && i < p->offset + p->size) {
            snprintf(buf, size, "%s[%ld]", p->name, i - p->offset);
            return buf;
        }
    }
    snprintf(buf, size, "[%ld]", i);
    return buf;
}

/* Entries of g that disagree; the first one in *first. */
static int count_bad(const float *g, const fd_entry *es, int n, long *first) {
    int bad = 0;
    *first = -1;
    for (int k = 0; k < n; k++)
        if (!es[k].ill && fd_disagrees(g[es[k].i], &es[k]) && bad++ == 0) *first = es[k].i;
    return bad;
}

/* Three distinct entries of every trainable tensor (all of smaller ones)
 * against finite differences: any disagreement fails. Then the check is
 * shown to fail: 5 % added to any one entry whose size allows it is caught,
 * and the whole check run on such a gradient names that entry alone. */
static void check_gradient(int key, cond_mix mix, dm_norm norm, int classes,
                           const char *what) {
    dm_rng r;
    rng_init(&r, 11, 98, (uint64_t)key, 0);
    unet u;
    unet_shape sh = {.D = D, .mix = mix, .norm = norm, .groups = 2, .m = M, .max_mb = NMB,
                     .classes = classes};
    unet_init(&u, &sh);
    unet_init_params(&u, 3);
    dm_dist d;
    dist_init(&d, MPI_COMM_WORLD, u.nparams, NMB, 8 * D, 0, 1);
    float *g = calloc((size_t)u.nparams, sizeof(float));
    fd_entry *es = calloc(3 * UNET_MAX_PARAMS, sizeof(fd_entry));
    loss_and_grad(&u, &d, g);
    const double sigma = loss_noise(&u, &d);
    int n = 0;
    for (int q = 0; q < u.nparams_t; q++) {
        const unet_param *p = &u.params[q];
        if (!p->trainable) continue;
        long pick[3];
        for (int e = 0; e < 3 && e < p->size; e++) {
            int fresh;
            do {
                pick[e] = p->size <= 3 ? e : (long)rng_below(&r, (uint32_t)p->size);
                fresh = 1;
                for (int k = 0; k < e; k++) fresh &= pick[k] != pick[e];
            } while (!fresh);
            es[n++] = fd_estimate(&u, &d, p->offset + pick[e], sigma);
        }
    }
    int bad = 0, ill = 0, caught = 0, target = -1;
    double blind = 0.0; /* largest |g| where a 5 % error would pass */
    for (int k = 0; k < n; k++) {
        const fd_entry *e = &es[k];
        const double gi = g[e->i];
        char name[96];
        if (e->ill) {
            ill++;
            fprintf(stderr, "%s: %s excluded: finite differences %.6g do not converge "
                    "(est %.3g)\n", what, entry_name(&u, e->i, name, sizeof name), e->fd,
                    e->est);
        } else if (fd_disagrees(gi, e)) {
            bad++;
            fprintf(stderr, "%s: %s: backprop %.6g, finite difference %.6g (tolerance "
                    "%.3g)\n", what, entry_name(&u, e->i, name, sizeof name), gi, e->fd,
                    FD_RTOL * fabs(e->fd) + e->eta + e->est);
        } else if (fd_disagrees(1.05 * gi, e) && fd_disagrees(0.95 * gi, e)) {
            caught++;
            if (target < 0 || fabs(gi) < fabs(g[es[target].i])) target = k;
        } else if (fabs(gi) > blind) {
            blind = fabs(gi);
        }
    }
    EXPECT(bad == 0, "%s: %d of %d gradient entries disagree with finite differences",
           what, bad, n);
    EXPECT(ill * 20 <= n, "%s: %d of %d entries ill-conditioned, more than 5 %%", what,
           ill, n);
    printf("%s: %d entries, sigma_L %.2g, %d disagree, %d excluded; 5 %% off is caught "
           "in %d (all with |g| > %.2g)\n", what, n, sigma, bad, ill, caught, blind);
    /* The check has power: most entries would catch 5 %, and on a gradient
     * with 5 % added to one entry (the smallest such, the hardest) the whole
     * check reports that entry and no other. */
    EXPECT(caught * 2 >= n, "%s: a 5 %% error would be caught in only %d of %d entries",
           what, caught, n);
    if (target >= 0) {
        const long ti = es[target].i;
        const float keep = g[ti];
        long first;
        g[ti] = 1.05f * keep;
        int bad5 = count_bad(g, es, n, &first);
        g[ti] = keep;
        EXPECT(bad5 == 1 && first == ti, "%s: 5 %% added to entry %ld (g %.3g) gives %d "
               "disagreements (first %ld), expected exactly that entry", what, ti, keep,
               bad5, first);
    }
    double gnorm = 0;
    for (long i = 0; i < u.nparams; i++) gnorm += (double)g[i] * g[i];
    EXPECT(gnorm > 1e-8, "%s: gradient norm %g", what, gnorm);
    free(es);
    free(g);
    dist_free(&d);
    unet_free(&u);
}

/* The benchmark's FLOP count against hand counts. */
static void check_flops(void) {
    unet u;
    unet_shape sh = {.D = 128, .m = 1};
    unet_init(&u, &sh);
    double f, b;
    /* inc/1: Conv2d(128, 128, 3) on 28x28: 2 * 128 * 128 * 9 * 784 per
     * image forward; backward = weight gradient + input gradient. */
    unet_unit_flops(&u, 1, &f, &b);
    EXPECT(f == 231211008.0 && b == 2 * 231211008.0, "inc/1 flops %.0f / %.0f", f, b);
    /* inc/0 reads the data: no input gradient. */
    unet_unit_flops(&u, 0, &f, &b);
    EXPECT(f == 2.0 * 128 * 9 * 784 && b == f, "inc/0 flops %.0f / %.0f", f, b);
    /* up1/0: ConvTranspose2d(512, 128, 4, 2, 1) from 7x7:
     * 2 * 512 * 128 * 16 * 49 per image. */
    unet_unit_flops(&u, 10, &f, &b);
    EXPECT(strcmp(u.units[10].name, "up1/0") == 0 && f == 2.0 * 512 * 128 * 16 * 49,
           "up1/0 flops %.0f", f);
    double train = unet_train_flops(&u);
    EXPECT(train > 6.2e9 && train < 6.6e9, "D=128 training step %.3g FLOP/image (about 6.4e9)",
           train);
    unet_free(&u);
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    check_param_count();
    check_flops();
    dm_rng r;
    rng_init(&r, 7, 99, 0, 0);
    for (int j = 0; j < NMB; j++)
        for (int i = 0; i < M * 784; i++) {
            x[j][i] = rng_uniform(&r);
            tgt[j][i] = rng_uniform(&r);
        }
    check_gradient(0, COND_MIX_NONE, NORM_BATCH, 0, "plain");
    check_gradient(1, COND_MIX_ADD, NORM_BATCH, 0, "time, additive (DDPM)");
    check_gradient(1, COND_MIX_MUL, NORM_BATCH, 0, "time, multiplicative (flow)");
    check_gradient(2, COND_MIX_FILM, NORM_BATCH, 0, "time + class (FiLM)");
    check_gradient(3, COND_MIX_NONE, NORM_GROUP, 0, "plain, GroupNorm (2 groups)");
    check_gradient(4, COND_MIX_FILM, NORM_GROUP, 0, "time + class, GroupNorm (2 groups)");
    check_gradient(5, COND_MIX_NONE, NORM_BATCH, 10, "classifier (the judge), cross-entropy");
    int rc = test_finish("test_unet");
    MPI_Finalize();
    return rc;
}
