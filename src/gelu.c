/* gelu.c: GELU in PyTorch's default (exact, erf) form, elementwise over n
 * floats of any layout. */
#include "diffmpi/layers.h"

#include <math.h>

/* M_SQRT1_2 is not in strict C11/POSIX; spelled out here. */
static const float gelu_rsqrt2 = 0.70710678118654752f;

/* y[i] = x/2 * (1 + erf(x / sqrt(2))); y OVERWRITTEN (may alias x). */
void gelu_forward(float *y, const float *x, long n) {
    for (long i = 0; i < n; i++)
        y[i] = 0.5f * x[i] * (1.0f + erff(x[i] * gelu_rsqrt2));
}

/* gelu'(x) = Phi(x) + x * phi(x), Phi/phi the standard normal cdf/pdf.
 * dx ADDED (NULL: nothing to do). */
void gelu_backward(float *dx, const float *dy, const float *x, long n) {
    if (!dx) return;
    const float inv_sqrt_2pi = 0.3989422804014327f;
    for (long i = 0; i < n; i++) {
        const float cdf = 0.5f * (1.0f + erff(x[i] * gelu_rsqrt2));
        const float pdf = inv_sqrt_2pi * expf(-0.5f * x[i] * x[i]);
        dx[i] += dy[i] * (cdf + x[i] * pdf);
    }
}
