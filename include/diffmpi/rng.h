/* rng.h: counter-based random numbers (Random123 Philox4x32-10).
 *
 * Every random draw is a pure function of (seed, stream, a, b, i): there is
 * no per-rank state, so which rank draws a number never changes it. Training
 * noise for the sample at position `pos` of the global batch of step `step`
 * comes from rng_init(&r, seed, DM_STREAM_NOISE, step, pos), and so on.
 *
 *   dm_rng r;
 *   rng_init(&r, seed, DM_STREAM_INIT, layer_index, 0);
 *   float u = rng_uniform(&r);   // [0, 1)
 *   float z = rng_normal(&r);    // N(0, 1), Box-Muller in double
 */
#ifndef DIFFMPI_RNG_H
#define DIFFMPI_RNG_H

#include <stdint.h>

enum {
    DM_STREAM_INIT = 1,     /* parameter initialisation: a = parameter id */
    DM_STREAM_SHUFFLE = 2,  /* per-epoch permutation: a = epoch */
    DM_STREAM_NOISE = 3,    /* training noise: a = step, b = position; a >= 2^62:
                               bn_recalibrate's batches (train.c) */
    DM_STREAM_TIME = 4,     /* diffusion timestep: a = step, b = position */
    DM_STREAM_DROP = 5,     /* class dropout: a = step, b = position */
    DM_STREAM_EVAL = 6,     /* evaluation noise: a = purpose, b = image */
    DM_STREAM_SAMPLE = 7,   /* sampling noise: a = sampler step, b = image */
};

typedef struct dm_rng {
    uint32_t key[2];
    uint32_t ctr[4];   /* ctr[0] counts blocks within one (stream, a, b) */
    uint32_t buf[4];
    int left;          /* unused words left in buf */
} dm_rng;

void rng_init(dm_rng *r, uint64_t seed, uint32_t stream, uint64_t a,
              uint32_t b);
uint32_t rng_u32(dm_rng *r);
/* Uniform in [0, 1) with 24 random bits, exactly representable as float. */
float rng_uniform(dm_rng *r);
/* Uniform integer in [0, n), n > 0 (rejection sampling, unbiased). */
uint32_t rng_below(dm_rng *r, uint32_t n);
/* Standard normal (Box-Muller, computed in double, rounded to float). */
float rng_normal(dm_rng *r);
/* Fill x[0..n) with standard normals. */
void rng_fill_normal(dm_rng *r, float *x, long n);
/* Fisher-Yates permutation of 0..n-1 into perm. */
void rng_permutation(dm_rng *r, int32_t *perm, int32_t n);

#endif
