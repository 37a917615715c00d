/* predict.c: `diffmpi predict` - a checkpoint's network in eval mode over
 * images from an HDF5 file. Rank 0 does the work; other ranks wait. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <mpi.h>

#include "diffmpi/ckpt.h"
#include "diffmpi/diffusion.h"
#include "diffmpi/data.h"
#include "diffmpi/gemm.h"
#include "diffmpi/h5util.h"
#include "diffmpi/predict.h"
#include "diffmpi/unet.h"

/* Optional 1-D dataset of n values (float32 /t or int32 /c). */
static dm_status read_vec(hid_t f, const char *path, const char *name, int n,
                          H5T_class_t want, void *dst) {
    int nd;
    hsize_t d[4];
    H5T_class_t cls;
    size_t ts;
    DM_TRY(h5_shape(f, path, name, &nd, d, &cls, &ts));
    if (nd != 1 || d[0] != (hsize_t)n || cls != want || ts != 4) {
        dm_error("%s: %s must be %s with shape [%d]", path, name,
                 want == H5T_FLOAT ? "float32" : "int32", n);
        return DM_EIO;
    }
    return h5_read_any(f, path, name, want == H5T_FLOAT ? H5T_NATIVE_FLOAT : H5T_NATIVE_INT32,
                       dst);
}

static dm_status read_cond_from(hid_t f, const char *path, const dm_config *c, int n,
                                float *t, int32_t *lab) {
    DM_TRY(read_vec(f, path, "/t", n, H5T_FLOAT, t));
    for (int i = 0; i < n; i++)
        if (!(t[i] >= 0.0f && t[i] <= 1.0f)) {
            dm_error("%s: /t[%d] = %g is outside [0, 1]", path, i, t[i]);
            return DM_EIO;
        }
    if (c->conditioning != CONDITIONING_CLASS) return DM_OK;
    DM_TRY(read_vec(f, path, "/c", n, H5T_INTEGER, lab));
    for (int i = 0; i < n; i++)
        if (lab[i] < -1 || lab[i] > 9) {
            dm_error("%s: /c[%d] = %d is outside -1..9", path, i, lab[i]);
            return DM_EIO;
        }
    return DM_OK;
}

static dm_status read_cond(const char *path, const dm_config *c, int n, float *t,
                           int32_t *lab) {
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0) {
        dm_error("%s: cannot open input file", path);
        return DM_EIO;
    }
    return h5_close_file(f, path, "input file", read_cond_from(f, path, c, n, t, lab));
}

/* /x [N,1,28,28] float32 into *x (allocated here, freed by the caller). */
static dm_status read_x(hid_t f, const char *path, float **x, int *n) {
    int nd;
    hsize_t d[4];
    H5T_class_t cls;
    size_t ts;
    DM_TRY(h5_shape(f, path, "/x", &nd, d, &cls, &ts));
    if (nd != 4 || d[1] != 1 || d[2] != DM_IMG || d[3] != DM_IMG || d[0] < 1 ||
        d[0] > 10000000) {
        dm_error("%s: /x must have shape [N,1,28,28] with N >= 1", path);
        return DM_EIO;
    }
    if (cls != H5T_FLOAT || ts != 4) {
        dm_error("%s: /x must be float32", path);
        return DM_EIO;
    }
    *n = (int)d[0];
    *x = dm_malloc((size_t)*n * DM_PIX * sizeof(float));
    return h5_read_f32(f, path, "/x", *x, 4, d);
}

static dm_status read_input(const char *path, float **x, int *n) {
    if (access(path, R_OK) != 0 || H5Fis_hdf5(path) <= 0) {
        dm_error("%s: cannot read input (missing or not an HDF5 file)", path);
        return DM_EIO;
    }
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0) {
        dm_error("%s: cannot open input file", path);
        return DM_EIO;
    }
    return h5_close_file(f, path, "input file", read_x(f, path, x, n));
}

/* Write /y into f (the temporary tmp), close, sync and rename it to path. */
static dm_status write_renamed(hid_t f, const char *path, const char *tmp,
                               const float *y, int n) {
    hsize_t d[4] = {(hsize_t)n, 1, DM_IMG, DM_IMG};
    dm_status st = h5_write_f32(f, tmp, "/y", y, 4, d);
    if (st == DM_OK) st = h5_attr_build(f, tmp);
    DM_TRY(h5_close_file(f, tmp, "output file (disk full?)", st));
    return fs_commit_tmp(tmp, path);
}

static dm_status write_output(const char *path, const float *y, int n) {
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    hid_t f = H5Fcreate(tmp, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    if (f < 0) {
        /* Name the file the user asked for; the .tmp is ours. */
        dm_error("%s: cannot create output file (as %s; does the directory "
                 "exist and is it writable?)", path, tmp);
        return DM_EIO;
    }
    dm_status st = write_renamed(f, path, tmp, y, n);
    if (st != DM_OK) unlink(tmp);
    return st;
}

/* The buffers of one prediction; predict_rank0 frees them whatever
 * happens. */
typedef struct {
    float *x, *y, *t; /* x, y: [n][784]; t: [n] */
    int32_t *lab;     /* [n] */
    int n;
} predict_bufs;

static dm_status run_model(unet *u, const char *ckpt, const char *out, predict_bufs *b,
                           int weights) {
    DM_TRY(ckpt_read_weights(ckpt, u, (ckpt_weights)weights, NULL));
    b->y = dm_malloc((size_t)b->n * DM_PIX * sizeof(float));
    unet_predict(u, b->y, b->x, b->t, b->lab, b->n);
    return write_output(out, b->y, b->n);
}

static dm_status predict_into(const char *ckpt, const dm_config *c, const char *in,
                              const char *out, predict_bufs *b, int weights) {
    DM_TRY(read_input(in, &b->x, &b->n));
    if (c->conditioning != CONDITIONING_NONE) {
        b->t = dm_calloc((size_t)b->n, sizeof(float));
        b->lab = dm_calloc((size_t)b->n, sizeof(int32_t));
        for (int i = 0; i < b->n; i++) b->lab[i] = -1;
        DM_TRY(read_cond(in, c, b->n, b->t, b->lab));
    }
    unet u;
    unet_shape sh = diffusion_shape(c, c->micro_batch, 1, 1);
    unet_init(&u, &sh);
    dm_status st = run_model(&u, ckpt, out, b, weights);
    unet_free(&u);
    return st;
}

static dm_status predict_rank0(const char *ckpt, const char *in, const char *out,
                               int precision, int weights) {
    dm_config c;
    DM_TRY(ckpt_read_config(ckpt, &c));
    if (objective_get(c.objective)->classes) {
        dm_error("%s: a classifier (objective = %s) outputs digits, not images: judge "
                 "samples with diffmpi score", ckpt, config_objective_name(c.objective));
        return DM_EUSAGE;
    }
    if (precision >= 0) c.precision = (dm_precision)precision;
    DM_TRY(gemm_setup(c.engine, c.precision, c.threads));
    predict_bufs b = {0};
    dm_status st = predict_into(ckpt, &c, in, out, &b, weights);
    free(b.x), free(b.y), free(b.t), free(b.lab);
    return st;
}

int predict_run(const char *ckpt, const char *in_path, const char *out_path, int precision,
                int weights) {
    int rank = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    h5_quiet();
    int st = rank == 0 ? (int)predict_rank0(ckpt, in_path, out_path, precision, weights) : 0;
    gemm_teardown();
    return dm_exit_code((dm_status)dm_from_rank0(st));
}
