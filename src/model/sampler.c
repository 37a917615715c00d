/* sampler.c: the samplers of solver.h on the UNet, with classifier-free
 * guidance, spread over ranks (see sampler.h). */
#include "diffmpi/sampler.h"

#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "diffmpi/data.h"
#include "diffmpi/diffusion.h"
#include "diffmpi/dist.h"
#include "diffmpi/par.h"
#include "diffmpi/rng.h"
#include "diffmpi/watchdog.h"

int sampler_chunk(const dm_config *c) { return c->sample_chunk; }

int sampler_model_slots(const dm_config *c) { return c->threads > 1 ? c->threads : 1; }

int sampler_model_rows(const dm_config *c) {
    return c->conditioning == CONDITIONING_CLASS ? 2 * c->sample_chunk : c->sample_chunk;
}

void sampler_request_init(sampler_request *q, const dm_config *c) {
    int cls = c->conditioning == CONDITIONING_CLASS;
    *q = (sampler_request){.guidance = (float)c->guidance,
                           .sampler = solver_resolve(c->sampler, c->objective, cls),
                           .spacing = c->sample_spacing, .eta = c->sample_eta,
                           .steps = solver_steps(c->objective, cls, c->sample_steps),
                           .seed = c->seed, .log_every = c->log_every};
}

samples_sampler sampler_describe(const sampler_request *q, const dm_config *c) {
    return (samples_sampler){
        .sampler = solver_get(q->sampler)->name, .spacing = solver_spacing_name(q->spacing),
        .objective = config_objective_name(c->objective), .steps = q->steps,
        .evaluations = solver_evals(q->sampler, q->steps), .eta = q->eta,
        .guidance = c->conditioning == CONDITIONING_CLASS ? q->guidance : NAN, .seed = q->seed};
}

/* What the network evaluation of a chunk needs (solver_model's ctx). */
typedef struct {
    unet *u;
    const sampler_request *q;
    int guided;
} unet_model;

/* Network output for k images x (and their labels), guided for class
 * models: out [k][784]. */
static void unet_eval(void *ctx, float *out, const float *x, float t, int first, int k) {
    const unet_model *um = ctx;
    unet *u = um->u;
    int guided = um->guided, rows = guided ? 2 * k : k, r = par_thread();
    const sampler_request *q = um->q;
    float *in = unet_slot(u, u->in_buf, r);
    for (int h = 0; h < (guided ? 2 : 1); h++) {
        memcpy(in + (long)h * k * DM_PIX, x, sizeof(float) * (size_t)k * DM_PIX);
        for (int i = 0; u->nemb && i < k; i++) {
            int label = h == 1 || !q->labels ? -1 : q->labels[first + i];
            unet_set_cond(u, r, h * k + i, t, label);
        }
    }
    unet_forward_one(u, r, rows, r);
    const float *y = unet_slot(u, u->out_buf, r);
    if (guided)
        guidance_combine(out, y, y + (long)k * DM_PIX, q->guidance, (long)k * DM_PIX);
    else
        memcpy(out, y, sizeof(float) * (size_t)k * DM_PIX);
}

/* Fresh noise of step si for images first..first+k-1 into z. */
static void step_noise(const sampler_request *q, int si, int first, int k, float *z) {
    for (int i = 0; i < k; i++) {
        dm_rng r;
        rng_init(&r, q->seed, DM_STREAM_SAMPLE, (uint64_t)si + 1, (uint32_t)(first + i));
        rng_fill_normal(&r, z + (long)i * DM_PIX, DM_PIX);
    }
}

/* This rank's images [i0, i0 + nl) through every step; frame f of F into
 * tl [F][nl][784] and tt [F] (rank 0 prints the progress). */
static void walk(const solver_plan *pl, const sampler_request *q, int chunk, int i0, int nl,
                 int nthreads, float *x, float *tl, float *tt) {
    int rank, S = pl->S, F = q->frames, f = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    const dm_sampler_def *d = pl->def;
    const long img = (long)chunk * DM_PIX;
    float *state = dm_calloc((size_t)d->state * nl * DM_PIX + 1, sizeof(float));
    /* per thread: the network's output, the row's scratch, the step's noise */
    float *out = dm_calloc((size_t)(nthreads * img), sizeof(float));
    float *work = dm_calloc((size_t)(nthreads * d->work * img) + 1, sizeof(float));
    float *z = dm_calloc((size_t)(nthreads * img), sizeof(float));
    const int nchunks = (nl + chunk - 1) / chunk;
    double last = MPI_Wtime();
    for (int si = 0; si <= S; si++) {
        if (q->progress && rank == 0 && si < S && MPI_Wtime() - last >= q->log_every) {
            last = MPI_Wtime();
            printf("%s: step %d/%d\n", q->progress, si, S);
            fflush(stdout);
        }
        /* Frame f shows the state after floor(f*S/(F-1)) steps. */
        while (F && f < F && (F == 1 ? S : (long)f * S / (F - 1)) == si) {
            memcpy(tl + (long)f * nl * DM_PIX, x, sizeof(float) * (size_t)nl * DM_PIX);
            tt[f++] = pl->p[si].t;
        }
        if (si == S) break;
        watchdog_touch("sampling");
        int noisy = solver_step_noise(pl, si);
        /* Chunks over the rank's threads, each with a model slot of its own
         * (unet_forward_one): a chunk's numbers do not depend on which
         * thread draws it. */
#pragma omp parallel for num_threads(nthreads) schedule(static) if (nthreads > 1 && nchunks > 1)
        for (int ci = 0; ci < nchunks; ci++) {
            const int a = ci * chunk, k = nl - a < chunk ? nl - a : chunk, r = par_thread();
            float *zr = z + r * img;
            if (noisy) step_noise(q, si, i0 + a, k, zr);
            solver_block b = {.x = x + (long)a * DM_PIX,
                              .state = state + (long)d->state * a * DM_PIX,
                              .z = noisy ? zr : NULL, .out = out + r * img,
                              .work = work + r * d->work * img, .first = i0 + a, .k = k};
            solver_step(pl, si, &b);
        }
    }
    free(state), free(out), free(work), free(z);
}

void sampler_run(unet *u, const dm_config *c, const sampler_request *q,
                 float *images, float *traj, float *traj_t) {
    int rank, size, chunk = sampler_chunk(c);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    int nch = (q->n + chunk - 1) / chunk, lo, hi;
    dist_range(nch, size, rank, &lo, &hi);
    int i0 = lo * chunk < q->n ? lo * chunk : q->n, i1 = hi * chunk < q->n ? hi * chunk : q->n;
    int nl = i1 - i0, guided = u->nemb == 2 && q->guidance != 1.0f;
    DM_CHECK(u->m >= (guided ? 2 : 1) * chunk, "sampler model too small");
    unet_model um = {.u = u, .q = q, .guided = guided};
    solver_plan pl;
    const char *bad = solver_plan_init(&pl, c->objective, q->sampler, q->spacing, q->steps,
                                       q->eta, (solver_model){unet_eval, &um});
    DM_CHECK(!bad, "sampler request not checked: %s", bad);
    DM_CHECK(!q->invert || q->noise, "inversion needs the images");
    if (q->invert) solver_plan_reverse(&pl);
    DM_CHECK(q->frames <= q->steps + 1, "%d frames of %d steps", q->frames, q->steps);
    float *x = dm_calloc((size_t)nl * DM_PIX + 1, sizeof(float));
    int F = q->frames;
    float *tl = F ? dm_calloc((size_t)F * nl * DM_PIX + 1, sizeof(float)) : NULL;
    float *tt = dm_calloc((size_t)F + 1, sizeof(float));
    for (int i = 0; i < nl; i++) {
        dm_rng r;
        rng_init(&r, q->seed, DM_STREAM_SAMPLE, 0, (uint32_t)(i0 + i));
        if (q->noise)
            memcpy(x + (long)i * DM_PIX, q->noise + (long)(i0 + i) * DM_PIX,
                   sizeof(float) * DM_PIX);
        else
            rng_fill_normal(&r, x + (long)i * DM_PIX, DM_PIX);
    }
    unet_eval_ready(u);
    walk(&pl, q, chunk, i0, nl, u->nscratch < u->max_mb ? u->nscratch : u->max_mb, x, tl, tt);
    if (traj_t && rank == 0) memcpy(traj_t, tt, sizeof(float) * (size_t)F);
    int *counts = dm_calloc((size_t)size, sizeof(int)), *displs = dm_calloc((size_t)size, sizeof(int));
    dist_gather_spread(MPI_COMM_WORLD, MPI_FLOAT, images, x, q->n, chunk, DM_PIX, 0, counts,
                       displs);
    for (int g = 0; g < F; g++)
        dist_gather_spread(MPI_COMM_WORLD, MPI_FLOAT,
                           rank == 0 ? traj + (long)g * q->n * DM_PIX : NULL,
                           tl + (long)g * nl * DM_PIX, q->n, chunk, DM_PIX, 0, counts, displs);
    solver_plan_free(&pl);
    free(x), free(tl), free(tt), free(counts), free(displs);
}
