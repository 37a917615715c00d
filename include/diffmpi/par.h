/* par.h: a rank's threads (the `threads` key) for the work that is not a
 * matrix product; the products' engines (OpenBLAS, oneDNN) thread
 * themselves with the same count.
 *
 * A kernel cuts its work into at most par_threads() contiguous blocks of
 * whole units (channels, groups, parameters) and runs one block per
 * thread. Every sum stays inside one unit, and a unit is computed by the
 * same code whichever block holds it, so a result depends on the units
 * alone, never on the thread count:
 *
 *   // channels [PAR_LO, PAR_HI) of C, blocks worth a thread each
 *   PAR_FOR(C, (long)C * M) kernel_run(x + PAR_LO * M, PAR_HI - PAR_LO, M);
 *
 * The block's body calls the serial kernel on its range; the kernels keep
 * their per-CPU clones (DM_VECTOR_CLONES), which an OpenMP body inside a
 * cloned function would not get.
 */
#ifndef DIFFMPI_PAR_H
#define DIFFMPI_PAR_H

/* Elements below which a block is not worth waking a thread for. */
#define PAR_MIN_WORK (1L << 14)

/* Set the threads of this rank (>= 1): OpenMP's team size, which oneDNN
 * also reads. Nested regions run on one thread. */
void par_set_threads(int n);
int par_threads(void);
/* This thread's index in its team (0 outside a parallel region). */
int par_thread(void);
/* Blocks for `units` units costing `work` elements in all:
 * min(par_threads(), units, work / PAR_MIN_WORK), at least 1
 * (DIFFMPI_TEST_PAR_MIN_WORK replaces PAR_MIN_WORK in the tests); 1 inside
 * a parallel region (a thread running its own micro-batches). */
int par_blocks(long units, long work);
/* First unit of block b of nb over `units`. */
static inline long par_lo(long units, int nb, int b) { return units * b / nb; }

/* n items over the rank's threads as whole contiguous ranges: range t of
 * min(threads, n) (empty for t beyond), [*lo, *hi). */
void par_range(int n, int threads, int t, int *lo, int *hi);

/* x[0 .. n) = 0 on the rank's threads. */
void par_zero(float *x, long n);

/* One statement run for each block [PAR_LO, PAR_HI) of `units` units
 * (long) costing `work` elements, on as many threads as par_blocks says. */
#define PAR_FOR(units, work)                                                  \
    const long par_units_ = (units);                                          \
    const int par_nb_ = par_blocks(par_units_, (work));                       \
    _Pragma("omp parallel for num_threads(par_nb_) if (par_nb_ > 1)")         \
    for (int par_b_ = 0; par_b_ < par_nb_; par_b_++)
#define PAR_LO par_lo(par_units_, par_nb_, par_b_)
#define PAR_HI par_lo(par_units_, par_nb_, par_b_ + 1)

#endif
