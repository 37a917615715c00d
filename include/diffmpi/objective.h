/* objective.h: the training objectives as one table. Each row says how a
 * training example is made (network input, target, time input), how the
 * clean image is estimated from the network output, and, for diffusion
 * objectives, how the sampler walks from noise to an image:
 *
 *   denoise     z = x + sigma*eps        target x
 *   pure_noise  z = eps                  target x
 *   ddpm        x_t = sqrt(abar_t) x + sqrt(1-abar_t) eps, t ~ U{0..T-1},
 *               network time t/T         target eps
 *   flow        x_t = (1-t) eps + t x, t ~ U[0,1]     target x - eps
 *   classify    z = x                    target onehot(label), softmax
 *               cross-entropy over 10 logits (the judge of `diffmpi score`)
 *
 * A new objective is one row of `objectives` in objective.c plus its
 * functions; the trainer, evaluation, figures, sampler, `sample` and the
 * config key read the row and never test which objective it is.
 *
 *   const dm_objective_def *o = objective_get(c->objective);
 *   if (o->diffusion) ...;
 */
#ifndef DIFFMPI_OBJECTIVE_H
#define DIFFMPI_OBJECTIVE_H

#include "diffmpi/cond.h"
#include "diffmpi/rng.h"

typedef enum {
    OBJ_DENOISE,
    OBJ_PURE_NOISE,
    OBJ_DDPM,
    OBJ_FLOW,
    OBJ_CLASSIFY,
    OBJ_COUNT
} dm_objective;


/* The loss of one micro-batch of n images: out is the network's output slot
 * (784 floats per image, or [classes][n] logits), target n x target_floats;
 * writes dout = the gradient of scale * loss and returns the loss summed
 * over the micro-batch (in double); *correct gets the images classified
 * right (classifiers; 0 otherwise). */
typedef double (*dm_loss_fn)(float *dout, int *correct, const float *out,
                             const float *target, int n, float scale);

#define DDPM_T 300

/* beta linear from 1e-4 to 0.02 over T values (index 0..T-1), alpha =
 * 1 - beta, abar = cumulative product (ddpm_schedule_init). */
typedef struct {
    int T;
    double beta[DDPM_T], alpha[DDPM_T], abar[DDPM_T];
} ddpm_schedule;

/* How a sampler's time grid is spaced (config key sample_spacing). */
typedef enum { SPACING_UNIFORM, SPACING_LOGSNR, SPACING_COUNT } dm_spacing;

/* One point of a sampler's time grid on the objective's path from noise to
 * image, x_t = a * image + s * noise: the network's time input t, the
 * path's coefficients a and s, and the time tq in double (flow: t; DDPM:
 * index / T) whose differences are a flow step's length. index is the
 * DDPM's timestep (-1 at the image, abar_{-1} = 1; -1 throughout for
 * flow). The last point of every grid is the image itself: a = 1, s = 0. */
typedef struct {
    float t;
    double a, s, tq;
    int index;
} path_point;

/* The S + 1 points of an S-step grid, p[0] the last trained time (pure
 * noise) and p[S] the image; NULL, or why this grid cannot be made (one
 * phrase: "a DDPM has 300 trained times"). */
typedef const char *(*path_grid_fn)(const ddpm_schedule *s, dm_spacing sp, int S,
                                    path_point *p);

typedef struct {
    const char *name;   /* the config value */
    int diffusion;      /* 1: time-conditioned, samples from noise, evaluated
                           at fixed times */
    int denoiser;       /* 1: a denoiser, evaluated at sigma, with the
                           denoising figures */
    int classes;        /* > 0: a classifier of that many classes (the
                           UNet's encoder, pooled, then a 1x1 head) */
    dm_loss_fn loss;    /* per micro-batch; the step's loss is its sum over
                           the batch divided by B * loss_per_image */
    int target_floats;  /* floats of target per image */
    int loss_per_image; /* terms per image the loss averages over */
    cond_mix time_mix;  /* how t enters a time-only model (ADD or MUL);
                           COND_MIX_NONE: no conditioning allowed */
    /* Training time tq in [0,1) from r; NULL: no time input (tq = 0). */
    double (*draw_time)(dm_rng *r);
    /* z (network input), target [target_floats] and *t (network time
     * input) from the clean image x, its label y, the time tq and the noise
     * stream. */
    void (*make)(const ddpm_schedule *s, double sigma, float *z, float *target,
                 float *t, const float *x, int y, double tq, dm_rng *noise);
    /* x0 [n]: the clean image estimated from input z and output out at
     * network time t (NULL for classifiers). */
    void (*x0_hat)(const ddpm_schedule *s, float *x0, const float *z, const float *out,
                   float t, long n);
    /* Sampling (diffusion objectives): the default sampler (a dm_sampler
     * of solver.h, the value of sampler = auto) and its steps for
     * time-only and class models (docs/sampling.md, Defaults); the time
     * grid of S steps (path_grid). */
    int sampler_time, sampler_class, steps_time, steps_class;
    path_grid_fn grid;
} dm_objective_def;

/* The row of objective o (o must be < OBJ_COUNT). */
const dm_objective_def *objective_get(dm_objective o);
/* Name of objective i, NULL past the last: the config key's values. */
const char *objective_name(int i);

void ddpm_schedule_init(ddpm_schedule *s);
/* The i-th of S timesteps, from T-1 down to 0 (S = T: T-1-i): the grid
 * of sample_spacing = uniform. */
int ddpm_timestep(int i, int S);
/* One DDPM ancestral step from index t to index tp < t (tp = -1 at the
 * end, abar_{-1} = 1) on n floats, with alpha = abar_t/abar_tp and
 * beta = 1 - alpha (the schedule's own values when tp = t-1):
 * x0 = (x - sqrt(1-abar_t) eps)/sqrt(abar_t);
 * x <- sqrt(abar_tp) beta/(1-abar_t) x0 + sqrt(alpha)(1-abar_tp)/(1-abar_t) x
 *      + sd z, z ignored at the last step. The mean is the posterior
 * mean of x_tp given x_t and x0 for any tp < t. sd: sqrt(beta_t), the
 * course's, when tp = t-1; else the posterior's own sqrt(beta (1-abar_tp)
 * / (1-abar_t)), since sqrt(beta) of a skipped stretch adds far more noise
 * than the step removes (DDIM's Table 1: FID 367 at 10 steps). */
void ddpm_step(const ddpm_schedule *s, int t, int tp, float *x,
               const float *eps, const float *z, long n);

#endif
