/* sample_cmd.c: `diffmpi sample` - draw images from a diffusion checkpoint,
 * spread over the ranks (see sampler.h); rank 0 writes an HDF5 file and a
 * PNG grid beside it. */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "diffmpi/autotune.h"
#include "diffmpi/ckpt.h"
#include "diffmpi/data.h"
#include "diffmpi/diffusion.h"
#include "diffmpi/gemm.h"
#include "diffmpi/h5util.h"
#include "diffmpi/png.h"
#include "diffmpi/sample_cmd.h"
#include "diffmpi/sampler.h"

#define MAX_FRAMES 101

/* sample: /images are the samples. invert: /noise [N,1,28,28] the noise
 * found (what sample --noise takes), /images the inputs. */
static dm_status write_body(hid_t f, const sample_args *a, const dm_config *c,
                            const sampler_request *q, const float *img,
                            const int32_t *labels, const float *traj,
                            const float *traj_t, const float *inputs) {
    hsize_t d3[3] = {(hsize_t)q->n, DM_IMG, DM_IMG}, n1 = (hsize_t)q->n;
    hsize_t d4n[4] = {(hsize_t)q->n, 1, DM_IMG, DM_IMG};
    if (a->invert) DM_TRY(h5_write_f32(f, a->out, "/noise", img, 4, d4n));
    DM_TRY(h5_write_f32(f, a->out, "/images", a->invert ? inputs : img, 3, d3));
    DM_TRY(h5_write_i32(f, a->out, "/labels", labels, 1, &n1));
    if (traj) {
        hsize_t d4[4] = {(hsize_t)q->frames, (hsize_t)q->n, DM_IMG, DM_IMG};
        hsize_t nf = (hsize_t)q->frames;
        DM_TRY(h5_write_f32(f, a->out, "/trajectory", traj, 4, d4));
        DM_TRY(h5_write_f32(f, a->out, "/trajectory_t", traj_t, 1, &nf));
    }
    samples_sampler how = sampler_describe(q, c);
    DM_TRY(samples_sampler_attrs(f, a->out, &how));
    if (a->noise) DM_TRY(h5_attr_str(f, a->out, "noise", a->noise));
    if (a->invert) DM_TRY(h5_attr_str(f, a->out, "input", a->input));
    DM_TRY(h5_attr_str(f, a->out, "weights", a->used_ema ? "ema" : "raw"));
    DM_TRY(h5_attr_str(f, a->out, "checkpoint", a->checkpoint));
    return h5_attr_build(f, a->out);
}

static dm_status write_file(const sample_args *a, const dm_config *c,
                            const sampler_request *q, const float *img,
                            const int32_t *labels, const float *traj,
                            const float *traj_t, const float *inputs) {
    char tmp[4200];
    hid_t f = h5_create_tmp(a->out, tmp, sizeof tmp);
    if (f < 0) return DM_EIO;
    return h5_commit_tmp(f, tmp, a->out,
                         write_body(f, a, c, q, img, labels, traj, traj_t, inputs));
}

/* Rank 0: the HDF5 file, then the PNG grid of img beside it. */
static dm_status write_outputs(const sample_args *a, const dm_config *c,
                               const sampler_request *q, const float *img,
                               const int32_t *labels, const float *traj,
                               const float *traj_t, const float *inputs) {
    DM_TRY(write_file(a, c, q, img, labels, traj, traj_t, inputs));
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

/* The sampler options over the run's configuration, checked like the
 * configuration keys they set. */
static dm_status sampler_options(const sample_args *a, dm_config *c) {
    if (a->sampler >= 0 && !a->invert) c->sampler = (dm_sampler)a->sampler; /* invert_sampler */
    if (a->steps > 0) c->sample_steps = a->steps;
    if (a->eta >= 0) c->sample_eta = a->eta;
    if (a->spacing >= 0) c->sample_spacing = (dm_spacing)a->spacing;
    const char *why = config_sampler_problem(c);
    if (!why) return DM_OK;
    dm_error("%s: %s (--sampler, --steps, --eta, --spacing)", a->checkpoint, why);
    return DM_EUSAGE;
}

/* The images a walk starts from: --noise FILE's /noise, or invert's
 * --input FILE's /images, float [N,1,28,28] or [N,28,28], 1 <= N <= 100000;
 * and the file's /labels [N] (int, -1..9) where it has them. A file that
 * does not hold them is a runtime failure (exit 1), as for predict. */
typedef struct {
    const char *option, *path, *dataset;
    float *x;
    int32_t *labels; /* NULL: none in the file */
    int n;
} start_file;

static dm_status read_start_body(hid_t f, start_file *s) {
    int nd = 0;
    hsize_t dims[4] = {0};
    H5T_class_t cls;
    size_t ts;
    DM_TRY(h5_shape(f, s->path, s->dataset, &nd, dims, &cls, &ts));
    int ok = cls == H5T_FLOAT && dims[0] >= 1 && dims[0] <= 100000 &&
             ((nd == 4 && dims[1] == 1 && dims[2] == DM_IMG && dims[3] == DM_IMG) ||
              (nd == 3 && dims[1] == DM_IMG && dims[2] == DM_IMG));
    if (!ok) {
        dm_error("%s %s: %s must be float [N,1,28,28] with 1 <= N <= 100000", s->option,
                 s->path, s->dataset);
        return DM_EIO;
    }
    s->n = (int)dims[0];
    s->x = dm_malloc(sizeof(float) * (size_t)s->n * DM_PIX);
    DM_TRY(h5_read_f32(f, s->path, s->dataset, s->x, nd, dims));
    htri_t has = h5_exists(f, "/labels");
    if (has <= 0) return has < 0 ? DM_EIO : DM_OK;
    DM_TRY(h5_shape(f, s->path, "/labels", &nd, dims, &cls, &ts));
    if (cls != H5T_INTEGER || nd != 1 || dims[0] != (hsize_t)s->n) {
        dm_error("%s %s: /labels must be [%d] integers", s->option, s->path, s->n);
        return DM_EIO;
    }
    s->labels = dm_malloc(sizeof(int32_t) * (size_t)s->n);
    DM_TRY(h5_read_any(f, s->path, "/labels", H5T_NATIVE_INT32, s->labels));
    for (int i = 0; i < s->n; i++)
        if (s->labels[i] < -1 || s->labels[i] > 9) {
            dm_error("%s %s: /labels[%d] = %d is not a digit or -1", s->option, s->path, i,
                     (int)s->labels[i]);
            return DM_EIO;
        }
    return DM_OK;
}

static dm_status read_start(start_file *s) {
    hid_t f = H5Fopen(s->path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0) {
        dm_error("%s %s: cannot open it as an HDF5 file", s->option, s->path);
        return DM_EIO;
    }
    return h5_close_file(f, s->path, "input file", read_start_body(f, s));
}

/* invert: the run's sampler where it can run backwards, else the
 * objective's first that can (ddim at eta 0 for a DDPM, euler for flow). */
static dm_status invert_sampler(const sample_args *a, dm_config *c) {
    int given = a->sampler > SAMPLER_AUTO; /* --sampler auto: as not given */
    const int cls = c->conditioning == CONDITIONING_CLASS;
    dm_sampler s = given ? (dm_sampler)a->sampler : solver_resolve(c->sampler, c->objective, cls);
    if (!given && !solver_get(s)->invertible) s = solver_inverse_default(c->objective);
    if (!solver_get(s)->invertible) {
        dm_error("--sampler %s: invert runs a deterministic first-order sampler backwards "
                 "(ddim for a DDPM, euler for flow)", solver_name(s));
        return DM_EUSAGE;
    }
    c->sampler = s;
    c->sample_eta = 0;
    return DM_OK;
}

/* Checks that need the checkpoint's configuration; identical on every rank. */
static dm_status resolve(const sample_args *a, dm_config *c, sampler_request *q,
                         const start_file *start) {
    if (!objective_get(c->objective)->diffusion) {
        dm_error("%s: a %s model cannot sample (sample needs objective ddpm or flow)",
                 a->checkpoint, config_objective_name(c->objective));
        return DM_EUSAGE;
    }
    if (a->class_label != SAMPLE_CLASS_NONE && c->conditioning != CONDITIONING_CLASS) {
        dm_error("--class: %s is not a class-conditioned model", a->checkpoint);
        return DM_EUSAGE;
    }
    if (start->x && a->n > 0 && a->n != start->n) {
        dm_error("%s %s holds %d images, --n asks for %d", start->option, start->path,
                 start->n, a->n);
        return DM_EUSAGE;
    }
    if (a->invert) DM_TRY(invert_sampler(a, c));
    DM_TRY(sampler_options(a, c));
    sampler_request_init(q, c);
    q->n = start->x ? start->n : a->n > 0 ? a->n : SAMPLE_DEFAULT_N;
    q->noise = start->x;
    q->invert = a->invert;
    if (a->guidance >= 0) q->guidance = (float)a->guidance;
    if (a->has_seed) q->seed = a->seed;
    q->frames = a->trajectory ? (q->steps + 1 < MAX_FRAMES ? q->steps + 1 : MAX_FRAMES) : 0;
    return DM_OK;
}

/* Configuration, request and model from the checkpoint (every rank). */
static dm_status load(sample_args *a, dm_config *c, sampler_request *q, unet *u,
                      start_file *start) {
    if (start->path) DM_TRY(read_start(start));
    DM_TRY(ckpt_read_config(a->checkpoint, c));
    if (a->precision >= 0) c->precision = (dm_precision)a->precision;
    int rank;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    DM_TRY(autotune_engine(c->engine, c->precision, c->threads, rank, &c->precision));
    DM_TRY(resolve(a, c, q, start));
    unet_shape sh = diffusion_shape(c, sampler_model_rows(c), sampler_model_slots(c), 1);
    unet_init(u, &sh);
    return ckpt_read_weights(a->checkpoint, u, (ckpt_weights)a->weights, &a->used_ema);
}

/* The label of image i: --class K, the start file's, or "all" (digits in
 * equal runs, 0,0,0,0,1,1,... for 40 images: the order of a training
 * run's samples); -1 for a time-only model. */
static int32_t label_of(const sample_args *a, const dm_config *c, const start_file *st, int i,
                        int n) {
    if (c->conditioning != CONDITIONING_CLASS) return -1;
    if (a->class_label >= 0) return a->class_label;
    if (st->labels && a->class_label == SAMPLE_CLASS_NONE) return st->labels[i];
    return a->invert ? -1 : (int32_t)((long)i * 10 / n);
}

static void report(const sample_args *a, const dm_config *c, const sampler_request *q,
                   double secs) {
    if (gemm_auto_note()) printf("%s\n", gemm_auto_note());
    char guided[48] = "no guidance: no class to guide by";
    if (c->conditioning == CONDITIONING_CLASS)
        snprintf(guided, sizeof guided, "guidance %g", q->guidance);
    printf("%s %d images (%s, %d steps, %d network evaluations each, %s, %s %llu, "
           "%s weights, %s) in %.2f s\n", a->invert ? "inverted" : "sampled", q->n,
           solver_get(q->sampler)->name, q->steps, solver_evals(q->sampler, q->steps), guided,
           a->noise ? "noise from --noise, step noise seed" : "seed",
           (unsigned long long)q->seed, a->used_ema ? "EMA" : "raw", gemm_describe(), secs);
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
    start_file start = {.option = a->invert ? "--input" : "--noise",
                        .path = a->invert ? a->input : a->noise,
                        .dataset = a->invert ? "/images" : "/noise"};
    dm_status st = load(a, &c, &q, &u, &start);
    dm_set_quiet(0);
    st = dm_agree(st);
    if (st != DM_OK) {
        if (u.arena) unet_free(&u);
        free(start.x), free(start.labels);
        gemm_teardown();
        return dm_exit_code(st);
    }
    int32_t *labels = dm_calloc((size_t)q.n, sizeof(int32_t));
    for (int i = 0; i < q.n; i++) labels[i] = label_of(a, &c, &start, i, q.n);
    q.labels = labels;
    float *img = rank == 0 ? dm_calloc((size_t)q.n * DM_PIX, sizeof(float)) : NULL;
    float *traj = rank == 0 && q.frames
                      ? dm_calloc((size_t)q.frames * q.n * DM_PIX, sizeof(float)) : NULL;
    float traj_t[MAX_FRAMES];
    /* Minutes at D=128: a progress line at the run's pace (or --log-every). */
    char what[64];
    snprintf(what, sizeof what, "%s %d images", a->invert ? "inverting" : "sampling", q.n);
    q.progress = what;
    q.log_every = a->log_every >= 0 ? a->log_every : c.log_every;
    double t0 = MPI_Wtime();
    sampler_run(&u, &c, &q, img, traj, traj_t);
    double secs = MPI_Wtime() - t0;
    if (rank == 0) {
        report(a, &c, &q, secs);
        st = write_outputs(a, &c, &q, img, labels, traj, traj_t, start.x);
    }
    /* Only rank 0 wrote: its status is the job's. */
    int v = dm_from_rank0((int)st);
    free(labels), free(img), free(traj), free(start.x), free(start.labels);
    unet_free(&u);
    gemm_teardown();
    return v == DM_OK ? DM_EXIT_OK : DM_EXIT_RUNTIME;
}
