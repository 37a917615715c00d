/* bn2d.c: BatchNorm2d in training and eval mode, split into statistics,
 * normalisation and backward sums so that the caller can combine the
 * per-channel sums of several micro-batches (and ranks) before using them.
 *
 * Training step for one BN layer:
 *   forward:  bn2d_stats per micro-batch -> sum s1, s2 -> bn2d_finish_stats
 *             (and bn2d_update_running once) -> bn2d_forward per micro-batch
 *   backward: bn2d_backward_stats per micro-batch -> sum into G1, G2 ->
 *             bn2d_backward per micro-batch.
 * dgamma[c] = G2[c] and dbeta[c] = G1[c]; per micro-batch, g2 and g1 are
 * the leaf gradients of gamma and beta, so no separate kernel exists. */
#include "diffmpi/layers.h"

#include "diffmpi/par.h"

#include <math.h>

#include "lanes.h"

/* x [C][M]; s1, s2 [C] OVERWRITTEN with this micro-batch's sums. */
DM_VECTOR_CLONES
static void bn2d_stats_run(double *s1, double *s2, const float *x, int C, int M) {
    for (int c = 0; c < C; c++) {
        double a[LANES] = {0}, q[LANES] = {0};
        lanes_add_x_x2(a, q, x + (long)c * M, M);
        s1[c] = lanes_total(a);
        s2[c] = lanes_total(q);
    }
}

/* Biased batch variance from the sums; clamped since E[x^2] - E[x]^2 can
 * round slightly below zero for a constant channel. */
static double biased_var(double s1, double s2, double count) {
    const double mean = s1 / count, var = s2 / count - mean * mean;
    return var > 0.0 ? var : 0.0;
}

/* s1, s2 [C]: sums over count elements; mean, invstd [C] OVERWRITTEN. */
void bn2d_finish_stats(float *mean, float *invstd, const double *s1,
                       const double *s2, double count, int C, float eps) {
    for (int c = 0; c < C; c++) {
        mean[c] = (float)(s1[c] / count);
        invstd[c] = (float)(1.0 / sqrt(biased_var(s1[c], s2[c], count) + eps));
    }
}

/* run = (1 - momentum) * run + momentum * batch, with the batch variance
 * unbiased by count / (count - 1) as torch.nn.BatchNorm2d does. */
void bn2d_update_running(float *run_mean, float *run_var, const double *s1,
                         const double *s2, double count, int C,
                         float momentum) {
    for (int c = 0; c < C; c++) {
        const double var =
            biased_var(s1[c], s2[c], count) * count / (count - 1.0);
        run_mean[c] = (float)((1.0 - momentum) * run_mean[c] +
                              momentum * (s1[c] / count));
        run_var[c] = (float)((1.0 - momentum) * run_var[c] + momentum * var);
    }
}

/* x, y [C][M]; mean, invstd, gamma, beta [C]; y OVERWRITTEN. */
static void bn2d_forward_run(float *y, const float *x, const float *mean,
                  const float *invstd, const float *gamma, const float *beta,
                  int C, int M) {
    for (int c = 0; c < C; c++) {
        /* (x - mean) first: no cancellation when |mean| >> std. */
        const float scale = gamma[c] * invstd[c];
        for (int i = 0; i < M; i++)
            y[(long)c * M + i] =
                (x[(long)c * M + i] - mean[c]) * scale + beta[c];
    }
}

/* dy, x [C][M]; g1, g2 [C] OVERWRITTEN with this micro-batch's sums. */
DM_VECTOR_CLONES
static void bn2d_backward_stats_run(double *g1, double *g2, const float *dy,
                         const float *x, const float *mean, const float *invstd,
                         int C, int M) {
    for (int c = 0; c < C; c++) {
        const float *dyc = dy + (long)c * M, *xc = x + (long)c * M;
        const float mu = mean[c], is = invstd[c];
        double a[LANES] = {0}, b[LANES] = {0};
        lanes_add_dy_xhat(a, b, dyc, xc, mu, is, 0, M);
        g1[c] = lanes_total(a);
        g2[c] = lanes_total(b);
    }
}

/* dy, x, dx [C][M]; G1, G2 [C] summed over the count elements of the whole
 * batch; dx ADDED (NULL: nothing to do). */
static void bn2d_backward_run(float *dx, const float *dy, const float *x,
                   const float *mean, const float *invstd, const float *gamma,
                   const double *G1, const double *G2, double count, int C,
                   int M) {
    for (int c = 0; c < C; c++) {
        const float k = gamma[c] * invstd[c];
        const float m1 = (float)(G1[c] / count), m2 = (float)(G2[c] / count);
        for (int i = 0; i < M; i++) {
            const long j = (long)c * M + i;
            const float xhat = (x[j] - mean[c]) * invstd[c];
            dx[j] += k * (dy[j] - m1 - xhat * m2);
        }
    }
}

/* ---- over the rank's threads (par.h): whole channels per block; every
 * sum above is one channel's. ---- */

void bn2d_stats(double *s1, double *s2, const float *x, int C, int M) {
    PAR_FOR(C, (long)C * M) {
        const long c = PAR_LO;
        bn2d_stats_run(s1 + c, s2 + c, x + c * M, (int)(PAR_HI - c), M);
    }
}

void bn2d_forward(float *y, const float *x, const float *mean, const float *invstd,
                  const float *gamma, const float *beta, int C, int M) {
    PAR_FOR(C, (long)C * M) {
        const long c = PAR_LO, o = c * M;
        const int n = (int)(PAR_HI - c);
        bn2d_forward_run(y + o, x + o, mean + c, invstd + c, gamma + c, beta + c, n, M);
    }
}

void bn2d_backward_stats(double *g1, double *g2, const float *dy, const float *x,
                         const float *mean, const float *invstd, int C, int M) {
    PAR_FOR(C, (long)C * M) {
        const long c = PAR_LO, o = c * M;
        const int n = (int)(PAR_HI - c);
        bn2d_backward_stats_run(g1 + c, g2 + c, dy + o, x + o, mean + c, invstd + c, n, M);
    }
}

void bn2d_backward(float *dx, const float *dy, const float *x, const float *mean,
                   const float *invstd, const float *gamma, const double *G1,
                   const double *G2, double count, int C, int M) {
    if (!dx) return;
    PAR_FOR(C, (long)C * M) {
        const long c = PAR_LO, o = c * M;
        const int n = (int)(PAR_HI - c);
        bn2d_backward_run(dx + o, dy + o, x + o, mean + c, invstd + c, gamma + c, G1 + c,
                          G2 + c, count, n, M);
    }
}
