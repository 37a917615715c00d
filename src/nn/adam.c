/* adam.c: see adam.h. */
#include "diffmpi/adam.h"

#include <math.h>

#include "diffmpi/par.h"

void adam_step(float *p, const float *g, float *m, float *v, long n, double lr,
               long t) {
    const float b1 = (float)ADAM_BETA1, b2 = (float)ADAM_BETA2;
    double bc1 = 1.0 - pow(ADAM_BETA1, (double)t);
    double bc2 = 1.0 - pow(ADAM_BETA2, (double)t);
    const float step_size = (float)(lr / bc1);
    const float bc2_sqrt = (float)sqrt(bc2);
    const float eps = (float)ADAM_EPS;
    /* Elementwise: any cut over the rank's threads gives the same floats. */
    PAR_FOR(n, 4 * n) {
        const long hi = PAR_HI;
        for (long i = PAR_LO; i < hi; i++) {
            m[i] += (1.0f - b1) * (g[i] - m[i]); /* torch: exp_avg.lerp_ */
            v[i] = b2 * v[i] + (1.0f - b2) * g[i] * g[i];
            float denom = sqrtf(v[i]) / bc2_sqrt + eps;
            p[i] -= step_size * (m[i] / denom);
        }
    }
}

double ema_decay_at(double decay, long t) {
    double warm = (1.0 + (double)t) / (10.0 + (double)t);
    return warm < decay ? warm : decay;
}

void ema_update(float *avg, const float *x, long n, double d) {
    const float k = (float)(1.0 - d);
    PAR_FOR(n, n) {
        const long hi = PAR_HI;
        for (long i = PAR_LO; i < hi; i++) avg[i] -= k * (avg[i] - x[i]);
    }
}
