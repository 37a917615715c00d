/* diffusion.h: examples and estimates for any objective of the table in
 * objective.h, keyed so that they never depend on the rank count.
 *
 * Every random number of a training example is keyed by (seed, step,
 * position in the global batch), of an evaluation example by (seed,
 * purpose, image), so examples never depend on which rank builds them.
 */
#ifndef DIFFMPI_DIFFUSION_H
#define DIFFMPI_DIFFUSION_H

#include <stdint.h>
#include "diffmpi/config.h"
#include "diffmpi/objective.h"
#include "diffmpi/unet.h"

/* The model a configuration describes. */
unet_shape diffusion_shape(const dm_config *c, int m, int max_mb, int inference);
/* What conv_algo does in this run, for the progress output ("" for im2col):
 * call after gemm_setup, as it depends on the precision. */
const char *diffusion_conv_note(const dm_config *c);

/* One training example: network input z [784], target [target_floats of
 * the objective's row], time input
 * *t (0 for unconditioned models) and class label *label (-1 = none; class
 * models drop the label with probability p_uncond). */
void diffusion_example(const dm_config *c, const ddpm_schedule *s, float *z,
                       float *target, float *t, int *label, const float *x,
                       int x_label, int64_t step, int pos);

/* The same with a caller-chosen time (tq in [0,1)), the image's label and
 * noise keyed by (seed, DM_STREAM_EVAL, purpose, image): evaluation and
 * figures. */
void diffusion_example_at(const dm_config *c, const ddpm_schedule *s, float *z,
                          float *target, float *t, const float *x, int label, double tq,
                          uint64_t purpose, int image);

/* A denoiser's noisy input at a given sigma (z = x + sigma*eps, or eps for
 * pure_noise), noise keyed by (seed, DM_STREAM_EVAL, purpose, image):
 * evaluation and the figures, reproducible and rank-independent. */
void diffusion_noisy_at(const dm_config *c, float *z, const float *x, double sigma,
                        uint64_t purpose, int image);

/* Estimate of the clean image from a noisy input and the network output. */
void diffusion_x0_hat(const dm_config *c, const ddpm_schedule *s, float *x0,
                      const float *z, const float *out, float t, long n);

/* Classifier-free guidance: out = eu + g * (ec - eu). */
void guidance_combine(float *out, const float *ec, const float *eu, float g, long n);

#endif
