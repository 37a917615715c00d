/* gelu.c: GELU in PyTorch's default (exact, erf) form, elementwise over n
 * floats of any layout, with a normal cdf/pdf that the compiler vectorizes.
 *
 * gelu(x) = x * Phi(x), Phi the standard normal cdf = (1 + erf(x/sqrt2))/2.
 * libm's erff/expf are scalar calls, a large share of a D=128 training
 * step; normal_cdf_pdf below is branch-free float arithmetic, so one loop
 * of it becomes SSE/AVX2/AVX-512 code (see DM_VECTOR_CLONES in layers.h).
 *
 *   |x| < 1:  Phi(x) = 1/2 + x * P(x^2),        P of degree 5
 *   |x| >= 1: Phi(-t) = exp(-t^2/2) * R(s),     s = 1/(1 + 0.3 t), t = |x|,
 *             R of degree 8, t clamped to 6; Phi(x) = 1 - Phi(-t) for x > 0
 *   x < -9:   Phi = 0 (PyTorch's float erf already gives 0 below -5.5).
 * P and R were fitted here by weighted least squares on Chebyshev nodes
 * against mpmath (relative error 8e-10 and 2e-10 in exact arithmetic);
 * exp uses Cody-Waite reduction to |r| <= ln2/2 and a degree-6 fit
 * (2e-9). In float the cdf is within 2.4e-7 of the exact value over all x
 * (test_layers checks a dense grid against double erf). */
#include "diffmpi/layers.h"

#include "diffmpi/par.h"
#include "normal.h"

float gelu_cdf(float x) {
    float c, p;
    normal_cdf_pdf(x, &c, &p);
    return c;
}

/* y[i] = x * Phi(x); y OVERWRITTEN (may alias x). */
DM_VECTOR_CLONES
static void gelu_forward_run(float *y, const float *x, long n) {
    for (long i = 0; i < n; i++) {
        float c, p;
        normal_cdf_pdf(x[i], &c, &p);
        y[i] = x[i] * c;
    }
}

/* gelu'(x) = Phi(x) + x * phi(x). dx ADDED (NULL: nothing to do). */
DM_VECTOR_CLONES
static void gelu_backward_run(float *dx, const float *dy, const float *x, long n) {
    for (long i = 0; i < n; i++) {
        float c, p;
        normal_cdf_pdf(x[i], &c, &p);
        dx[i] += dy[i] * (c + x[i] * p);
    }
}

/* Elementwise: any cut of [0, n) gives the same floats. */
void gelu_forward(float *y, const float *x, long n) {
    PAR_FOR(n, n) gelu_forward_run(y + PAR_LO, x + PAR_LO, PAR_HI - PAR_LO);
}

void gelu_backward(float *dx, const float *dy, const float *x, long n) {
    if (!dx) return;
    PAR_FOR(n, n) gelu_backward_run(dx + PAR_LO, dy + PAR_LO, x + PAR_LO, PAR_HI - PAR_LO);
}
