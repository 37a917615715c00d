/* normal.h (internal): the standard normal cdf and pdf as branch-free
 * float arithmetic that vectorizes; shared by gelu.c and bn_gelu.c. How
 * the approximation was made and how accurate it is: see gelu.c. */
#ifndef DIFFMPI_NORMAL_H
#define DIFFMPI_NORMAL_H

#include <stdint.h>
#include <string.h>
/* exp(-x^2/2), with the exponent clamped at -80 so that neither the result
 * nor the products formed from it are subnormal. */
static inline float exp_neg_half_sq(float x) {
    float y = -0.5f * x * x;
    y = y < -80.0f ? -80.0f : y;
    /* n = round(y / ln2) by the 1.5*2^23 trick; r = y - n*ln2 in two
     * pieces (ln2_hi has 8 trailing zero bits, so n*ln2_hi is exact). */
    const float shift = 12582912.0f;
    const float k = y * 1.44269504f + shift;
    const float n = k - shift;
    const float r = (y - n * 0.693359375f) - n * -2.12194440e-4f;
    float p = 1.382945861e-03f;
    p = p * r + 8.374801073e-03f;
    p = p * r + 4.166835923e-02f;
    p = p * r + 1.666642048e-01f;
    p = p * r + 4.999999148e-01f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    /* 2^n: n in [-116, 0], so the biased exponent stays normal. Unsigned
     * arithmetic: for a NaN input the bits are garbage (the result is NaN
     * through p anyway) and a signed shift would overflow. */
    uint32_t ki, scale_bits;
    memcpy(&ki, &k, sizeof ki);
    scale_bits = (ki - 0x4B400000u + 127u) << 23;
    float scale;
    memcpy(&scale, &scale_bits, sizeof scale);
    return p * scale;
}

/* cdf = Phi(x); pdf = phi(x) = exp(-x^2/2) / sqrt(2 pi). */
static inline void normal_cdf_pdf(float x, float *cdf, float *pdf) {
    const float u = x * x;
    float ps = -7.680052629e-06f;
    ps = ps * u + 1.135555231e-04f;
    ps = ps * u + -1.186396307e-03f;
    ps = ps * u + 9.973350565e-03f;
    ps = ps * u + -6.649036420e-02f;
    ps = ps * u + 3.989422803e-01f;
    const float small = 0.5f + x * ps;

    const float e = exp_neg_half_sq(x);
    float t = x < 0.0f ? -x : x;
    t = t > 6.0f ? 6.0f : t;
    const float s = 1.0f / (1.0f + 0.3f * t);
    float q = 4.608185103e-02f;
    q = q * s + -2.022665747e-01f;
    q = q * s + 2.894125017e-01f;
    q = q * s + -1.386377491e-01f;
    q = q * s + 1.812251736e-01f;
    q = q * s + 7.966784998e-02f;
    q = q * s + 1.254683074e-01f;
    q = q * s + 1.190205593e-01f;
    q = q * s + 3.345553561e-05f;
    const float tail = e * q; /* Phi(-|x|) */
    const float large = x > 0.0f ? 1.0f - tail : tail;
    const float c = (x < 1.0f && x > -1.0f) ? small : large;
    *cdf = x < -9.0f ? 0.0f : c;
    *pdf = x < -9.0f ? 0.0f : e * 0.398942280f;
}

#endif
