/* figures.h: what the figures of samples.h5 show, computed from the model
 * (samples.h writes it). Denoisers: the test digits noised at each sigma,
 * denoised at sigma 0.5, and one digit denoised at every sigma. Diffusion
 * models: 40 samples (4 of each digit for class models) with the run's
 * sampler, the last epoch's trajectory, and 8 training images noised at 8
 * fixed times with the model's estimate of the clean image. All run the
 * network in evaluation mode (BatchNorm: its running statistics; GroupNorm:
 * the same per-image statistics as in training).
 *
 *   float img[3 * SAMPLES_K * DM_PIX];
 *   figures_denoise(&net, cfg, &test, img);              // rank 0
 *   samples_write_denoise(out, cfg, epoch, img);
 *
 *   figures_diffusion f;
 *   figures_diffusion_run(&f, &net, &sampler, cfg, &sched, &train, epoch); // collective
 *   if (rank == 0) samples_write_diffusion(out, cfg, &f.data);
 *   figures_diffusion_free(&f);
 */
#ifndef DIFFMPI_FIGURES_H
#define DIFFMPI_FIGURES_H

#include "diffmpi/config.h"
#include "diffmpi/data.h"
#include "diffmpi/objective.h"
#include "diffmpi/sampler.h"
#include "diffmpi/samples.h"
#include "diffmpi/unet.h"

/* img [DM_NSIGMAS][SAMPLES_K][784]: test digits 0..K-1 at each sigma. */
void figures_noising(const dm_config *c, const dm_dataset *test, float *img);
/* img [3][SAMPLES_K][784]: clean, noisy at sigma 0.5, denoised by u. */
void figures_denoise(unet *u, const dm_config *c, const dm_dataset *test, float *img);
/* img [2][DM_NSIGMAS][784]: test digit 0 noisy at each sigma, denoised. */
void figures_ood(unet *u, const dm_config *c, const dm_dataset *test, float *img);

/* One sampling epoch's figures; data points into the buffers below. */
typedef struct {
    samples_diffusion data;
    sampler_request q;
    int32_t labels[SAMPLES_N];
    float vt[8], traj_t[SAMPLES_FRAMES];
    char progress[64];
    float *img, *vis, *traj; /* rank 0 */
} figures_diffusion;

/* The samples (sampler: an inference model with the weights to sample,
 * spread over the ranks, collective) and on rank 0 the training batch
 * estimated by net; the trajectory at the last epoch. */
void figures_diffusion_run(figures_diffusion *f, unet *net, unet *sampler, const dm_config *c,
                           const ddpm_schedule *s, const dm_dataset *train, int epoch, int rank);
void figures_diffusion_free(figures_diffusion *f);

#endif
