/* samples.h: the figures' data, written by rank 0 into <out>/samples.h5
 * (updated copy-on-write: a copy is modified, synced and renamed over the
 * old file) and as PNG grids beside it. This module only writes what it is
 * given; figures.h computes it.
 *
 *   /noising/images [7,K,28,28]       fixed test digits at each sigma
 *   /denoise/epoch_NNNN/{clean,noisy,denoised} [K,28,28]  at sigma 0.5
 *   /ood/{noisy,denoised} [7,28,28], /ood/test_mse [7]     after the last
 *                                                          epoch
 * Diffusion models (after the epochs of `sample_epochs` and the last):
 *   /samples/epoch_NNNN/images [40,28,28], labels [40] (class models: 4 of
 *       each digit, else -1); attrs epoch, sampler, steps, evaluations,
 *       spacing, eta, guidance (class models), seed, objective
 *   /batch_vis/epoch_NNNN/{x0,xt,x0_hat} [8,28,28], t [8]: the first 8
 *       training images, noised at 8 fixed times, and the model's estimate
 *   /trajectory/images [F,40,28,28], t [F]: the last epoch's sampling, F =
 *       min(31, steps + 1) frames, t the network time of each
 * Every group carries the sigmas and the test indices as attributes.
 */
#ifndef DIFFMPI_SAMPLES_H
#define DIFFMPI_SAMPLES_H

#include <hdf5.h>
#include <stdint.h>

#include "diffmpi/config.h"
#include "diffmpi/data.h"

#define SAMPLES_K 8 /* test digits 0..K-1 in the figures */

/* The sigmas of the noising figure and the out-of-distribution sweep. */
#define DM_NSIGMAS 7
extern const double dm_sigmas[DM_NSIGMAS];
/* The sigma of the per-epoch test MSE and the denoising figures: dm_sigmas[3]
 * == 0.5. Its index is also the noise stream, so the epoch's test MSE is the
 * sweep's value at this sigma, bit for bit, and the sweep reuses it. */
#define DM_SIGMA_EVAL 3

#define SAMPLES_N 40     /* images sampled per epoch */
#define SAMPLES_FRAMES 31 /* trajectory frames kept at the last epoch, at most */

/* How images were sampled: the attributes of a samples group and of a
 * `diffmpi sample` file. */
typedef struct {
    const char *sampler, *spacing, *objective;
    int steps, evaluations;   /* evaluations: network evaluations per image */
    double eta, guidance;     /* guidance NaN: no class to guide by */
    uint64_t seed;
} samples_sampler;

dm_status samples_sampler_attrs(hid_t loc, const char *file, const samples_sampler *s);

/* img [DM_NSIGMAS][SAMPLES_K][784]: the test digits at each sigma. */
dm_status samples_write_noising(const char *out, const dm_config *c, const float *img);
/* img [3][SAMPLES_K][784]: clean, noisy at sigma 0.5, denoised. */
dm_status samples_write_denoise(const char *out, const dm_config *c, int epoch,
                                const float *img);
/* img [2][DM_NSIGMAS][784]: one test digit noisy at each sigma, denoised;
 * test_mse [DM_NSIGMAS]. */
dm_status samples_write_ood(const char *out, const dm_config *c, const float *img,
                            const double *test_mse);

/* What one sampling epoch of a diffusion model adds to samples.h5. */
typedef struct {
    int epoch;
    samples_sampler how;
    const float *img;        /* [SAMPLES_N][784] samples */
    const int32_t *labels;   /* [SAMPLES_N] */
    const float *vis, *vt;   /* batch_vis: [x0 | xt | x0_hat] [3][8][784], t [8] */
    int frames;              /* trajectory frames, 0: none */
    const float *traj;       /* [frames][SAMPLES_N][784] */
    const float *traj_t;     /* [frames] */
} samples_diffusion;

dm_status samples_write_diffusion(const char *out, const dm_config *c,
                                  const samples_diffusion *e);


#endif
