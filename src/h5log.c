/* h5log.c: the SWMR training log (see h5log.h). */
#include "diffmpi/h5log.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "diffmpi/fault.h"
#include "diffmpi/h5util.h"

typedef struct {
    const char *name;
    int is_int;   /* stored as int64 (step) or int32 (epoch) or float64 */
    int bits;
} col;

static const col train_cols[LOG_TRAIN_COLS] = {
    {"step", 1, 64}, {"epoch", 1, 32}, {"loss", 0, 64},
    {"lr", 0, 64}, {"time", 0, 64}, {"images_per_sec", 0, 64},
};
static const col eval_cols[LOG_EVAL_COLS] = {
    {"step", 1, 64}, {"epoch", 1, 32}, {"test_mse", 0, 64},
};

static hid_t file_type(const col *c) {
    if (!c->is_int) return H5T_IEEE_F64LE;
    return c->bits == 64 ? H5T_STD_I64LE : H5T_STD_I32LE;
}

static dm_status create_cols(dm_log *l, const char *group, const col *cols,
                             int n, hid_t *ds) {
    hid_t g = H5Gcreate2(l->f, group, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    if (g < 0) {
        dm_error("%s: cannot create group %s", l->path, group);
        return DM_EIO;
    }
    hsize_t zero = 0, unlim = H5S_UNLIMITED, chunk = 1024;
    hid_t sp = H5Screate_simple(1, &zero, &unlim);
    hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    H5Pset_chunk(dcpl, 1, &chunk);
    dm_status st = DM_OK;
    for (int i = 0; i < n; i++) {
        ds[i] = H5Dcreate2(g, cols[i].name, file_type(&cols[i]), sp, H5P_DEFAULT,
                           dcpl, H5P_DEFAULT);
        if (ds[i] < 0) {
            dm_error("%s: cannot create dataset %s/%s", l->path, group, cols[i].name);
            st = DM_EIO;
            break;
        }
    }
    H5Pclose(dcpl);
    H5Sclose(sp);
    H5Gclose(g);
    return st;
}

/* Append one row: values given as doubles, converted to the column type. */
static dm_status append(dm_log *l, hid_t *ds, const col *cols, int n,
                        hsize_t *rows, const double *v) {
    hsize_t at = *rows, newsize = *rows + 1, one = 1;
    for (int i = 0; i < n; i++) {
        int64_t iv = (int64_t)v[i];
        const void *src = cols[i].is_int ? (const void *)&iv : (const void *)&v[i];
        hid_t mt = cols[i].is_int ? H5T_NATIVE_INT64 : H5T_NATIVE_DOUBLE;
        if (H5Dset_extent(ds[i], &newsize) < 0) goto fail;
        hid_t fs = H5Dget_space(ds[i]);
        hid_t ms = H5Screate_simple(1, &one, NULL);
        herr_t st = H5Sselect_hyperslab(fs, H5S_SELECT_SET, &at, NULL, &one, NULL);
        if (st >= 0) st = H5Dwrite(ds[i], mt, ms, fs, H5P_DEFAULT, src);
        H5Sclose(ms);
        H5Sclose(fs);
        if (st < 0) goto fail;
    }
    *rows = newsize;
    return DM_OK;
fail:
    dm_error("%s: cannot append to the log (disk full?)", l->path);
    return DM_EIO;
}

static dm_status create_file(dm_log *l, const char *path, const dm_config *c,
                             double eval_sigma) {
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    /* SWMR needs the latest file format. */
    H5Pset_libver_bounds(fapl, H5F_LIBVER_LATEST, H5F_LIBVER_LATEST);
    l->f = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, fapl);
    H5Pclose(fapl);
    if (l->f < 0) {
        dm_error("%s: cannot create log file", path);
        return DM_EIO;
    }
    char cfg[8192];
    config_to_string(c, cfg, sizeof cfg);
    dm_status st = create_cols(l, "/train", train_cols, LOG_TRAIN_COLS, l->train);
    if (st == DM_OK) st = create_cols(l, "/eval", eval_cols, LOG_EVAL_COLS, l->eval);
    if (st == DM_OK) st = h5_attr_str(l->f, path, "format", "diffmpi-log");
    if (st == DM_OK) st = h5_attr_i64(l->f, path, "format_version", 1);
    if (st == DM_OK) st = h5_attr_str(l->f, path, "config", cfg);
    if (st == DM_OK) st = h5_attr_f64(l->f, path, "eval_sigma", eval_sigma);
    return st;
}

/* Read a whole 1-D column of an old log as doubles (NULL if absent). */
static double *read_col(hid_t f, const char *name, hsize_t *n) {
    hid_t ds = H5Dopen2(f, name, H5P_DEFAULT);
    if (ds < 0) return NULL;
    hid_t sp = H5Dget_space(ds);
    hsize_t dims[1] = {0};
    if (H5Sget_simple_extent_ndims(sp) != 1) dims[0] = 0;
    else H5Sget_simple_extent_dims(sp, dims, NULL);
    H5Sclose(sp);
    double *v = dm_malloc((size_t)(dims[0] + 1) * sizeof(double));
    if (dims[0] && H5Dread(ds, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, v) < 0) {
        free(v);
        v = NULL;
    }
    H5Dclose(ds);
    *n = dims[0];
    return v;
}

/* Copy the rows of group `g` whose step passes `keep` into the new log. */
static dm_status copy_rows(dm_log *l, hid_t old, const char *g, const col *cols,
                           int ncol, hid_t *ds, hsize_t *rows, int64_t limit,
                           int inclusive) {
    double *v[LOG_TRAIN_COLS] = {0};
    hsize_t n = (hsize_t)-1;
    char name[64];
    for (int i = 0; i < ncol; i++) {
        hsize_t ni = 0;
        snprintf(name, sizeof name, "%s/%s", g, cols[i].name);
        v[i] = read_col(old, name, &ni);
        if (!v[i]) ni = 0;
        if (ni < n) n = ni;
    }
    dm_status st = DM_OK;
    for (hsize_t r = 0; st == DM_OK && r < n; r++) {
        int64_t step = (int64_t)v[0][r];
        if (inclusive ? step > limit : step >= limit) break;
        double row[LOG_TRAIN_COLS];
        for (int i = 0; i < ncol; i++) row[i] = v[i][r];
        st = append(l, ds, cols, ncol, rows, row);
        if (ds == l->train) l->time_offset = row[4];
    }
    for (int i = 0; i < ncol; i++) free(v[i]);
    return st;
}

dm_status log_open(dm_log *l, const char *out_dir, const dm_config *c,
                   double eval_sigma, int64_t resume_step) {
    memset(l, 0, sizeof *l);
    l->f = -1;
    char tmp[4300];
    snprintf(l->path, sizeof l->path, "%s/log.h5", out_dir);
    snprintf(tmp, sizeof tmp, "%s/.log.h5.tmp", out_dir);
    dm_status st = create_file(l, tmp, c, eval_sigma);
    if (st == DM_OK && resume_step >= 0 && access(l->path, F_OK) == 0) {
        hid_t old = H5Fopen(l->path, H5F_ACC_RDONLY | H5F_ACC_SWMR_READ, H5P_DEFAULT);
        if (old < 0) old = H5Fopen(l->path, H5F_ACC_RDONLY, H5P_DEFAULT);
        if (old < 0) {
            dm_error("%s: old log is unreadable; starting a new log", l->path);
        } else {
            st = copy_rows(l, old, "/train", train_cols, LOG_TRAIN_COLS, l->train,
                           &l->rows, resume_step, 0);
            if (st == DM_OK)
                st = copy_rows(l, old, "/eval", eval_cols, LOG_EVAL_COLS, l->eval,
                               &l->erows, resume_step, 1);
            H5Fclose(old);
        }
    }
    if (st == DM_OK && H5Fflush(l->f, H5F_SCOPE_GLOBAL) < 0) st = DM_EIO;
    if (st == DM_OK && fs_sync_file(tmp) != DM_OK) st = DM_EIO;
    if (st == DM_OK && rename(tmp, l->path) != 0) {
        dm_error("%s: cannot rename the new log into place: %s", l->path,
                 strerror(errno));
        st = DM_EIO;
    }
    if (st == DM_OK && H5Fstart_swmr_write(l->f) < 0) {
        dm_error("%s: cannot start SWMR writing", l->path);
        st = DM_EIO;
    }
    if (st != DM_OK) {
        log_close(l);
        unlink(tmp);
    }
    l->last_flush = dm_now();
    return st;
}

dm_status log_step(dm_log *l, int64_t step, int32_t epoch, double loss,
                   double lr, double wall, double images_per_sec) {
    double row[LOG_TRAIN_COLS] = {(double)step, epoch, loss, lr,
                                  l->time_offset + wall, images_per_sec};
    fault_point("log");
    dm_status st = append(l, l->train, train_cols, LOG_TRAIN_COLS, &l->rows, row);
    if (st == DM_OK && dm_now() - l->last_flush >= 1.0) st = log_flush(l);
    return st;
}

dm_status log_eval(dm_log *l, int64_t step, int32_t epoch, double test_mse) {
    double row[LOG_EVAL_COLS] = {(double)step, epoch, test_mse};
    fault_point("log_eval");
    dm_status st = append(l, l->eval, eval_cols, LOG_EVAL_COLS, &l->erows, row);
    return st == DM_OK ? log_flush(l) : st;
}

dm_status log_flush(dm_log *l) {
    l->last_flush = dm_now();
    if (l->f < 0) return DM_OK;
    fault_point("log_flush");
    if (H5Fflush(l->f, H5F_SCOPE_GLOBAL) < 0) {
        dm_error("%s: cannot flush the log (disk full?)", l->path);
        return DM_EIO;
    }
    return DM_OK;
}

void log_close(dm_log *l) {
    for (int i = 0; i < LOG_TRAIN_COLS; i++)
        if (l->train[i] > 0) H5Dclose(l->train[i]);
    for (int i = 0; i < LOG_EVAL_COLS; i++)
        if (l->eval[i] > 0) H5Dclose(l->eval[i]);
    if (l->f >= 0) H5Fclose(l->f);
    memset(l->train, 0, sizeof l->train);
    memset(l->eval, 0, sizeof l->eval);
    l->f = -1;
}
