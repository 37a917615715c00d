/* predict.c: `diffmpi predict` - a checkpoint's network in eval mode over
 * images from an HDF5 file. Rank 0 does the work; other ranks wait. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <errno.h>
#include <mpi.h>

#include "diffmpi/ckpt.h"
#include "diffmpi/diffusion.h"
#include "diffmpi/data.h"
#include "diffmpi/h5util.h"
#include "diffmpi/train.h"
#include "diffmpi/unet.h"

/* Optional 1-D dataset of n values (float32 /t or int32 /c). */
static dm_status read_vec(hid_t f, const char *path, const char *name, int n,
                          H5T_class_t want, void *dst) {
    int nd;
    hsize_t d[4];
    H5T_class_t cls;
    size_t ts;
    dm_status st = h5_shape(f, path, name, &nd, d, &cls, &ts);
    if (st == DM_OK && (nd != 1 || d[0] != (hsize_t)n || cls != want || ts != 4)) {
        dm_error("%s: %s must be %s with shape [%d]", path, name,
                 want == H5T_FLOAT ? "float32" : "int32", n);
        st = DM_EIO;
    }
    if (st == DM_OK)
        st = h5_read_any(f, path, name, want == H5T_FLOAT ? H5T_NATIVE_FLOAT : H5T_NATIVE_INT32,
                         dst);
    return st;
}

static dm_status read_cond(const char *path, const dm_config *c, int n, float *t,
                           int32_t *lab) {
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0) return DM_EIO;
    dm_status st = read_vec(f, path, "/t", n, H5T_FLOAT, t);
    for (int i = 0; st == DM_OK && i < n; i++)
        if (!(t[i] >= 0.0f && t[i] <= 1.0f)) {
            dm_error("%s: /t[%d] = %g is outside [0, 1]", path, i, t[i]);
            st = DM_EIO;
        }
    if (st == DM_OK && c->conditioning == COND_CLASS) {
        st = read_vec(f, path, "/c", n, H5T_INTEGER, lab);
        for (int i = 0; st == DM_OK && i < n; i++)
            if (lab[i] < -1 || lab[i] > 9) {
                dm_error("%s: /c[%d] = %d is outside -1..9", path, i, lab[i]);
                st = DM_EIO;
            }
    }
    H5Fclose(f);
    return st;
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
    int nd;
    hsize_t d[4];
    H5T_class_t cls;
    size_t ts;
    dm_status st = h5_shape(f, path, "/x", &nd, d, &cls, &ts);
    if (st == DM_OK && (nd != 4 || d[1] != 1 || d[2] != DM_IMG || d[3] != DM_IMG ||
                        d[0] < 1 || d[0] > 10000000)) {
        dm_error("%s: /x must have shape [N,1,28,28] with N >= 1", path);
        st = DM_EIO;
    }
    if (st == DM_OK && (cls != H5T_FLOAT || ts != 4)) {
        dm_error("%s: /x must be float32", path);
        st = DM_EIO;
    }
    if (st == DM_OK) {
        *n = (int)d[0];
        *x = dm_malloc((size_t)*n * DM_PIX * sizeof(float));
        st = h5_read_f32(f, path, "/x", *x, 4, d);
    }
    H5Fclose(f);
    return st;
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
    hsize_t d[4] = {(hsize_t)n, 1, DM_IMG, DM_IMG};
    dm_status st = h5_write_f32(f, tmp, "/y", y, 4, d);
    if (H5Fclose(f) < 0 && st == DM_OK) {
        dm_error("%s: cannot close output file (disk full?)", tmp);
        st = DM_EIO;
    }
    if (st == DM_OK && rename(tmp, path) != 0) {
        dm_error("%s: cannot rename output into place: %s", path, strerror(errno));
        st = DM_EIO;
    }
    if (st != DM_OK) unlink(tmp);
    return st;
}

static dm_status predict_rank0(const char *ckpt, const char *in, const char *out) {
    dm_config c;
    dm_status st = ckpt_read_config(ckpt, &c);
    if (st != DM_OK) return st;
    float *x = NULL, *y = NULL, *t = NULL;
    int32_t *lab = NULL;
    int n = 0;
    st = read_input(in, &x, &n);
    if (st == DM_OK && c.conditioning != COND_NONE) {
        t = dm_calloc((size_t)n, sizeof(float));
        lab = dm_calloc((size_t)n, sizeof(int32_t));
        for (int i = 0; i < n; i++) lab[i] = -1;
        st = read_cond(in, &c, n, t, lab);
    }
    if (st != DM_OK) {
        free(x), free(t), free(lab);
        return st;
    }
    unet u;
    unet_shape sh = diffusion_shape(&c, c.micro_batch, 1, 1);
    unet_init(&u, &sh);
    st = ckpt_read(ckpt, &u, NULL, NULL, NULL);
    if (st == DM_OK) {
        y = dm_malloc((size_t)n * DM_PIX * sizeof(float));
        unet_predict(&u, y, x, t, lab, n);
        st = write_output(out, y, n);
    }
    unet_free(&u);
    free(x), free(y), free(t), free(lab);
    return st;
}

int predict_run(const char *ckpt, const char *in_path, const char *out_path) {
    int rank = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    h5_quiet();
    int st = rank == 0 ? (int)predict_rank0(ckpt, in_path, out_path) : 0;
    MPI_Bcast(&st, 1, MPI_INT, 0, MPI_COMM_WORLD);
    return st == DM_OK ? DM_EXIT_OK : DM_EXIT_RUNTIME;
}
