/* objective.c: the objective table (see objective.h) and each row's
 * functions, with the DDPM schedule and the two sampler steps. */
#include "diffmpi/objective.h"

#include <math.h>
#include <string.h>

#include "diffmpi/common.h"
#include "diffmpi/data.h"
#include "diffmpi/layers.h"

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

static float ddpm_sample_time(int si, int S) {
    return (float)ddpm_timestep(si, S) / (float)DDPM_T;
}

static void ddpm_sample_step(const ddpm_schedule *s, int si, int S, float *x,
                             const float *out, const float *z, long n) {
    int tp = si + 1 < S ? ddpm_timestep(si + 1, S) : -1;
    ddpm_step(s, ddpm_timestep(si, S), tp, x, out, z, n);
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

static float flow_sample_time(int si, int S) { return (float)si / (float)S; }

static void flow_sample_step(const ddpm_schedule *s, int si, int S, float *x,
                             const float *out, const float *z, long n) {
    flow_step(x, out, S, n);
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
                  .steps_time = DDPM_T, .steps_class = DDPM_T,
                  .sample_time = ddpm_sample_time, .step_noise = 1,
                  .sample_step = ddpm_sample_step},
    [OBJ_FLOW] = {.name = "flow", .diffusion = 1, MSE, .time_mix = COND_MIX_MUL,
                  .draw_time = flow_draw_time, .make = flow_make, .x0_hat = flow_x0,
                  .steps_time = 50, .steps_class = 300,
                  .sample_time = flow_sample_time, .sample_step = flow_sample_step},
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
