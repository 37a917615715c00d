/* samples.h: the figures' data, written by rank 0 into <out>/samples.h5
 * (updated copy-on-write: a copy is modified, synced and renamed over the
 * old file) and as PNG grids beside it.
 *
 *   /noising/images [7,K,28,28]       fixed test digits at each sigma
 *   /denoise/epoch_NNNN/{clean,noisy,denoised} [K,28,28]  at sigma 0.5
 *   /ood/{noisy,denoised} [7,28,28], /ood/test_mse [7]     after the last
 *                                                          epoch
 * Diffusion models (after the epochs of `sample_epochs` and the last):
 *   /samples/epoch_NNNN/images [40,28,28], labels [40] (class models: 4 of
 *       each digit, else -1); attrs epoch, guidance, steps, seed, objective
 *   /batch_vis/epoch_NNNN/{x0,xt,x0_hat} [8,28,28], t [8]: the first 8
 *       training images, noised at 8 fixed times, and the model's estimate
 *   /trajectory/images [F,40,28,28], t [F]: the last epoch's sampling
 * Every group carries the sigmas and the test indices as attributes. All
 * evaluation runs the network in evaluation mode (BatchNorm: its running
 * statistics; GroupNorm: the same per-image statistics as in training).
 */
#ifndef DIFFMPI_SAMPLES_H
#define DIFFMPI_SAMPLES_H

#include "diffmpi/config.h"
#include "diffmpi/diffusion.h"
#include "diffmpi/data.h"
#include "diffmpi/unet.h"

#define SAMPLES_K 8 /* test digits 0..K-1 in the figures */

/* The sigmas of the noising figure and the out-of-distribution sweep. */
#define DM_NSIGMAS 7
extern const double dm_sigmas[DM_NSIGMAS];
/* The sigma of the per-epoch test MSE and the denoising figures: dm_sigmas[3]
 * == 0.5. Its index is also the noise stream, so the epoch's test MSE is the
 * sweep's value at this sigma, bit for bit, and the sweep reuses it. */
#define DM_SIGMA_EVAL 3

dm_status samples_noising(const char *out, const dm_config *c,
                          const dm_dataset *test);
/* Called on every rank; only rank 0 computes and writes. */
dm_status samples_epoch(const char *out, unet *u, const dm_config *c,
                        const dm_dataset *test, int epoch, int rank);
dm_status samples_ood(const char *out, unet *u, const dm_config *c,
                      const dm_dataset *test, const double *test_mse,
                      int rank);

/* Collective (sampling is spread over ranks); rank 0 writes. `sampler` is an
 * inference model holding the current weights. */
dm_status samples_diffusion(const char *out, unet *net, unet *sampler,
                            const dm_config *c, const ddpm_schedule *s,
                            const dm_dataset *train, int epoch, int rank);

#define SAMPLES_N 40     /* images sampled per epoch */
#define SAMPLES_FRAMES 31 /* trajectory frames kept at the last epoch */

#endif
