/* bn_gelu.c: BatchNorm2d followed by GELU, fused: the pair every
 * convolution of the UNet but the head ends with. Each function does in one
 * pass over memory what bn2d_forward, gelu_forward/gelu_backward and
 * bn2d_backward_stats do in two to four (see bn2d.c and gelu.c for the
 * separate layers, which the tests compare these against).
 *
 * Sums go through lanes.h, as bn2d.c's do. */
#include "diffmpi/layers.h"

#include "diffmpi/par.h"

#include "lanes.h"
#include "normal.h"

/* x, a [C][M]; mean, invstd, gamma, beta [C]. a = gelu(bn(x)), OVERWRITTEN. */
DM_VECTOR_CLONES
static void bn_gelu_forward_run(float *a, const float *x, const float *mean,
                     const float *invstd, const float *gamma, const float *beta,
                     int C, int M) {
    for (int c = 0; c < C; c++) {
        const float scale = gamma[c] * invstd[c], mu = mean[c], b = beta[c];
        const float *xc = x + (long)c * M;
        float *ac = a + (long)c * M;
        for (int i = 0; i < M; i++) {
            /* The same expression as bn2d_forward, so z is bitwise equal. */
            const float z = (xc[i] - mu) * scale + b;
            float cdf, pdf;
            normal_cdf_pdf(z, &cdf, &pdf);
            ac[i] = z * cdf;
        }
    }
}

enum { CHUNK = 512 };

/* da, x, dz [C][M]. dz = da * gelu'(bn(x)), OVERWRITTEN: the gradient at
 * BN's output. g1[c] = sum dz, g2[c] = sum dz * xhat, OVERWRITTEN: this
 * micro-batch's backward sums for bn2d_backward (and dbeta, dgamma). */
DM_VECTOR_CLONES
static void bn_gelu_backward_stats_run(float *dz, double *g1, double *g2, const float *da,
                            const float *x, const float *mean,
                            const float *invstd, const float *gamma,
                            const float *beta, int C, int M) {
    for (int c = 0; c < C; c++) {
        const float is = invstd[c], scale = gamma[c] * is, mu = mean[c], b = beta[c];
        const float *xc = x + (long)c * M, *dac = da + (long)c * M;
        float *dzc = dz + (long)c * M;
        double s1[LANES] = {0}, s2[LANES] = {0};
        for (int i0 = 0; i0 < M; i0 += CHUNK) {
            const int i1 = M - i0 < CHUNK ? M : i0 + CHUNK;
            for (int i = i0; i < i1; i++) {
                const float z = (xc[i] - mu) * scale + b;
                float cdf, pdf;
                normal_cdf_pdf(z, &cdf, &pdf);
                dzc[i] = dac[i] * (cdf + z * pdf);
            }
            /* The chunk of dz is in L1 now; CHUNK is a multiple of LANES,
             * so element i always lands in lane i % LANES. */
            lanes_add_dy_xhat(s1, s2, dzc, xc, mu, is, i0, i1);
        }
        g1[c] = lanes_total(s1);
        g2[c] = lanes_total(s2);
    }
}

/* ---- over the rank's threads (par.h): whole channels per block; every
 * sum above is one channel's. ---- */

void bn_gelu_forward(float *a, const float *x, const float *mean, const float *invstd,
                     const float *gamma, const float *beta, int C, int M) {
    PAR_FOR(C, (long)C * M) {
        const long c = PAR_LO, o = c * M;
        const int n = (int)(PAR_HI - c);
        bn_gelu_forward_run(a + o, x + o, mean + c, invstd + c, gamma + c, beta + c, n, M);
    }
}

void bn_gelu_backward_stats(float *dz, double *g1, double *g2, const float *da,
                            const float *x, const float *mean, const float *invstd,
                            const float *gamma, const float *beta, int C, int M) {
    PAR_FOR(C, (long)C * M) {
        const long c = PAR_LO, o = c * M;
        const int n = (int)(PAR_HI - c);
        bn_gelu_backward_stats_run(dz + o, g1 + c, g2 + c, da + o, x + o, mean + c,
                                   invstd + c, gamma + c, beta + c, n, M);
    }
}
