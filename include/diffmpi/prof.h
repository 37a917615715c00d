/* prof.h: per-phase wall-clock accounting for `diffmpi bench`.
 *
 *   prof_enable(1);
 *   double t = prof_start();  ...work...  prof_add(PROF_GEMM, t);
 *   prof_total[PROF_GEMM]     // seconds so far; prof_name(p) names phase p
 *
 * When disabled (training, tests) prof_start() returns 0 without reading
 * the clock and prof_add() does nothing, so instrumented kernels cost one
 * branch. Phases nest: only the innermost instrumented code is timed (GEMM
 * inside a convolution is GEMM, not "conv"). Where the rank's threads share
 * its micro-batches, thread 0 alone adds (its share of the work stands for
 * the rank's, and nothing races on the totals).
 */
#ifndef DIFFMPI_PROF_H
#define DIFFMPI_PROF_H

#include "diffmpi/common.h"
#include "diffmpi/par.h"

typedef enum {
    PROF_GEMM,      /* matrix products (gemm.h) */
    PROF_CAST,      /* rounding GEMM operands to bf16 */
    PROF_IM2COL,    /* im2col / col2im copies */
    PROF_ELEM,      /* BatchNorm, GELU, pooling, conditioning, loss */
    PROF_OPTIM,     /* Adam */
    PROF_COMM,      /* MPI data movement */
    PROF_WAIT,      /* waiting for the slowest rank (barrier before comm) */
    PROF_NPHASES
} prof_phase;

extern int prof_on;
extern double prof_total[PROF_NPHASES];

void prof_enable(int on);
void prof_reset(void);
/* The clock is dm_now() (common.h), the one monotonic clock of diffmpi. */
static inline double prof_start(void) { return prof_on ? dm_now() : 0.0; }
static inline void prof_add(prof_phase p, double t0) {
    if (prof_on && par_thread() == 0) prof_total[p] += dm_now() - t0;
}
const char *prof_name(prof_phase p);

#endif
