/* sampler.h: drawing images from a trained diffusion model, spread over the
 * ranks and identical whatever their number.
 *
 * The n images are cut into chunks of `chunk` images; rank r samples the
 * chunks dist_range(nchunks, size, r) and rank 0 gathers the results in
 * image order. Initial noise of image i is keyed by (seed, DM_STREAM_SAMPLE,
 * 0, i), the noise of sampler step s by (seed, DM_STREAM_SAMPLE, s+1, i), so
 * an image never depends on its chunk's neighbours or on the rank count.
 * Class models use classifier-free guidance: each chunk runs one forward of
 * 2*chunk images, the conditional half then the unconditional (label -1)
 * half. The model runs in evaluation mode (BatchNorm: running statistics).
 *
 *   sampler_request q = {.n = 40, .labels = lab, .guidance = 5, .steps = 300,
 *                        .seed = 0, .frames = 0};
 *   sampler_run(&model, cfg, &q, images_on_rank0, NULL, NULL);
 */
#ifndef DIFFMPI_SAMPLER_H
#define DIFFMPI_SAMPLER_H

#include <stdint.h>
#include "diffmpi/config.h"
#include "diffmpi/unet.h"

typedef struct {
    int n;                  /* images */
    const int32_t *labels;  /* [n] digit or -1; NULL = all -1 */
    float guidance;         /* CFG scale (class models) */
    int steps;              /* sampler steps */
    uint64_t seed;
    int frames;             /* trajectory frames to keep (0 = none) */
    const char *progress;   /* rank 0 prints "<progress>: step s/S" every
                               log_every seconds; NULL: quiet */
    double log_every;
} sampler_request;

/* The chunk size sampling uses for a configuration (sample_chunk). */
int sampler_chunk(const dm_config *c);
/* Rows a model used by sampler_run needs: 2*chunk for class models. */
int sampler_model_rows(const dm_config *c);

/* u: a model of the configuration with m >= sampler_model_rows() and one
 * slot. On rank 0, images [n][784] receive the samples and, if frames > 0,
 * traj [frames][n][784] and traj_t [frames] the trajectory (frame 0 is the
 * initial noise, the last frame the final images). Collective. */
void sampler_run(unet *u, const dm_config *c, const sampler_request *q,
                 float *images, float *traj, float *traj_t);

#endif
