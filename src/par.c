/* par.c: see par.h. */
#include "diffmpi/par.h"

#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "diffmpi/common.h"

/* Test hook: DIFFMPI_TEST_PAR_MIN_WORK=n lowers the work a block needs, so
 * that the tiny models of the tests are cut as finely as their units allow. */
static long min_work = PAR_MIN_WORK;

void par_set_threads(int n) {
    omp_set_num_threads(n > 0 ? n : 1);
    omp_set_max_active_levels(1);
    const char *hook = getenv("DIFFMPI_TEST_PAR_MIN_WORK");
    long v;
    if (hook && dm_parse_long(hook, 1, PAR_MIN_WORK, &v)) min_work = v;
}

int par_threads(void) { return omp_get_max_threads(); }

int par_thread(void) { return omp_get_thread_num(); }

int par_blocks(long units, long work) {
    if (omp_in_parallel()) return 1; /* inside a thread's micro-batches: its own work */
    long nb = par_threads();
    if (nb > units) nb = units;
    if (nb > work / min_work) nb = work / min_work;
    return nb > 1 ? (int)nb : 1;
}

void par_zero(float *x, long n) {
    PAR_FOR(n, n / 4) memset(x + PAR_LO, 0, sizeof(float) * (size_t)(PAR_HI - PAR_LO));
}

void par_range(int n, int threads, int t, int *lo, int *hi) {
    const int nb = threads < n ? threads : n;
    *lo = t < nb ? (int)par_lo(n, nb, t) : n;
    *hi = t < nb ? (int)par_lo(n, nb, t + 1) : n;
}
