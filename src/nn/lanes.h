/* lanes.h (internal): per-channel sums in double over 8 fixed lanes.
 * Element i goes to lane i % 8 and the lanes are added in a fixed tree, so
 * the loops vectorize and the result does not depend on the CPU's vector
 * width. bn2d.c and bn_gelu.c both sum through here, which is what makes
 * bn_gelu_backward_stats bitwise equal to bn2d_backward_stats. */
#ifndef DIFFMPI_LANES_H
#define DIFFMPI_LANES_H

enum { LANES = 8 };

static inline double lanes_total(const double *l) {
    return ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
}

/* Sums of x and x^2 over n elements: a[lane] += x, q[lane] += x*x. */
static inline void lanes_add_x_x2(double *a, double *q, const float *x, long n) {
    long i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int l = 0; l < LANES; l++) {
            a[l] += x[i + l];
            q[l] += (double)x[i + l] * x[i + l];
        }
    for (; i < n; i++) {
        a[i % LANES] += x[i];
        q[i % LANES] += (double)x[i] * x[i];
    }
}

/* BatchNorm's backward sums over elements [i0, i1) (i0 a multiple of
 * LANES): a[lane] += dy, b[lane] += dy * xhat, xhat = (x - mu) * is. */
static inline void lanes_add_dy_xhat(double *a, double *b, const float *dy,
                                     const float *x, float mu, float is,
                                     int i0, int i1) {
    int i = i0;
    for (; i + LANES <= i1; i += LANES)
        for (int l = 0; l < LANES; l++) {
            a[l] += dy[i + l];
            b[l] += (double)dy[i + l] * ((x[i + l] - mu) * is);
        }
    for (; i < i1; i++) {
        a[i % LANES] += dy[i];
        b[i % LANES] += (double)dy[i] * ((x[i] - mu) * is);
    }
}

#endif
