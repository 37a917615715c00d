/* sampler.h: drawing images from a trained diffusion model with a sampler
 * of the table in solver.h, spread over the ranks and identical whatever
 * their number.
 *
 * The n images are cut into chunks of `chunk` images; rank r samples the
 * chunks dist_range(nchunks, size, r) and rank 0 gathers the results in
 * image order. Initial noise of image i is keyed by (seed, DM_STREAM_SAMPLE,
 * 0, i), the noise of sampler step s by (seed, DM_STREAM_SAMPLE, s+1, i), so
 * an image never depends on its chunk's neighbours or on the rank count.
 * Class models use classifier-free guidance: each network evaluation of a
 * chunk is one forward of 2*chunk images, the conditional half then the
 * unconditional (label -1) half. The model runs in evaluation mode
 * (BatchNorm: running statistics).
 *
 *   sampler_request q;
 *   sampler_request_init(&q, cfg);      // sampler, steps, eta, ... of cfg
 *   q.n = 40; q.labels = lab;
 *   sampler_run(&model, cfg, &q, images_on_rank0, NULL, NULL);
 */
#ifndef DIFFMPI_SAMPLER_H
#define DIFFMPI_SAMPLER_H

#include <stdint.h>
#include "diffmpi/config.h"
#include "diffmpi/samples.h"
#include "diffmpi/solver.h"
#include "diffmpi/unet.h"

typedef struct {
    int n;                  /* images */
    const int32_t *labels;  /* [n] digit or -1; NULL = all -1 */
    float guidance;         /* CFG scale (class models) */
    dm_sampler sampler;     /* a row of solver.h (never SAMPLER_AUTO) */
    dm_spacing spacing;
    int steps;              /* sampler steps */
    double eta;             /* ddim's sample_eta */
    uint64_t seed;
    const float *noise;     /* [n][784] the initial noise on every rank;
                               NULL: drawn from the seed */
    int invert;             /* 1: walk the grid backwards from noise = the
                               images to their noise (solver_plan_reverse) */
    int frames;             /* trajectory frames to keep (0 = none) */
    const char *progress;   /* rank 0 prints "<progress>: step s/S" every
                               log_every seconds; NULL: quiet */
    double log_every;
} sampler_request;

/* The request a configuration makes: its sampler (auto resolved), steps
 * (0: the objective's default), spacing, eta, guidance, seed and
 * log_every; no images (n = 0), no frames, no progress line. The
 * configuration has passed config_validate, which checks the sampler
 * keys (solver_check). */
void sampler_request_init(sampler_request *q, const dm_config *c);

/* The attributes that say how q samples (samples.h), for files. */
samples_sampler sampler_describe(const sampler_request *q, const dm_config *c);

/* The chunk size sampling uses for a configuration (sample_chunk). */
int sampler_chunk(const dm_config *c);
/* Rows a model used by sampler_run needs: 2*chunk for class models. */
/* Slots of the sampling model: one per thread of the rank (`threads`),
 * which draw chunks at once. */
int sampler_model_slots(const dm_config *c);
int sampler_model_rows(const dm_config *c);

/* u: a model of the configuration with m >= sampler_model_rows() and
 * sampler_model_slots() slots (fewer: fewer threads draw). On rank 0, images [n][784] receive the samples and, if frames > 0,
 * traj [frames][n][784] and traj_t [frames] the trajectory: frame f is the
 * state after floor(f*S/(frames-1)) steps (frames <= S+1), traj_t its
 * grid point's network time (frame 0 the initial noise at p[0].t, the last
 * the images at p[S].t: 1 for flow, -1/T for a DDPM). Collective. */
void sampler_run(unet *u, const dm_config *c, const sampler_request *q,
                 float *images, float *traj, float *traj_t);

#endif
