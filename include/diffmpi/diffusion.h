/* diffusion.h: the objectives (what the network sees and must predict) and
 * the samplers, for every model family of SPEC.md:
 *
 *   denoise     z = x + sigma*eps        target x
 *   pure_noise  z = eps                  target x
 *   ddpm        x_t = sqrt(abar_t) x + sqrt(1-abar_t) eps, t ~ U{0..T-1},
 *               network time t/T         target eps
 *   flow        x_t = (1-t) eps + t x, t ~ U[0,1]     target x - eps
 *
 * Every random number is keyed by (seed, step, position in the global
 * batch), so examples never depend on which rank builds them.
 */
#ifndef DIFFMPI_DIFFUSION_H
#define DIFFMPI_DIFFUSION_H

#include <stdint.h>
#include "diffmpi/config.h"
#include "diffmpi/unet.h"

#define DDPM_T 300

typedef struct {
    int T;
    double beta[DDPM_T], alpha[DDPM_T], abar[DDPM_T];
} ddpm_schedule;

/* beta linear from 1e-4 to 0.02 over T values (index 0..T-1),
 * alpha = 1 - beta, abar = cumulative product. */
void ddpm_schedule_init(ddpm_schedule *s);

/* The model a configuration describes. */
unet_shape diffusion_shape(const dm_config *c, int m, int max_mb, int inference);

/* One training example: network input z [784], target [784], time input
 * *t (0 for unconditioned models) and class label *label (-1 = none; class
 * models drop the label with probability p_uncond). */
void diffusion_example(const dm_config *c, const ddpm_schedule *s, float *z,
                       float *target, float *t, int *label, const float *x,
                       int x_label, int64_t step, int pos);

/* The same with a caller-chosen time (tq in [0,1)) and noise keyed by
 * (seed, DM_STREAM_EVAL, purpose, image): evaluation and figures. */
void diffusion_example_at(const dm_config *c, const ddpm_schedule *s, float *z,
                          float *target, float *t, const float *x, double tq,
                          uint64_t purpose, int image);

/* A denoiser's noisy input at a given sigma (z = x + sigma*eps, or eps for
 * pure_noise), noise keyed by (seed, DM_STREAM_EVAL, purpose, image):
 * evaluation and the figures, reproducible and rank-independent. */
void diffusion_noisy_at(const dm_config *c, float *z, const float *x, double sigma,
                        uint64_t purpose, int image);

/* Estimate of the clean image from a noisy input and the network output. */
void diffusion_x0_hat(const dm_config *c, const ddpm_schedule *s, float *x0,
                      const float *z, const float *out, float t, long n);

/* Default number of sampler steps for a configuration (300 DDPM, 50 flow
 * with time only, 300 flow with class). */
int diffusion_default_steps(const dm_config *c);

/* One DDPM ancestral step from index t to index tp < t (tp = -1 at the
 * end, abar_{-1} = 1) on n floats, with alpha = abar_t/abar_tp and
 * beta = 1 - alpha (the schedule's own values when tp = t-1):
 * x0 = (x - sqrt(1-abar_t) eps)/sqrt(abar_t);
 * x <- sqrt(abar_tp) beta/(1-abar_t) x0 + sqrt(alpha)(1-abar_tp)/(1-abar_t) x
 *      + sqrt(beta) z, z ignored at the last step. */
void ddpm_step(const ddpm_schedule *s, int t, int tp, float *x,
               const float *eps, const float *z, long n);
/* The i-th of S timesteps, from T-1 down to 0 (S = T: T-1-i). */
int ddpm_timestep(int i, int S);
/* One Euler step of flow matching: x <- x + u / N. */
void flow_step(float *x, const float *u, int N, long n);
/* Classifier-free guidance: out = eu + g * (ec - eu). */
void cfg_combine(float *out, const float *ec, const float *eu, float g, long n);

#endif
