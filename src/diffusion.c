/* diffusion.c: objectives and samplers (see diffusion.h). */
#include "diffmpi/diffusion.h"

#include <math.h>
#include <string.h>

#include "diffmpi/data.h"
#include "diffmpi/rng.h"

void ddpm_schedule_init(ddpm_schedule *s) {
    s->T = DDPM_T;
    double prod = 1.0;
    for (int i = 0; i < DDPM_T; i++) {
        s->beta[i] = 1e-4 + (0.02 - 1e-4) * (double)i / (DDPM_T - 1);
        s->alpha[i] = 1.0 - s->beta[i];
        prod *= s->alpha[i];
        s->abar[i] = prod;
    }
}

unet_shape diffusion_shape(const dm_config *c, int m, int max_mb, int inference) {
    unet_shape sh = {0};
    sh.D = c->hidden;
    sh.cond = c->conditioning == COND_CLASS ? 2 : c->conditioning == COND_TIME ? 1 : 0;
    sh.time_mult = c->objective == OBJ_FLOW && c->conditioning == COND_TIME;
    sh.m = m;
    sh.max_mb = max_mb;
    sh.inference = inference;
    return sh;
}

/* The denoisers' input: z = x + sigma * eps, or eps alone (pure_noise). */
static void noisy(const dm_config *c, float *z, const float *x, double sigma,
                  dm_rng *noise) {
    for (int k = 0; k < DM_PIX; k++) {
        float eps = rng_normal(noise);
        z[k] = c->objective == OBJ_PURE_NOISE ? eps : x[k] + (float)sigma * eps;
    }
}

void diffusion_noisy_at(const dm_config *c, float *z, const float *x, double sigma,
                        uint64_t purpose, int image) {
    dm_rng noise;
    rng_init(&noise, c->seed, DM_STREAM_EVAL, purpose, (uint32_t)image);
    noisy(c, z, x, sigma, &noise);
}

/* Input and target for a given noise stream and time (shared by training
 * and evaluation examples). tq: time in [0,1). */
static void make(const dm_config *c, const ddpm_schedule *s, float *z, float *target,
                 float *t, const float *x, double tq, dm_rng *noise) {
    if (c->objective == OBJ_DDPM) {
        int ti = (int)(tq * s->T);
        if (ti > s->T - 1) ti = s->T - 1;
        float a = (float)sqrt(s->abar[ti]), b = (float)sqrt(1.0 - s->abar[ti]);
        for (int k = 0; k < DM_PIX; k++) {
            float eps = rng_normal(noise);
            z[k] = a * x[k] + b * eps;
            target[k] = eps;
        }
        *t = (float)ti / (float)s->T;
    } else if (c->objective == OBJ_FLOW) {
        float tt = (float)tq;
        for (int k = 0; k < DM_PIX; k++) {
            float eps = rng_normal(noise);
            z[k] = (1.0f - tt) * eps + tt * x[k];
            target[k] = x[k] - eps;
        }
        *t = tt;
    } else {
        noisy(c, z, x, c->sigma, noise);
        memcpy(target, x, sizeof(float) * DM_PIX);
        *t = 0.0f;
    }
}

void diffusion_example(const dm_config *c, const ddpm_schedule *s, float *z,
                       float *target, float *t, int *label, const float *x,
                       int x_label, int64_t step, int pos) {
    dm_rng noise, r;
    rng_init(&noise, c->seed, DM_STREAM_NOISE, (uint64_t)step, (uint32_t)pos);
    double tq = 0.0;
    if (c->objective == OBJ_DDPM || c->objective == OBJ_FLOW) {
        rng_init(&r, c->seed, DM_STREAM_TIME, (uint64_t)step, (uint32_t)pos);
        /* DDPM: t uniform on 0..T-1 exactly; flow: t uniform on [0,1). */
        tq = c->objective == OBJ_DDPM ? (double)rng_below(&r, DDPM_T) / DDPM_T
                                      : (double)rng_uniform(&r);
    }
    make(c, s, z, target, t, x, tq, &noise);
    *label = -1;
    if (c->conditioning == COND_CLASS) {
        rng_init(&r, c->seed, DM_STREAM_DROP, (uint64_t)step, (uint32_t)pos);
        *label = rng_uniform(&r) < c->p_uncond ? -1 : x_label;
    }
}

void diffusion_example_at(const dm_config *c, const ddpm_schedule *s, float *z,
                          float *target, float *t, const float *x, double tq,
                          uint64_t purpose, int image) {
    dm_rng noise;
    rng_init(&noise, c->seed, DM_STREAM_EVAL, purpose, (uint32_t)image);
    make(c, s, z, target, t, x, tq, &noise);
}

void diffusion_x0_hat(const dm_config *c, const ddpm_schedule *s, float *x0,
                      const float *z, const float *out, float t, long n) {
    if (c->objective == OBJ_DDPM) {
        int ti = (int)lround((double)t * s->T);
        if (ti > s->T - 1) ti = s->T - 1;
        float a = (float)sqrt(s->abar[ti]), b = (float)sqrt(1.0 - s->abar[ti]);
        for (long k = 0; k < n; k++) x0[k] = (z[k] - b * out[k]) / a;
    } else if (c->objective == OBJ_FLOW) {
        for (long k = 0; k < n; k++) x0[k] = z[k] + (1.0f - t) * out[k];
    } else {
        for (long k = 0; k < n; k++) x0[k] = out[k];
    }
}

int diffusion_default_steps(const dm_config *c) {
    if (c->objective == OBJ_FLOW) return c->conditioning == COND_CLASS ? 300 : 50;
    return DDPM_T;
}

int ddpm_timestep(int i, int S) {
    if (S <= 1) return DDPM_T - 1;
    /* Evenly spaced from T-1 to 0, exact integers when S = T. */
    return (int)(((long)(DDPM_T - 1) * (S - 1 - i) + (S - 1) / 2) / (S - 1));
}

void ddpm_step(const ddpm_schedule *s, int t, int tp, float *x,
               const float *eps, const float *z, long n) {
    double abar = s->abar[t], prev = tp >= 0 ? s->abar[tp] : 1.0;
    double alpha = abar / prev, beta = 1.0 - alpha;
    if (tp == t - 1) alpha = s->alpha[t], beta = s->beta[t];
    float ra = (float)sqrt(abar), rb = (float)sqrt(1.0 - abar);
    float c0 = (float)(sqrt(prev) * beta / (1.0 - abar));
    float c1 = (float)(sqrt(alpha) * (1.0 - prev) / (1.0 - abar));
    float sd = tp >= 0 ? (float)sqrt(beta) : 0.0f;
    for (long k = 0; k < n; k++) {
        float x0 = (x[k] - rb * eps[k]) / ra;
        x[k] = c0 * x0 + c1 * x[k] + (tp >= 0 ? sd * z[k] : 0.0f);
    }
}

void flow_step(float *x, const float *u, int N, long n) {
    float h = 1.0f / (float)N;
    for (long k = 0; k < n; k++) x[k] += u[k] * h;
}

void cfg_combine(float *out, const float *ec, const float *eu, float g, long n) {
    for (long k = 0; k < n; k++) out[k] = eu[k] + g * (ec[k] - eu[k]);
}
