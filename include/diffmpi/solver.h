/* solver.h: the sampler table - how a diffusion model's images are walked
 * from noise to data, one row per sampler, over any network (a callback),
 * one block of images at a time. sampler.h runs it on the UNet over the
 * ranks; the tests run it on models whose answer is known in closed form.
 *
 * Notation (docs/sampling.md): the grid p[0..S] of the objective's path
 * (objective.h: path_point), x_t = a x0 + s noise, lambda = ln(a / s); the
 * network output is the noise estimate e of a DDPM or the velocity u of a
 * flow model, and the data estimate x0 comes from the objective's x0_hat.
 *
 *   ddpm     the course's ancestral step (objective.h: ddpm_step); with
 *            skipped steps the posterior's own variance
 *   ddim     x' = a' x0 + sqrt(s'^2 - sigma^2) e + sigma z, sigma = eta
 *            (s'/s) sqrt(1 - a^2/a'^2) (Song et al. 2021, eq. 12)
 *   dpmpp2m  x' = (s'/s) x + (a' - a s'/s) D, D = x0 at the first and last
 *            steps, else (1 + 1/2r) x0 - (1/2r) x0_prev, r = h_prev / h,
 *            h = lambda' - lambda (Lu et al. 2022, DPM-Solver++(2M))
 *   euler    x' = x + (t' - t) u (the course's flow sampler)
 *   heun     x' = x + (t' - t)/2 (u + u(x + (t' - t) u, t')); the last
 *            step Euler (Karras et al. 2022, Alg. 1)
 *
 * A new sampler is one row of `samplers` in solver.c and its step function,
 * plus its test in tests/sampler.
 *
 *   solver_plan pl;
 *   if (solver_plan_init(&pl, OBJ_DDPM, SAMPLER_DPMPP2M, SPACING_UNIFORM, 20, 0.0,
 *                        model) != NULL) ...;   // why it cannot be
 *   for (int i = 0; i < pl.S; i++) solver_step(&pl, i, &block);
 *   solver_plan_free(&pl);
 */
#ifndef DIFFMPI_SOLVER_H
#define DIFFMPI_SOLVER_H

#include "diffmpi/objective.h"

typedef enum {
    SAMPLER_AUTO,   /* the objective's default (objective.h: sampler) */
    SAMPLER_DDPM,
    SAMPLER_DDIM,
    SAMPLER_DPMPP2M,
    SAMPLER_EULER,
    SAMPLER_HEUN,
    SAMPLER_COUNT
} dm_sampler;

/* The network as a sampler sees it: out [k][784] receives its output for
 * the k images x [k][784] (the first of which is image `first` of the
 * request) at network time t; class models return the guided output. */
typedef struct {
    void (*eval)(void *ctx, float *out, const float *x, float t, int first, int k);
    void *ctx;
} solver_model;

/* k images that one step updates. */
typedef struct {
    float *x;        /* [k][784] the images, updated in place */
    float *state;    /* [row state][k][784] kept from step to step */
    const float *z;  /* [k][784] this step's fresh noise, or NULL when none */
    float *out;      /* [k][784] scratch: the network output */
    float *work;     /* [row work][k][784] scratch */
    int first, k;
} solver_block;

struct solver_plan;

/* SOLVER_NOISE_ETA: fresh noise when sample_eta > 0. No step draws noise
 * for the step into the image (the last). */
enum { SOLVER_NOISE_NONE, SOLVER_NOISE_ALWAYS, SOLVER_NOISE_ETA };

typedef struct {
    const char *name;     /* the config value */
    unsigned objectives;  /* 1 << OBJ_x for each objective it samples */
    int evals;            /* network evaluations per step (the last: 1) */
    int state, work;      /* [k][784] arrays kept between steps / scratch */
    int noise;            /* SOLVER_NOISE_* */
    int uses_eta;         /* reads sample_eta */
    int invertible;       /* deterministic and first order: run backwards
                             over the reversed grid it maps images to noise */
    void (*step)(const struct solver_plan *pl, int i, solver_block *b);
} dm_sampler_def;

typedef struct solver_plan {
    const dm_sampler_def *def;
    const dm_objective_def *o;
    ddpm_schedule sch;
    int S;            /* steps */
    double eta;       /* ddim: sample_eta */
    path_point *p;    /* [S + 1], p[S] the image */
    solver_model m;
} solver_plan;

/* The row of sampler s (not SAMPLER_AUTO). */
const dm_sampler_def *solver_get(dm_sampler s);
/* Name of sampler i ("auto" first), NULL past the last: the config key. */
const char *solver_name(int i);
/* Name of spacing i, NULL past the last: the config key. */
const char *solver_spacing_name(int i);
/* The sampler that s means for objective o (auto: the objective's default
 * for a class or a time-only model). solver_check and solver_plan_init
 * take auto as the time-only default (both defaults serve the objective). */
dm_sampler solver_resolve(dm_sampler s, dm_objective o, int class_model);

/* steps, or where it is 0 the objective's default for a time-only or a
 * class model (objective.h: steps_time, steps_class). */
int solver_steps(dm_objective o, int class_model, int steps);

/* NULL when sampler s (auto resolved) can run S steps with this spacing
 * and eta on objective o; else why not, one phrase naming the key. */
const char *solver_check(dm_objective o, dm_sampler s, dm_spacing sp, int S, double eta);

/* Resolves s, makes the grid and keeps the model; returns solver_check's
 * reason (and makes nothing) when it cannot. solver_plan_free releases. */
const char *solver_plan_init(solver_plan *pl, dm_objective o, dm_sampler s, dm_spacing sp,
                             int S, double eta, solver_model m);
void solver_plan_free(solver_plan *pl);

/* The grid walked backwards, from the image to the noise (DDIM's
 * inversion, section 5): p reversed, and the image's network time, where it
 * lies outside what was trained (the DDPM's -1/T), its neighbour's. Only
 * for rows with `invertible` (and eta 0). */
void solver_plan_reverse(solver_plan *pl);
/* The first invertible row that samples objective o. */
dm_sampler solver_inverse_default(dm_objective o);

/* Does step i need fresh noise in b->z? */
int solver_step_noise(const solver_plan *pl, int i);
/* Step i (p[i] -> p[i+1]) of block b. */
void solver_step(const solver_plan *pl, int i, solver_block *b);
/* Network evaluations of S steps of sampler s (heun: 2S - 1). */
int solver_evals(dm_sampler s, int S);

#endif
