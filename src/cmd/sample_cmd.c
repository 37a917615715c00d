/* sample_cmd.c: `diffmpi sample` - draw images from a diffusion checkpoint,
 * spread over the ranks (see sampler.h); rank 0 writes an HDF5 file and a
 * PNG grid beside it. */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "diffmpi/ckpt.h"
#include "diffmpi/data.h"
#include "diffmpi/diffusion.h"
#include "diffmpi/gemm.h"
#include "diffmpi/h5util.h"
#include "diffmpi/png.h"
#include "diffmpi/sample_cmd.h"
#include "diffmpi/sampler.h"

#define MAX_FRAMES 101

static dm_status write_body(hid_t f, const sample_args *a, const dm_config *c,
                            const sampler_request *q, const float *img,
                            const int32_t *labels, const float *traj,
                            const float *traj_t) {
    hsize_t d3[3] = {(hsize_t)q->n, DM_IMG, DM_IMG}, n1 = (hsize_t)q->n;
    DM_TRY(h5_write_f32(f, a->out, "/images", img, 3, d3));
    DM_TRY(h5_write_i32(f, a->out, "/labels", labels, 1, &n1));
    if (traj) {
        hsize_t d4[4] = {(hsize_t)q->frames, (hsize_t)q->n, DM_IMG, DM_IMG};
        hsize_t nf = (hsize_t)q->frames;
        DM_TRY(h5_write_f32(f, a->out, "/trajectory", traj, 4, d4));
        DM_TRY(h5_write_f32(f, a->out, "/trajectory_t", traj_t, 1, &nf));
    }
    /* guidance only where there is a class to guide by */
    if (c->conditioning == CONDITIONING_CLASS)
        DM_TRY(h5_attr_f64(f, a->out, "guidance", q->guidance));
    DM_TRY(h5_attr_i64(f, a->out, "steps", q->steps));
    DM_TRY(h5_attr_u64(f, a->out, "seed", q->seed));
    DM_TRY(h5_attr_str(f, a->out, "objective", config_objective_name(c->objective)));
    DM_TRY(h5_attr_str(f, a->out, "weights", a->used_ema ? "ema" : "raw"));
    return h5_attr_str(f, a->out, "checkpoint", a->checkpoint);
}

static dm_status write_file(const sample_args *a, const dm_config *c,
                            const sampler_request *q, const float *img,
                            const int32_t *labels, const float *traj,
                            const float *traj_t) {
    char tmp[4200];
    hid_t f = h5_create_tmp(a->out, tmp, sizeof tmp);
    if (f < 0) return DM_EIO;
    return h5_commit_tmp(f, tmp, a->out, write_body(f, a, c, q, img, labels, traj, traj_t));
}

/* Rank 0: the HDF5 file, then the PNG grid beside it. */
static dm_status write_outputs(const sample_args *a, const dm_config *c,
                               const sampler_request *q, const float *img,
                               const int32_t *labels, const float *traj,
                               const float *traj_t) {
    DM_TRY(write_file(a, c, q, img, labels, traj, traj_t));
    char png[4200];
    snprintf(png, sizeof png, "%s.png", a->out);
    /* The grid is rows of 10; a short last row is padded black. */
    int cols = q->n < 10 ? q->n : 10;
    int rows = (q->n + cols - 1) / cols;
    float *grid = dm_calloc((size_t)rows * cols * DM_PIX, sizeof(float));
    memcpy(grid, img, sizeof(float) * (size_t)q->n * DM_PIX);
    dm_status st = png_write_grid(png, grid, rows, cols, DM_IMG, DM_IMG, 2);
    free(grid);
    DM_TRY(st);
    printf("wrote %s and %s\n", a->out, png);
    return DM_OK;
}

/* Checks that need the checkpoint's configuration; identical on every rank. */
static dm_status resolve(const sample_args *a, const dm_config *c, sampler_request *q) {
    if (!objective_get(c->objective)->diffusion) {
        dm_error("%s: a %s model cannot sample (sample needs objective ddpm or flow)",
                 a->checkpoint, config_objective_name(c->objective));
        return DM_EUSAGE;
    }
    if (a->class_label != SAMPLE_CLASS_NONE && c->conditioning != CONDITIONING_CLASS) {
        dm_error("--class: %s is not a class-conditioned model", a->checkpoint);
        return DM_EUSAGE;
    }
    q->n = a->n;
    q->guidance = a->guidance >= 0 ? (float)a->guidance : (float)c->guidance;
    q->steps = a->steps > 0 ? a->steps : diffusion_steps(c);
    q->seed = a->has_seed ? a->seed : c->seed;
    q->frames = a->trajectory ? (q->steps + 1 < MAX_FRAMES ? q->steps + 1 : MAX_FRAMES) : 0;
    return DM_OK;
}

/* Configuration, request and model from the checkpoint (every rank). */
static dm_status load(sample_args *a, dm_config *c, sampler_request *q, unet *u) {
    DM_TRY(ckpt_read_config(a->checkpoint, c));
    if (a->precision >= 0) c->precision = (dm_precision)a->precision;
    /* --precision auto: rank 0 measures, every rank runs its answer. */
    int rank;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    c->precision = (dm_precision)dm_from_rank0(
        rank == 0 ? (int)gemm_resolve_precision(c->engine, c->precision) : 0);
    DM_TRY(gemm_setup(c->engine, c->precision, c->threads));
    DM_TRY(resolve(a, c, q));
    unet_shape sh = diffusion_shape(c, sampler_model_rows(c), 1, 1);
    unet_init(u, &sh);
    return ckpt_read_weights(a->checkpoint, u, (ckpt_weights)a->weights, &a->used_ema);
}

int sample_run(sample_args *a) {
    int rank;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    h5_quiet();
    dm_config c;
    sampler_request q = {0};
    unet u;
    memset(&u, 0, sizeof u);
    dm_set_quiet(rank != 0);
    dm_status st = load(a, &c, &q, &u);
    dm_set_quiet(0);
    st = dm_agree(st);
    if (st != DM_OK) {
        if (u.arena) unet_free(&u);
        gemm_teardown();
        return dm_exit_code(st);
    }
    int32_t *labels = dm_calloc((size_t)q.n, sizeof(int32_t));
    /* "all": digits in equal runs, 0,0,0,0,1,1,... for 40 images - the
     * order of the samples a training run draws. */
    for (int i = 0; i < q.n; i++)
        labels[i] = c.conditioning != CONDITIONING_CLASS ? -1
                    : a->class_label >= 0        ? a->class_label
                                                 : (int32_t)((long)i * 10 / q.n);
    q.labels = labels;
    float *img = rank == 0 ? dm_calloc((size_t)q.n * DM_PIX, sizeof(float)) : NULL;
    float *traj = rank == 0 && q.frames
                      ? dm_calloc((size_t)q.frames * q.n * DM_PIX, sizeof(float)) : NULL;
    float traj_t[MAX_FRAMES];
    /* Minutes at D=128: a progress line at the run's pace (or --log-every). */
    char what[64];
    snprintf(what, sizeof what, "sampling %d images", q.n);
    q.progress = what;
    q.log_every = a->log_every >= 0 ? a->log_every : c.log_every;
    double t0 = MPI_Wtime();
    sampler_run(&u, &c, &q, img, traj, traj_t);
    double secs = MPI_Wtime() - t0;
    if (rank == 0) {
        if (gemm_auto_note()) printf("%s\n", gemm_auto_note());
        char guided[48] = "no guidance: no class to guide by";
        if (c.conditioning == CONDITIONING_CLASS)
            snprintf(guided, sizeof guided, "guidance %g", q.guidance);
        printf("sampled %d images (%d steps, %s, seed %llu, %s weights, %s) in "
               "%.2f s\n", q.n, q.steps, guided, (unsigned long long)q.seed,
               a->used_ema ? "EMA" : "raw", gemm_describe(), secs);
        st = write_outputs(a, &c, &q, img, labels, traj, traj_t);
    }
    /* Only rank 0 wrote: its status is the job's. */
    int v = dm_from_rank0((int)st);
    free(labels), free(img), free(traj);
    unet_free(&u);
    gemm_teardown();
    return v == DM_OK ? DM_EXIT_OK : DM_EXIT_RUNTIME;
}
