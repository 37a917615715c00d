/* predict.c: `diffmpi predict` - a checkpoint's network in eval mode over
 * images from an HDF5 file. Rank 0 does the work; other ranks wait. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <errno.h>
#include <mpi.h>

#include "diffmpi/ckpt.h"
#include "diffmpi/data.h"
#include "diffmpi/h5util.h"
#include "diffmpi/train.h"
#include "diffmpi/unet.h"

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
    if (c.conditioning != COND_NONE) {
        dm_error("%s: conditioned models are not supported by predict yet", ckpt);
        return DM_EIO;
    }
    float *x = NULL, *y = NULL;
    int n = 0;
    st = read_input(in, &x, &n);
    if (st != DM_OK) return st;
    unet u;
    unet_init(&u, c.hidden, c.micro_batch, 1);
    st = ckpt_read(ckpt, &u, NULL, NULL, NULL);
    if (st == DM_OK) {
        y = dm_malloc((size_t)n * DM_PIX * sizeof(float));
        unet_predict(&u, y, x, n);
        st = write_output(out, y, n);
    }
    unet_free(&u);
    free(x);
    free(y);
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
