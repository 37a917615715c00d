/* train.h: the training driver (`diffmpi train`) and the other commands
 * that run a model (`predict`).
 *
 * train_run is called on every rank with the same validated configuration;
 * it returns the process exit code (DM_EXIT_*), identical on every rank.
 */
#ifndef DIFFMPI_TRAIN_H
#define DIFFMPI_TRAIN_H

#include "diffmpi/config.h"

/* resume: NULL (fresh run), "auto" or a checkpoint path. */
int train_run(const dm_config *c, const char *out_dir, const char *resume);

/* `diffmpi bench`: synthetic data; warm-up, then `steps` timed training
 * steps (or sampler steps of 40 images with sample != 0); rank 0 prints
 * images/s, GFLOP/s, the share of the sgemm peak measured in the same run,
 * the time per phase and the peak memory per rank. */
int bench_run(const dm_config *c, int steps, int sample, int verbose);

/* predict: rank 0 reads IN (/x [N,1,28,28] float32), writes OUT (/y). */
int predict_run(const char *ckpt, const char *in_path, const char *out_path);

/* The sigmas of the noising figure and the out-of-distribution sweep. */
#define DM_NSIGMAS 7
extern const double dm_sigmas[DM_NSIGMAS];

#endif
