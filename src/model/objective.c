/* objective.c: the objective table (see objective.h) and each row's
 * functions, with the DDPM schedule, the time grids of the samplers and
 * the DDPM ancestral step. */
#include "diffmpi/objective.h"

#include <math.h>
#include <string.h>

#include "diffmpi/common.h"
#include "diffmpi/data.h"
#include "diffmpi/layers.h"
#include "diffmpi/solver.h"

/* ---- losses ------------------------------------------------------------------ */

static double mse_loss(float *dout, int *correct, const float *out, const float *target,
                       int n, float scale) {
    *correct = 0;
    return mse_forward_backward(dout, out, target, (long)n * DM_PIX, scale);
}

static double xent_loss(float *dout, int *correct, const float *out, const float *target,
                        int n, float scale) {
    return xent_forward_backward(dout, correct, out, target, DM_CLASSES, n, scale);
}

/* ---- denoisers: target x ------------------------------------------------- */

static void denoise_make(const ddpm_schedule *s, double sigma, float *z, float *target,
                         float *t, const float *x, int y, double tq, dm_rng *noise) {
    for (int k = 0; k < DM_PIX; k++) z[k] = x[k] + (float)sigma * rng_normal(noise);
    memcpy(target, x, sizeof(float) * DM_PIX);
    *t = 0.0f;
}

static void pure_noise_make(const ddpm_schedule *s, double sigma, float *z, float *target,
                            float *t, const float *x, int y, double tq, dm_rng *noise) {
    for (int k = 0; k < DM_PIX; k++) z[k] = rng_normal(noise);
    memcpy(target, x, sizeof(float) * DM_PIX);
    *t = 0.0f;
}

static void identity_x0(const ddpm_schedule *s, float *x0, const float *z, const float *out,
                        float t, long n) {
    memcpy(x0, out, sizeof(float) * (size_t)n);
}

/* ---- DDPM: target eps ------------------------------------------------------ */

static double ddpm_draw_time(dm_rng *r) { return (double)rng_below(r, DDPM_T) / DDPM_T; }

static int ddpm_index(const ddpm_schedule *s, int ti) { return ti > s->T - 1 ? s->T - 1 : ti; }

static void ddpm_make(const ddpm_schedule *s, double sigma, float *z, float *target,
                      float *t, const float *x, int y, double tq, dm_rng *noise) {
    int ti = ddpm_index(s, (int)(tq * s->T));
    float a = (float)sqrt(s->abar[ti]), b = (float)sqrt(1.0 - s->abar[ti]);
    for (int k = 0; k < DM_PIX; k++) {
        float eps = rng_normal(noise);
        z[k] = a * x[k] + b * eps;
        target[k] = eps;
    }
    *t = (float)ti / (float)s->T;
}

static void ddpm_x0(const ddpm_schedule *s, float *x0, const float *z, const float *out,
                    float t, long n) {
    int ti = ddpm_index(s, (int)lround((double)t * s->T));
    float a = (float)sqrt(s->abar[ti]), b = (float)sqrt(1.0 - s->abar[ti]);
    for (long k = 0; k < n; k++) x0[k] = (z[k] - b * out[k]) / a;
}

/* sample_spacing = logsnr: S timesteps evenly spaced in lambda_t =
 * ln(sqrt(abar_t / (1 - abar_t))) from t = T-1 to 0, each the trained
 * timestep nearest in lambda, then made strictly decreasing (S <= T) by
 * pushing up from t = 0, then down from t = T-1. */
static void ddpm_logsnr_steps(const ddpm_schedule *s, int S, int *ts) {
    double lam[DDPM_T];
    for (int t = 0; t < s->T; t++) lam[t] = 0.5 * log(s->abar[t] / (1.0 - s->abar[t]));
    for (int i = 0; i < S; i++) {
        double want = S == 1 ? lam[s->T - 1]
                             : lam[s->T - 1] + (lam[0] - lam[s->T - 1]) * i / (S - 1);
        int best = 0;
        for (int t = 1; t < s->T; t++)
            if (fabs(lam[t] - want) < fabs(lam[best] - want)) best = t;
        ts[i] = best;
    }
    for (int i = S - 2; i >= 0; i--)
        if (ts[i] <= ts[i + 1]) ts[i] = ts[i + 1] + 1;
    for (int i = 1; i < S; i++)
        if (ts[i] >= ts[i - 1]) ts[i] = ts[i - 1] - 1;
}

static path_point ddpm_point(const ddpm_schedule *s, int t) {
    double abar = t >= 0 ? s->abar[t] : 1.0;
    return (path_point){.t = (float)t / (float)s->T, .a = sqrt(abar), .s = sqrt(1.0 - abar),
                        .tq = (double)t / s->T, .index = t};
}

static const char *ddpm_grid(const ddpm_schedule *s, dm_spacing sp, int S, path_point *p) {
    if (S > s->T) return "a DDPM has 300 trained times, so at most 300 steps";
    int ts[DDPM_T];
    if (sp == SPACING_LOGSNR) ddpm_logsnr_steps(s, S, ts);
    for (int i = 0; i < S; i++) p[i] = ddpm_point(s, sp == SPACING_LOGSNR ? ts[i] : ddpm_timestep(i, S));
    p[S] = ddpm_point(s, -1);
    return NULL;
}

/* ---- flow matching: target x - eps ---------------------------------------- */

static double flow_draw_time(dm_rng *r) { return (double)rng_uniform(r); }

static void flow_make(const ddpm_schedule *s, double sigma, float *z, float *target,
                      float *t, const float *x, int y, double tq, dm_rng *noise) {
    float tt = (float)tq;
    for (int k = 0; k < DM_PIX; k++) {
        float eps = rng_normal(noise);
        z[k] = (1.0f - tt) * eps + tt * x[k];
        target[k] = x[k] - eps;
    }
    *t = tt;
}

static void flow_x0(const ddpm_schedule *s, float *x0, const float *z, const float *out,
                    float t, long n) {
    for (long k = 0; k < n; k++) x0[k] = z[k] + (1.0f - t) * out[k];
}

/* t_i = i/S from noise (t = 0) to the image (t = 1). */
static const char *flow_grid(const ddpm_schedule *s, dm_spacing sp, int S, path_point *p) {
    if (sp == SPACING_LOGSNR)
        return "a flow model's grid starts at t = 0, where the log-SNR is -infinity, "
               "so only sample_spacing = uniform";
    for (int i = 0; i <= S; i++) {
        double tq = (double)i / S;
        p[i] = (path_point){.t = (float)i / (float)S, .a = tq, .s = 1.0 - tq, .tq = tq,
                            .index = -1};
    }
    return NULL;
}

/* ---- classifier: target onehot(label) ----------------------------------------- */

static void classify_make(const ddpm_schedule *s, double sigma, float *z, float *target,
                          float *t, const float *x, int y, double tq, dm_rng *noise) {
    memcpy(z, x, sizeof(float) * DM_PIX);
    for (int k = 0; k < DM_CLASSES; k++) target[k] = k == y ? 1.0f : 0.0f;
    *t = 0.0f;
}

/* ---- the table -------------------------------------------------------------- */

static const dm_objective_def objectives[OBJ_COUNT] = {
#define MSE .loss = mse_loss, .target_floats = DM_PIX, .loss_per_image = DM_PIX
    [OBJ_DENOISE] = {.name = "denoise", .denoiser = 1, MSE, .make = denoise_make,
                     .x0_hat = identity_x0},
    [OBJ_PURE_NOISE] = {.name = "pure_noise", .denoiser = 1, MSE, .make = pure_noise_make,
                        .x0_hat = identity_x0},
    [OBJ_DDPM] = {.name = "ddpm", .diffusion = 1, MSE, .time_mix = COND_MIX_ADD,
                  .draw_time = ddpm_draw_time, .make = ddpm_make, .x0_hat = ddpm_x0,
                  /* docs/sampling.md, Defaults: the fewest steps that score
                   * within the course's 300 steps' spread */
                  .sampler_time = SAMPLER_DDPM, .sampler_class = SAMPLER_DDPM,
                  .steps_time = 10, .steps_class = 10,
                  .grid = ddpm_grid},
    [OBJ_FLOW] = {.name = "flow", .diffusion = 1, MSE, .time_mix = COND_MIX_MUL,
                  .draw_time = flow_draw_time, .make = flow_make, .x0_hat = flow_x0,
                  /* class: docs/sampling.md, Defaults (within 300 Euler
                   * steps' spread); time-only: the course's, not measured */
                  .sampler_time = SAMPLER_EULER, .sampler_class = SAMPLER_DPMPP2M,
                  .steps_time = 50, .steps_class = 20,
                  .grid = flow_grid},
    [OBJ_CLASSIFY] = {.name = "classify", .classes = DM_CLASSES, .loss = xent_loss,
                      .target_floats = DM_CLASSES, .loss_per_image = 1,
                      .make = classify_make},
#undef MSE
};

const dm_objective_def *objective_get(dm_objective o) {
    DM_CHECK((int)o >= 0 && o < OBJ_COUNT, "objective %d out of range", (int)o);
    return &objectives[o];
}

const char *objective_name(int i) {
    return i >= 0 && i < OBJ_COUNT ? objectives[i].name : NULL;
}

/* ---- schedule and sampler steps ---------------------------------------------- */

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
    double var = tp == t - 1 ? beta : beta * (1.0 - prev) / (1.0 - abar);
    float sd = tp >= 0 ? (float)sqrt(var) : 0.0f;
    for (long k = 0; k < n; k++) {
        float x0 = (x[k] - rb * eps[k]) / ra;
        x[k] = c0 * x0 + c1 * x[k] + (tp >= 0 ? sd * z[k] : 0.0f);
    }
}
