/* mse.c: the squared-error part of the diffusion loss for one micro-batch.
 * The caller sums the returned values over micro-batches and ranks and
 * divides by the global element count; dy already carries that 1/count. */
#include "diffmpi/layers.h"

/* y, t, dy [n]; returns sum (y - t)^2 in double; dy OVERWRITTEN with the
 * gradient of scale * sum (y - t)^2, i.e. 2 (y - t) * scale. */
double mse_forward_backward(float *dy, const float *y, const float *t, long n,
                            float scale) {
    double acc = 0.0;
    for (long i = 0; i < n; i++) {
        const float d = y[i] - t[i];
        acc += (double)d * d;
        dy[i] = 2.0f * d * scale;
    }
    return acc;
}
