/* sampler.c: DDPM ancestral and flow-matching Euler samplers with
 * classifier-free guidance, spread over ranks (see sampler.h). */
#include "diffmpi/sampler.h"

#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "diffmpi/data.h"
#include "diffmpi/diffusion.h"
#include "diffmpi/dist.h"
#include "diffmpi/rng.h"
#include "diffmpi/watchdog.h"

int sampler_chunk(const dm_config *c) { return c->sample_chunk; }

int sampler_model_rows(const dm_config *c) {
    return c->conditioning == CONDITIONING_CLASS ? 2 * c->sample_chunk : c->sample_chunk;
}

/* Network output for k images x (and their labels), guided for class
 * models: out [k][784]. */
static void predict_chunk(unet *u, const sampler_request *q, float *out,
                          const float *x, int first, int k, float t, int guided) {
    int rows = guided ? 2 * k : k;
    float *in = unet_slot(u, u->in_buf, 0);
    for (int h = 0; h < (guided ? 2 : 1); h++) {
        memcpy(in + (long)h * k * DM_PIX, x, sizeof(float) * (size_t)k * DM_PIX);
        for (int i = 0; u->nemb && i < k; i++) {
            int label = h == 1 || !q->labels ? -1 : q->labels[first + i];
            unet_set_cond(u, 0, h * k + i, t, label);
        }
    }
    unet_forward(u, 0, 1, &rows, rows, NULL, NULL, 0.0f);
    const float *y = unet_slot(u, u->out_buf, 0);
    if (guided)
        guidance_combine(out, y, y + (long)k * DM_PIX, q->guidance, (long)k * DM_PIX);
    else
        memcpy(out, y, sizeof(float) * (size_t)k * DM_PIX);
}

void sampler_run(unet *u, const dm_config *c, const sampler_request *q,
                 float *images, float *traj, float *traj_t) {
    int rank, size, chunk = sampler_chunk(c), S = q->steps;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    int nch = (q->n + chunk - 1) / chunk, lo, hi;
    dist_range(nch, size, rank, &lo, &hi);
    int i0 = lo * chunk < q->n ? lo * chunk : q->n, i1 = hi * chunk < q->n ? hi * chunk : q->n;
    int nl = i1 - i0, guided = u->nemb == 2 && q->guidance != 1.0f;
    DM_CHECK(u->m >= (guided ? 2 : 1) * chunk, "sampler model too small");
    const dm_objective_def *o = objective_get(c->objective);
    DM_CHECK(o->diffusion, "sampling needs a diffusion objective");
    float *x = dm_calloc((size_t)nl * DM_PIX + 1, sizeof(float));
    float *e = dm_calloc((size_t)chunk * DM_PIX, sizeof(float));
    float *z = dm_calloc((size_t)chunk * DM_PIX, sizeof(float));
    int F = q->frames;
    float *tl = F ? dm_calloc((size_t)F * nl * DM_PIX + 1, sizeof(float)) : NULL;
    ddpm_schedule sch;
    ddpm_schedule_init(&sch);
    for (int i = 0; i < nl; i++) {
        dm_rng r;
        rng_init(&r, q->seed, DM_STREAM_SAMPLE, 0, (uint32_t)(i0 + i));
        rng_fill_normal(&r, x + (long)i * DM_PIX, DM_PIX);
    }
    int f = 0;
    double last = MPI_Wtime();
    for (int si = 0; si <= S; si++) {
        if (q->progress && rank == 0 && si < S && MPI_Wtime() - last >= q->log_every) {
            last = MPI_Wtime();
            printf("%s: step %d/%d\n", q->progress, si, S);
            fflush(stdout);
        }
        /* Frame f shows the state after round(f*S/(F-1)) steps. */
        while (F && f < F && (F == 1 ? S : (long)f * S / (F - 1)) == si) {
            memcpy(tl + (long)f * nl * DM_PIX, x, sizeof(float) * (size_t)nl * DM_PIX);
            if (traj_t) traj_t[f] = (float)si / (float)S;
            f++;
        }
        if (si == S) break;
        watchdog_touch("sampling");
        float t = o->sample_time(si, S);
        for (int a = 0; a < nl; a += chunk) {
            int k = nl - a < chunk ? nl - a : chunk;
            float *xa = x + (long)a * DM_PIX;
            predict_chunk(u, q, e, xa, i0 + a, k, t, guided);
            for (int i = 0; o->step_noise && si + 1 < S && i < k; i++) {
                dm_rng r;
                rng_init(&r, q->seed, DM_STREAM_SAMPLE, (uint64_t)si + 1,
                         (uint32_t)(i0 + a + i));
                rng_fill_normal(&r, z + (long)i * DM_PIX, DM_PIX);
            }
            o->sample_step(&sch, si, S, xa, e, z, (long)k * DM_PIX);
        }
    }
    int *counts = dm_calloc((size_t)size, sizeof(int)), *displs = dm_calloc((size_t)size, sizeof(int));
    dist_gather_spread(MPI_COMM_WORLD, MPI_FLOAT, images, x, q->n, chunk, DM_PIX, 0, counts,
                       displs);
    for (int g = 0; g < F; g++)
        dist_gather_spread(MPI_COMM_WORLD, MPI_FLOAT,
                           rank == 0 ? traj + (long)g * q->n * DM_PIX : NULL,
                           tl + (long)g * nl * DM_PIX, q->n, chunk, DM_PIX, 0, counts, displs);
    free(x), free(e), free(z), free(tl), free(counts), free(displs);
}
