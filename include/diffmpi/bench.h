/* bench.h: `diffmpi bench`, the speed of the configured model on synthetic
 * data (no files): every rank first runs a conv-shaped sgemm at the same
 * time (the machine's own peak for this job), then a warm-up and `steps`
 * timed training steps (or, with sample != 0, sampler steps of 40 images).
 * Rank 0 prints images/s, GFLOP/s, the share of the sgemm peak, the time
 * per phase and the peak memory per rank; verbose adds FLOPs per layer.
 * Returns the process exit code, identical on every rank. */
#ifndef DIFFMPI_BENCH_H
#define DIFFMPI_BENCH_H

#include "diffmpi/config.h"

int bench_run(const dm_config *c, int steps, int sample, int verbose);

#endif
