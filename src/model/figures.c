/* figures.c: the figures' data from the model (see figures.h). */
#include "diffmpi/figures.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "diffmpi/diffusion.h"

void figures_noising(const dm_config *c, const dm_dataset *test, float *img) {
    for (int s = 0; s < DM_NSIGMAS; s++)
        for (int i = 0; i < SAMPLES_K; i++)
            diffusion_noisy_at(c, img + (long)(s * SAMPLES_K + i) * DM_PIX,
                               test->images + (long)i * DM_PIX, dm_sigmas[s], s, i);
}

void figures_denoise(unet *u, const dm_config *c, const dm_dataset *test, float *img) {
    float *clean = img, *noisy = img + SAMPLES_K * DM_PIX,
          *den = img + 2 * SAMPLES_K * DM_PIX;
    memcpy(clean, test->images, sizeof(float) * SAMPLES_K * DM_PIX);
    for (int i = 0; i < SAMPLES_K; i++)
        diffusion_noisy_at(c, noisy + (long)i * DM_PIX, clean + (long)i * DM_PIX,
                           dm_sigmas[DM_SIGMA_EVAL], DM_SIGMA_EVAL, i);
    unet_predict(u, den, noisy, NULL, NULL, SAMPLES_K);
}

void figures_ood(unet *u, const dm_config *c, const dm_dataset *test, float *img) {
    float *noisy = img, *den = img + DM_NSIGMAS * DM_PIX;
    for (int s = 0; s < DM_NSIGMAS; s++)
        diffusion_noisy_at(c, noisy + (long)s * DM_PIX, test->images, dm_sigmas[s], s, 0);
    unet_predict(u, den, noisy, NULL, NULL, DM_NSIGMAS);
}

/* The first 8 training images at 8 fixed times, and the model's estimate of
 * the clean image: img = [x0 | xt | x0_hat] each [8][784]. */
static void batch_vis(unet *net, const dm_config *c, const ddpm_schedule *s,
                      const dm_dataset *train, float *img, float *t) {
    enum { K = 8 };
    float *target = dm_malloc(sizeof(float) * 2 * K * DM_PIX), *out = target + K * DM_PIX;
    int32_t labels[K];
    float *x0 = img, *xt = img + K * DM_PIX, *est = img + 2 * K * DM_PIX;
    memcpy(x0, train->images, sizeof(float) * K * DM_PIX);
    for (int i = 0; i < K; i++) {
        diffusion_example_at(c, s, xt + i * DM_PIX, target + i * DM_PIX, &t[i],
                             x0 + i * DM_PIX, train->labels[i], (i + 0.5) / K, 2000, i);
        labels[i] = c->conditioning == CONDITIONING_CLASS ? train->labels[i] : -1;
    }
    unet_predict(net, out, xt, t, labels, K);
    for (int i = 0; i < K; i++)
        diffusion_x0_hat(c, s, est + i * DM_PIX, xt + i * DM_PIX, out + i * DM_PIX, t[i],
                         DM_PIX);
    free(target);
}

void figures_diffusion_run(figures_diffusion *f, unet *net, unet *sampler, const dm_config *c,
                           const ddpm_schedule *s, const dm_dataset *train, int epoch, int rank) {
    int class_model = c->conditioning == CONDITIONING_CLASS, last = epoch == c->epochs;
    memset(f, 0, sizeof *f);
    for (int i = 0; i < SAMPLES_N; i++) f->labels[i] = class_model ? i / 4 : -1;
    snprintf(f->progress, sizeof f->progress, "epoch %d: sampling %d images", epoch,
             SAMPLES_N);
    sampler_request *q = &f->q;
    sampler_request_init(q, c);
    q->n = SAMPLES_N;
    q->labels = f->labels;
    q->frames = !last ? 0 : q->steps + 1 < SAMPLES_FRAMES ? q->steps + 1 : SAMPLES_FRAMES;
    q->progress = f->progress;
    if (rank == 0) {
        f->img = dm_calloc(SAMPLES_N * DM_PIX, sizeof(float));
        f->traj = q->frames ? dm_calloc((size_t)q->frames * SAMPLES_N * DM_PIX, sizeof(float))
                            : NULL;
    }
    sampler_run(sampler, c, q, f->img, f->traj, f->traj_t);
    if (rank != 0) return;
    f->vis = dm_malloc(sizeof(float) * 24 * DM_PIX);
    batch_vis(net, c, s, train, f->vis, f->vt);
    f->data = (samples_diffusion){.epoch = epoch, .how = sampler_describe(q, c),
                                  .img = f->img, .labels = f->labels, .vis = f->vis,
                                  .vt = f->vt, .frames = q->frames, .traj = f->traj,
                                  .traj_t = f->traj_t};
}

void figures_diffusion_free(figures_diffusion *f) {
    free(f->img), free(f->vis), free(f->traj);
    f->img = f->vis = f->traj = NULL;
}
