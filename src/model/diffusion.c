/* diffusion.c: examples and estimates through the objective table (see
 * diffusion.h and objective.h). */
#include "diffmpi/diffusion.h"

#include <stdio.h>

#include "diffmpi/data.h"
#include "diffmpi/gemm.h"
#include "diffmpi/rng.h"

unet_shape diffusion_shape(const dm_config *c, int m, int max_mb, int inference) {
    unet_shape sh = {0};
    sh.D = c->hidden;
    sh.classes = objective_get(c->objective)->classes;
    sh.mix = c->conditioning == CONDITIONING_CLASS ? COND_MIX_FILM
             : c->conditioning == CONDITIONING_TIME ? objective_get(c->objective)->time_mix
                                            : COND_MIX_NONE;
    sh.norm = c->norm;
    sh.groups = c->norm_groups;
    sh.m = m;
    sh.max_mb = max_mb;
    sh.inference = inference;
    sh.winograd = c->conv_algo == CONV_ALGO_WINOGRAD; /* auto: decided by train and bench */
    sh.winograd_min = c->winograd_min_width;
    sh.winograd4_min = c->winograd4_min_width;
    sh.threads = c->threads;
    return sh;
}

const char *diffusion_conv_note(const dm_config *c) {
    static char note[384];
    if (c->conv_algo != CONV_ALGO_WINOGRAD) return "";
    if (gemm_precision_now() != DM_PREC_FP32)
        return "convolutions: conv_algo = winograd not used, as the products run in bf16 "
               "(it needs fp32); im2col";
    const int w2 = c->winograd_min_width, w4 = c->winograd4_min_width;
    const int f2 = w4 <= 0 || w2 < w4; /* does F(2x2) run anywhere */
    char part4[96] = "", part2[96] = "";
    if (w4 > 1)
        snprintf(part4, sizeof part4, "on images at least %d wide by Winograd F(4x4,3x3)", w4);
    else if (w4 == 1)
        snprintf(part4, sizeof part4, "by Winograd F(4x4,3x3)");
    if (f2 && w2 > 1)
        snprintf(part2, sizeof part2, "%son images at least %d wide by Winograd F(2x2,3x3)",
                 w4 > 0 ? ", " : "", w2);
    else if (f2)
        snprintf(part2, sizeof part2, "%sby Winograd F(2x2,3x3)", w4 > 0 ? ", narrower ones " : "");
    const int from = f2 ? w2 : w4;
    snprintf(note, sizeof note,
             "convolutions: the 3x3 stride-1 ones (outputs, input and weight gradients) %s%s%s",
             part4, part2, from > 1 ? ", the others by im2col" : "");
    return note;
}

void diffusion_noisy_at(const dm_config *c, float *z, const float *x, double sigma,
                        uint64_t purpose, int image) {
    dm_rng noise;
    float target[DM_PIX], t;
    rng_init(&noise, c->seed, DM_STREAM_EVAL, purpose, (uint32_t)image);
    objective_get(c->objective)->make(NULL, sigma, z, target, &t, x, -1, 0.0, &noise);
}

void diffusion_example(const dm_config *c, const ddpm_schedule *s, float *z,
                       float *target, float *t, int *label, const float *x,
                       int x_label, int64_t step, int pos) {
    const dm_objective_def *o = objective_get(c->objective);
    dm_rng noise, r;
    rng_init(&noise, c->seed, DM_STREAM_NOISE, (uint64_t)step, (uint32_t)pos);
    double tq = 0.0;
    if (o->draw_time) {
        rng_init(&r, c->seed, DM_STREAM_TIME, (uint64_t)step, (uint32_t)pos);
        tq = o->draw_time(&r);
    }
    o->make(s, c->sigma, z, target, t, x, x_label, tq, &noise);
    *label = -1;
    if (c->conditioning == CONDITIONING_CLASS) {
        rng_init(&r, c->seed, DM_STREAM_DROP, (uint64_t)step, (uint32_t)pos);
        *label = rng_uniform(&r) < c->p_uncond ? -1 : x_label;
    }
}

void diffusion_example_at(const dm_config *c, const ddpm_schedule *s, float *z,
                          float *target, float *t, const float *x, int label, double tq,
                          uint64_t purpose, int image) {
    dm_rng noise;
    rng_init(&noise, c->seed, DM_STREAM_EVAL, purpose, (uint32_t)image);
    objective_get(c->objective)->make(s, c->sigma, z, target, t, x, label, tq, &noise);
}

void diffusion_x0_hat(const dm_config *c, const ddpm_schedule *s, float *x0,
                      const float *z, const float *out, float t, long n) {
    objective_get(c->objective)->x0_hat(s, x0, z, out, t, n);
}

void guidance_combine(float *out, const float *ec, const float *eu, float g, long n) {
    for (long k = 0; k < n; k++) out[k] = eu[k] + g * (ec[k] - eu[k]);
}
