/* init.c: PyTorch's default parameter initialisation, U(-bound, bound)
 * (the caller picks bound = 1/sqrt(fan_in), see layers.h). */
#include "diffmpi/layers.h"
#include "diffmpi/rng.h"

/* w [n] OVERWRITTEN; draws n uniforms from rng in order, so the values depend
 * only on the rng's (seed, stream, a, b), never on which rank calls. */
void init_uniform(float *w, long n, float bound, struct dm_rng *rng) {
    for (long i = 0; i < n; i++)
        w[i] = (2.0f * rng_uniform(rng) - 1.0f) * bound;
}
