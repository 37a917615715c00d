/* solver.c: the sampler table and each row's step (see solver.h). Every
 * step works on n = k * 784 floats; coefficients in double, the images in
 * float. */
#include "diffmpi/solver.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "diffmpi/common.h"
#include "diffmpi/data.h"

static long block_floats(const solver_block *b) { return (long)b->k * DM_PIX; }

/* The network output for the block's images at grid point i into b->out. */
static void eval_at(const solver_plan *pl, int i, solver_block *b, const float *x) {
    pl->m.eval(pl->m.ctx, b->out, x, pl->p[i].t, b->first, b->k);
}

/* x0 [n]: the data estimate from the images x and the output b->out at
 * grid point i. */
static void x0_at(const solver_plan *pl, int i, const solver_block *b, float *x0) {
    pl->o->x0_hat(&pl->sch, x0, b->x, b->out, pl->p[i].t, block_floats(b));
}

/* ---- ddpm: the course's ancestral step ---------------------------------------- */

static void ddpm_row(const solver_plan *pl, int i, solver_block *b) {
    eval_at(pl, i, b, b->x);
    ddpm_step(&pl->sch, pl->p[i].index, pl->p[i + 1].index, b->x, b->out, b->z,
              block_floats(b));
}

/* ---- ddim: x' = a' x0 + sqrt(s'^2 - sigma^2) e + sigma z --------------------------- */

static void ddim_row(const solver_plan *pl, int i, solver_block *b) {
    const path_point *p = &pl->p[i], *q = &pl->p[i + 1];
    float *x0 = b->work;
    eval_at(pl, i, b, b->x);
    x0_at(pl, i, b, x0);
    /* sigma = eta sqrt((1-abar')/(1-abar)) sqrt(1 - abar/abar'), abar = a^2 */
    double sig = pl->eta > 0 ? pl->eta * (q->s / p->s) *
                                   sqrt(fmax(0.0, 1.0 - p->a * p->a / (q->a * q->a)))
                             : 0.0; /* eta 0: also from the image (s = 0) backwards */
    float ca = (float)q->a, ce = (float)sqrt(fmax(0.0, q->s * q->s - sig * sig));
    float cz = (float)sig;
    const float *e = b->out; /* a DDPM's output is the noise estimate */
    for (long k = 0; k < block_floats(b); k++)
        b->x[k] = ca * x0[k] + ce * e[k] + (b->z ? cz * b->z[k] : 0.0f);
}

/* ---- dpmpp2m: DPM-Solver++(2M), data prediction, multistep ------------------------ */

static double lambda_of(const path_point *p) { return log(p->a / p->s); }

static void dpmpp2m_row(const solver_plan *pl, int i, solver_block *b) {
    const path_point *p = &pl->p[i], *q = &pl->p[i + 1];
    float *x0 = b->work, *prev = b->state;
    long n = block_floats(b);
    eval_at(pl, i, b, b->x);
    x0_at(pl, i, b, x0);
    /* x' = (s'/s) x + a' (1 - e^-h) D, and a' e^-h = a s'/s */
    float cx = (float)(q->s / p->s), cd = (float)(q->a - p->a * q->s / p->s);
    /* First order at the first step, into the image (h infinite) and after
     * a point with a = 0 (a flow grid's t = 0: lambda there is -infinity). */
    int second = i > 0 && q->s > 0 && pl->p[i - 1].a > 0;
    float w1 = 1.0f, w0 = 0.0f;
    if (second) {
        double h = lambda_of(q) - lambda_of(p), r = (lambda_of(p) - lambda_of(&pl->p[i - 1])) / h;
        w1 = (float)(1.0 + 0.5 / r);
        w0 = (float)(-0.5 / r);
    }
    for (long k = 0; k < n; k++) {
        float d = second ? w1 * x0[k] + w0 * prev[k] : x0[k];
        b->x[k] = cx * b->x[k] + cd * d;
    }
    memcpy(prev, x0, sizeof(float) * (size_t)n);
}

/* ---- euler and heun (flow): x' = x + (t' - t) u ------------------------------------- */

static float step_length(const solver_plan *pl, int i) {
    return (float)(pl->p[i + 1].tq - pl->p[i].tq);
}

static void euler_row(const solver_plan *pl, int i, solver_block *b) {
    float h = step_length(pl, i);
    eval_at(pl, i, b, b->x);
    for (long k = 0; k < block_floats(b); k++) b->x[k] += b->out[k] * h;
}

static void heun_row(const solver_plan *pl, int i, solver_block *b) {
    if (i + 1 == pl->S) { /* into the image: Euler, one evaluation */
        euler_row(pl, i, b);
        return;
    }
    long n = block_floats(b);
    float h = step_length(pl, i), *xe = b->work, *u1 = b->work + n;
    eval_at(pl, i, b, b->x);
    for (long k = 0; k < n; k++) {
        u1[k] = b->out[k];
        xe[k] = b->x[k] + h * u1[k];
    }
    eval_at(pl, i + 1, b, xe);
    float h2 = 0.5f * h;
    for (long k = 0; k < n; k++) b->x[k] += h2 * (u1[k] + b->out[k]);
}

/* ---- the table ------------------------------------------------------------------ */

#define DDPM_ONLY (1u << OBJ_DDPM)
#define FLOW_ONLY (1u << OBJ_FLOW)

static const dm_sampler_def samplers[SAMPLER_COUNT] = {
    [SAMPLER_AUTO] = {.name = "auto"},
    [SAMPLER_DDPM] = {.name = "ddpm", .objectives = DDPM_ONLY, .evals = 1,
                      .noise = SOLVER_NOISE_ALWAYS, .step = ddpm_row},
    [SAMPLER_DDIM] = {.name = "ddim", .objectives = DDPM_ONLY, .evals = 1, .work = 1,
                      .noise = SOLVER_NOISE_ETA, .uses_eta = 1, .invertible = 1,
                      .step = ddim_row},
    [SAMPLER_DPMPP2M] = {.name = "dpmpp2m", .objectives = DDPM_ONLY | FLOW_ONLY, .evals = 1,
                         .state = 1, .work = 1, .step = dpmpp2m_row},
    [SAMPLER_EULER] = {.name = "euler", .objectives = FLOW_ONLY, .evals = 1, .invertible = 1,
                       .step = euler_row},
    [SAMPLER_HEUN] = {.name = "heun", .objectives = FLOW_ONLY, .evals = 2, .work = 2,
                      .step = heun_row},
};

const dm_sampler_def *solver_get(dm_sampler s) {
    DM_CHECK((int)s > SAMPLER_AUTO && s < SAMPLER_COUNT, "sampler %d out of range", (int)s);
    return &samplers[s];
}

const char *solver_name(int i) {
    return i >= 0 && i < SAMPLER_COUNT ? samplers[i].name : NULL;
}

const char *solver_spacing_name(int i) {
    static const char *const names[SPACING_COUNT] = {"uniform", "logsnr"};
    return i >= 0 && i < SPACING_COUNT ? names[i] : NULL;
}

dm_sampler solver_resolve(dm_sampler s, dm_objective o, int class_model) {
    const dm_objective_def *od = objective_get(o);
    if (s != SAMPLER_AUTO) return s;
    return (dm_sampler)(class_model ? od->sampler_class : od->sampler_time);
}

int solver_steps(dm_objective o, int class_model, int steps) {
    const dm_objective_def *od = objective_get(o);
    return steps ? steps : class_model ? od->steps_class : od->steps_time;
}

const char *solver_check(dm_objective o, dm_sampler s, dm_spacing sp, int S, double eta) {
    static char why[256];
    const dm_objective_def *od = objective_get(o);
    if (!od->grid) return "sampling needs a diffusion objective (ddpm or flow)";
    const dm_sampler_def *d = solver_get(solver_resolve(s, o, 0));
    if (!(d->objectives & (1u << o))) {
        snprintf(why, sizeof why, "sampler = %s cannot sample a %s model (%s)", d->name,
                 od->name, o == OBJ_DDPM ? "ddpm: ddpm, ddim or dpmpp2m"
                                         : "flow: euler, heun or dpmpp2m");
        return why;
    }
    if (S < 1) return "sample_steps must be at least 1";
    if (!(eta >= 0.0 && eta <= 1.0)) return "sample_eta must be in [0, 1]";
    if (eta != 0.0 && !d->uses_eta) {
        snprintf(why, sizeof why, "sample_eta = %g is read by sampler = ddim only, not %s",
                 eta, d->name);
        return why;
    }
    ddpm_schedule sch;
    ddpm_schedule_init(&sch);
    path_point *p = dm_malloc(sizeof(path_point) * ((size_t)S + 1));
    const char *bad = od->grid(&sch, sp, S, p);
    free(p);
    if (bad) {
        snprintf(why, sizeof why, "sampler = %s on a %s model: %s", d->name, od->name, bad);
        return why;
    }
    return NULL;
}

const char *solver_plan_init(solver_plan *pl, dm_objective o, dm_sampler s, dm_spacing sp,
                             int S, double eta, solver_model m) {
    const char *bad = solver_check(o, s, sp, S, eta);
    memset(pl, 0, sizeof *pl);
    if (bad) return bad;
    pl->def = solver_get(solver_resolve(s, o, 0));
    pl->o = objective_get(o);
    ddpm_schedule_init(&pl->sch);
    pl->S = S;
    pl->eta = eta;
    pl->p = dm_malloc(sizeof(path_point) * ((size_t)S + 1));
    DM_CHECK(pl->o->grid(&pl->sch, sp, S, pl->p) == NULL, "grid refused after its check");
    pl->m = m;
    return NULL;
}

void solver_plan_free(solver_plan *pl) {
    free(pl->p);
    pl->p = NULL;
}

void solver_plan_reverse(solver_plan *pl) {
    DM_CHECK(pl->def->invertible && pl->eta == 0, "%s cannot run backwards", pl->def->name);
    for (int i = 0, j = pl->S; i < j; i++, j--) {
        path_point t = pl->p[i];
        pl->p[i] = pl->p[j];
        pl->p[j] = t;
    }
    if (pl->p[0].t < 0) pl->p[0].t = pl->p[1].t;
}

dm_sampler solver_inverse_default(dm_objective o) {
    for (int s = SAMPLER_AUTO + 1; s < SAMPLER_COUNT; s++)
        if (samplers[s].invertible && (samplers[s].objectives & (1u << o))) return (dm_sampler)s;
    return SAMPLER_AUTO;
}

int solver_step_noise(const solver_plan *pl, int i) {
    if (i + 1 >= pl->S) return 0;
    return pl->def->noise == SOLVER_NOISE_ALWAYS ||
           (pl->def->noise == SOLVER_NOISE_ETA && pl->eta > 0);
}

void solver_step(const solver_plan *pl, int i, solver_block *b) {
    DM_CHECK(i >= 0 && i < pl->S, "sampler step %d of %d", i, pl->S);
    pl->def->step(pl, i, b);
}

int solver_evals(dm_sampler s, int S) {
    const dm_sampler_def *d = solver_get(s);
    return d->evals * S - (d->evals - 1);
}
