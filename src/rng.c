/* rng.c: Philox4x32-10 streams keyed by (seed, stream, a, b). */
#include "diffmpi/rng.h"

#include <math.h>
#include <Random123/philox.h>

void rng_init(dm_rng *r, uint64_t seed, uint32_t stream, uint64_t a,
              uint32_t b) {
    r->key[0] = (uint32_t)seed;
    r->key[1] = (uint32_t)(seed >> 32);
    /* ctr[0]: block index; ctr[1]: b; ctr[2]: low 32 bits of a;
     * ctr[3]: stream in the top 8 bits, high 24 bits of a below. */
    r->ctr[0] = 0;
    r->ctr[1] = b;
    r->ctr[2] = (uint32_t)a;
    r->ctr[3] = (stream << 24) | (uint32_t)((a >> 32) & 0xFFFFFFu);
    r->left = 0;
}

uint32_t rng_u32(dm_rng *r) {
    if (r->left == 0) {
        philox4x32_ctr_t c = {{r->ctr[0], r->ctr[1], r->ctr[2], r->ctr[3]}};
        philox4x32_key_t k = {{r->key[0], r->key[1]}};
        philox4x32_ctr_t out = philox4x32(c, k);
        for (int i = 0; i < 4; i++) r->buf[i] = out.v[i];
        r->ctr[0]++;
        r->left = 4;
    }
    return r->buf[4 - r->left--];
}

float rng_uniform(dm_rng *r) {
    return (float)(rng_u32(r) >> 8) * (1.0f / 16777216.0f);
}

uint32_t rng_below(dm_rng *r, uint32_t n) {
    /* Reject the top partial copy of [0, n) so every value is equally
     * likely. */
    uint32_t limit = UINT32_MAX - (UINT32_MAX % n);
    uint32_t x;
    do {
        x = rng_u32(r);
    } while (x >= limit);
    return x % n;
}

float rng_normal(dm_rng *r) {
    /* Box-Muller; u1 in (0, 1] so log never sees 0. Uses one pair of
     * uniforms per normal (the second normal is dropped) so that the i-th
     * normal of a stream does not depend on how many were drawn before in
     * pairs. */
    const double two_pi = 6.283185307179586476925286766559;
    double u1 = ((double)rng_u32(r) + 1.0) * (1.0 / 4294967296.0);
    double u2 = (double)rng_u32(r) * (1.0 / 4294967296.0);
    return (float)(sqrt(-2.0 * log(u1)) * cos(two_pi * u2));
}

void rng_fill_normal(dm_rng *r, float *x, long n) {
    for (long i = 0; i < n; i++) x[i] = rng_normal(r);
}

void rng_permutation(dm_rng *r, int32_t *perm, int32_t n) {
    for (int32_t i = 0; i < n; i++) perm[i] = i;
    for (int32_t i = n - 1; i > 0; i--) {
        int32_t j = (int32_t)rng_below(r, (uint32_t)i + 1);
        int32_t t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
}
