/* gn_gelu.c: GroupNorm followed by GELU, PyTorch's nn.GroupNorm(G, C)
 * semantics: for each image and each group of C/G consecutive channels,
 * normalise with the group's mean and biased variance (eps inside the
 * square root), then a per-channel affine gamma, beta. Statistics are per
 * image, so nothing is combined across micro-batches or ranks and train
 * and evaluation modes are the same computation.
 *
 * Layout as everywhere: x [C][N][HW] for one micro-batch. Sums in double
 * over fixed lanes (lanes.h), so results do not depend on the vector width.
 *
 *   forward:  gn_stats -> gn_gelu_forward
 *   backward: gn_gelu_backward_stats (dz at GN's output, per-channel
 *             dbeta/dgamma of this micro-batch) -> gn_backward */
#include "diffmpi/layers.h"

#include <math.h>

#include "diffmpi/par.h"
#include "lanes.h"
#include "normal.h"

/* x [C][N][HW]; mean, invstd [N][G] OVERWRITTEN. */
static void gn_stats_run(float *mean, float *invstd, const float *x, int C, int N, int HW,
                         int G, float eps, int g0, int g1) {
    int cg = C / G;
    double count = (double)cg * HW;
    for (int n = 0; n < N; n++)
        for (int g = g0; g < g1; g++) {
            double s1 = 0, s2 = 0;
            for (int c = g * cg; c < (g + 1) * cg; c++) {
                double a[LANES] = {0}, q[LANES] = {0};
                lanes_add_x_x2(a, q, x + ((long)c * N + n) * HW, HW);
                s1 += lanes_total(a);
                s2 += lanes_total(q);
            }
            double mu = s1 / count, var = s2 / count - mu * mu;
            if (var < 0) var = 0;
            mean[n * G + g] = (float)mu;
            invstd[n * G + g] = (float)(1.0 / sqrt(var + eps));
        }
}

/* a = gelu(gn(x)) OVERWRITTEN; x, a [C][N][HW]; mean, invstd [N][G];
 * gamma, beta [C]. */
DM_VECTOR_CLONES
static void gn_gelu_forward_run(float *a, const float *x, const float *mean,
                                const float *invstd, const float *gamma, const float *beta,
                                int C, int N, int HW, int G, int c0, int c1) {
    int cg = C / G;
    for (int c = c0; c < c1; c++)
        for (int n = 0; n < N; n++) {
            const int k = n * G + c / cg;
            const float scale = gamma[c] * invstd[k], mu = mean[k], b = beta[c];
            const float *xc = x + ((long)c * N + n) * HW;
            float *ac = a + ((long)c * N + n) * HW;
            for (int i = 0; i < HW; i++) {
                const float z = (xc[i] - mu) * scale + b;
                float cdf, pdf;
                normal_cdf_pdf(z, &cdf, &pdf);
                ac[i] = z * cdf;
            }
        }
}

/* dz = da * gelu'(gn(x)) OVERWRITTEN (the gradient at GN's output);
 * g1[c] = sum dz (dbeta), g2[c] = sum dz * xhat (dgamma) over this
 * micro-batch, OVERWRITTEN. */
DM_VECTOR_CLONES
static void gn_gelu_backward_stats_run(float *dz, double *g1, double *g2, const float *da,
                                       const float *x, const float *mean,
                                       const float *invstd, const float *gamma,
                                       const float *beta, int C, int N, int HW, int G, int c0,
                                       int c1) {
    int cg = C / G;
    for (int c = c0; c < c1; c++) {
        double s1[LANES] = {0}, s2[LANES] = {0};
        for (int n = 0; n < N; n++) {
            const int k = n * G + c / cg;
            const float is = invstd[k], scale = gamma[c] * is, mu = mean[k], b = beta[c];
            const long o = ((long)c * N + n) * HW;
            const float *xc = x + o, *dac = da + o;
            float *dzc = dz + o;
            for (int i = 0; i < HW; i++) {
                const float z = (xc[i] - mu) * scale + b;
                float cdf, pdf;
                normal_cdf_pdf(z, &cdf, &pdf);
                dzc[i] = dac[i] * (cdf + z * pdf);
            }
            /* Plane by plane: element i of plane n lands in lane i % LANES
             * (HW planes need not be multiples of LANES). */
            double a[LANES] = {0}, q[LANES] = {0};
            lanes_add_dy_xhat(a, q, dzc, xc, mu, is, 0, HW);
            for (int l = 0; l < LANES; l++) s1[l] += a[l], s2[l] += q[l];
        }
        g1[c] = lanes_total(s1);
        g2[c] = lanes_total(s2);
    }
}

/* dx (ADDED) from dz at GN's output: per image and group, with
 * dxhat = gamma*dz, A = sum dxhat, B = sum dxhat*xhat over the group's
 * count elements: dx = invstd * (dxhat - A/count - xhat*B/count). */
static void gn_backward_run(float *dx, const float *dz, const float *x, const float *mean,
                            const float *invstd, const float *gamma, int C, int N, int HW,
                            int G, int g0, int g1) {
    int cg = C / G;
    double count = (double)cg * HW;
    for (int n = 0; n < N; n++)
        for (int g = g0; g < g1; g++) {
            const float mu = mean[n * G + g], is = invstd[n * G + g];
            double A = 0, B = 0;
            for (int c = g * cg; c < (g + 1) * cg; c++) {
                const long o = ((long)c * N + n) * HW;
                double a[LANES] = {0}, q[LANES] = {0};
                lanes_add_dy_xhat(a, q, dz + o, x + o, mu, is, 0, HW);
                A += gamma[c] * lanes_total(a);
                B += gamma[c] * lanes_total(q);
            }
            const float ma = (float)(A / count), mb = (float)(B / count);
            for (int c = g * cg; c < (g + 1) * cg; c++) {
                const long o = ((long)c * N + n) * HW;
                const float gc = gamma[c];
                for (int i = 0; i < HW; i++) {
                    const float xhat = (x[o + i] - mu) * is;
                    dx[o + i] += is * (gc * dz[o + i] - ma - xhat * mb);
                }
            }
        }
}

/* ---- over the rank's threads (par.h): whole groups (statistics, the input
 * gradient) or channels per block; every sum above is one group's or one
 * channel's. ---- */

void gn_stats(float *mean, float *invstd, const float *x, int C, int N, int HW, int G,
              float eps) {
    PAR_FOR(G, (long)C * N * HW) gn_stats_run(mean, invstd, x, C, N, HW, G, eps, (int)PAR_LO,
                                             (int)PAR_HI);
}

void gn_gelu_forward(float *a, const float *x, const float *mean, const float *invstd,
                     const float *gamma, const float *beta, int C, int N, int HW, int G) {
    PAR_FOR(C, (long)C * N * HW) gn_gelu_forward_run(a, x, mean, invstd, gamma, beta, C, N, HW,
                                                    G, (int)PAR_LO, (int)PAR_HI);
}

void gn_gelu_backward_stats(float *dz, double *g1, double *g2, const float *da,
                            const float *x, const float *mean, const float *invstd,
                            const float *gamma, const float *beta, int C, int N, int HW,
                            int G) {
    PAR_FOR(C, (long)C * N * HW)
        gn_gelu_backward_stats_run(dz, g1, g2, da, x, mean, invstd, gamma, beta, C, N, HW, G,
                                   (int)PAR_LO, (int)PAR_HI);
}

void gn_backward(float *dx, const float *dz, const float *x, const float *mean,
                 const float *invstd, const float *gamma, int C, int N, int HW, int G) {
    if (!dx) return; /* the layer's input needs no gradient */
    PAR_FOR(G, (long)C * N * HW) gn_backward_run(dx, dz, x, mean, invstd, gamma, C, N, HW, G,
                                                (int)PAR_LO, (int)PAR_HI);
}
