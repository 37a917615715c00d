/* h5log.c: the SWMR training log (see h5log.h). */
#include "diffmpi/h5log.h"

#include <errno.h>
#include <math.h>
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
    {"step", 1, 64},      {"epoch", 1, 32},      {"test_mse", 0, 64},
    {"test_loss", 0, 64}, {"test_acc", 0, 64},   {"sample_acc", 0, 64},
    {"sample_fd", 0, 64},
};
/* Columns an older log may lack: copied as NaN. */
#define LOG_EVAL_REQUIRED 3

static hid_t file_type(const col *c) {
    if (!c->is_int) return H5T_IEEE_F64LE;
    return c->bits == 64 ? H5T_STD_I64LE : H5T_STD_I32LE;
}

/* The n datasets of one group: 1-D, extendible, chunked (space sp and
 * creation properties dcpl; ok == 0 when making those failed). On failure
 * the datasets created so far stay in ds[] for log_close. */
static dm_status create_datasets(dm_log *l, hid_t g, const char *group,
                                 const col *cols, int n, hid_t *ds, hid_t sp,
                                 hid_t dcpl, int ok) {
    for (int i = 0; i < n; i++) {
        ds[i] = !ok ? -1 : H5Dcreate2(g, cols[i].name, file_type(&cols[i]), sp,
                                      H5P_DEFAULT, dcpl, H5P_DEFAULT);
        if (ds[i] < 0) {
            dm_error("%s: cannot create dataset %s/%s", l->path, group, cols[i].name);
            return DM_EIO;
        }
    }
    return DM_OK;
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
    /* Chunked to grow; Fletcher32 on each chunk, as every dataset (h5util.h). */
    int ok = sp >= 0 && dcpl >= 0 && H5Pset_chunk(dcpl, 1, &chunk) >= 0 &&
             (!h5_checksums || H5Pset_fletcher32(dcpl) >= 0);
    dm_status st = create_datasets(l, g, group, cols, n, ds, sp, dcpl, ok);
    ok = 1;
    if (dcpl >= 0 && H5Pclose(dcpl) < 0) ok = 0;
    if (sp >= 0 && H5Sclose(sp) < 0) ok = 0;
    if (H5Gclose(g) < 0) ok = 0;
    if (!ok && st == DM_OK) {
        dm_error("%s: cannot create group %s", l->path, group);
        st = DM_EIO;
    }
    return st;
}

/* Write *src (of memory type mt) into row `at` of the 1-D dataset ds, which
 * already has that row. */
static herr_t write_row(hid_t ds, hid_t mt, hsize_t at, const void *src) {
    hsize_t one = 1;
    hid_t fs = H5Dget_space(ds);
    hid_t ms = fs < 0 ? -1 : H5Screate_simple(1, &one, NULL);
    herr_t st = ms < 0 ? -1 : H5Sselect_hyperslab(fs, H5S_SELECT_SET, &at, NULL, &one, NULL);
    if (st >= 0) st = H5Dwrite(ds, mt, ms, fs, H5P_DEFAULT, src);
    if (ms >= 0 && H5Sclose(ms) < 0) st = -1;
    if (fs >= 0 && H5Sclose(fs) < 0) st = -1;
    return st;
}

/* Append one row: values given as doubles, converted to the column type. */
static dm_status append(dm_log *l, hid_t *ds, const col *cols, int n,
                        hsize_t *rows, const double *v) {
    hsize_t at = *rows, newsize = *rows + 1;
    for (int i = 0; i < n; i++) {
        int64_t iv = (int64_t)v[i];
        const void *src = cols[i].is_int ? (const void *)&iv : (const void *)&v[i];
        hid_t mt = cols[i].is_int ? H5T_NATIVE_INT64 : H5T_NATIVE_DOUBLE;
        if (H5Dset_extent(ds[i], &newsize) < 0 || write_row(ds[i], mt, at, src) < 0) {
            dm_error("%s: cannot append to the log (disk full?)", l->path);
            return DM_EIO;
        }
    }
    *rows = newsize;
    return DM_OK;
}

/* A new file in the latest format, which SWMR needs; -1 on failure. */
static hid_t create_swmr_file(const char *path) {
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    if (fapl < 0) return -1;
    hid_t f = H5Pset_libver_bounds(fapl, H5F_LIBVER_LATEST, H5F_LIBVER_LATEST) < 0
                  ? -1
                  : H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, fapl);
    if (H5Pclose(fapl) < 0 && f >= 0) {
        H5Fclose(f); /* after a failure: its result changes nothing */
        f = -1;
    }
    return f;
}

static dm_status create_file(dm_log *l, const char *path, const dm_config *c,
                             double eval_sigma) {
    l->f = create_swmr_file(path);
    if (l->f < 0) {
        dm_error("%s: cannot create log file", path);
        return DM_EIO;
    }
    char cfg[8192];
    config_to_string(c, cfg, sizeof cfg);
    DM_TRY(create_cols(l, "/train", train_cols, LOG_TRAIN_COLS, l->train));
    DM_TRY(create_cols(l, "/eval", eval_cols, LOG_EVAL_COLS, l->eval));
    DM_TRY(h5_attr_str(l->f, path, "format", "diffmpi-log"));
    DM_TRY(h5_attr_i64(l->f, path, "format_version", 1));
    DM_TRY(h5_attr_str(l->f, path, "config", cfg));
    DM_TRY(h5_attr_build(l->f, path));
    return h5_attr_f64(l->f, path, "eval_sigma", eval_sigma);
}

/* Read a whole 1-D column of an old log as doubles (NULL if absent or
 * unreadable). */
static double *read_col(hid_t f, const char *name, hsize_t *n) {
    hid_t ds = H5Dopen2(f, name, H5P_DEFAULT);
    if (ds < 0) return NULL;
    hid_t sp = H5Dget_space(ds);
    hsize_t dims[1] = {0};
    int nd = sp < 0 ? -1 : H5Sget_simple_extent_ndims(sp);
    int ok = nd >= 0 && (nd != 1 || H5Sget_simple_extent_dims(sp, dims, NULL) >= 0);
    if (sp >= 0 && H5Sclose(sp) < 0) ok = 0;
    double *v = ok ? dm_malloc((size_t)(dims[0] + 1) * sizeof(double)) : NULL;
    if (v && dims[0] && H5Dread(ds, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, v) < 0)
        ok = 0;
    if (H5Dclose(ds) < 0) ok = 0;
    if (!ok) {
        free(v);
        return NULL;
    }
    *n = dims[0];
    return v;
}

/* Copy the rows of group `g` whose step passes `keep` into the new log. */
static dm_status copy_rows(dm_log *l, hid_t old, const char *g, const col *cols,
                           int ncol, hid_t *ds, hsize_t *rows, int64_t limit,
                           int inclusive) {
    double *v[LOG_MAX_COLS] = {0};
    hsize_t n = (hsize_t)-1, len[LOG_MAX_COLS] = {0};
    char name[64];
    for (int i = 0; i < ncol; i++) {
        snprintf(name, sizeof name, "%s/%s", g, cols[i].name);
        v[i] = read_col(old, name, &len[i]);
        if (!v[i]) len[i] = 0;
        /* The eval columns added since the first format may be missing. */
        int optional = ds == l->eval && i >= LOG_EVAL_REQUIRED;
        if ((!optional || v[i]) && len[i] < n) n = len[i];
    }
    dm_status st = DM_OK;
    for (hsize_t r = 0; st == DM_OK && r < n; r++) {
        int64_t step = (int64_t)v[0][r];
        if (inclusive ? step > limit : step >= limit) break;
        double row[LOG_MAX_COLS];
        for (int i = 0; i < ncol; i++) row[i] = r < len[i] ? v[i][r] : NAN;
        st = append(l, ds, cols, ncol, rows, row);
        if (ds == l->train) l->time_offset = row[4];
    }
    for (int i = 0; i < ncol; i++) free(v[i]);
    return st;
}

static dm_status copy_groups(dm_log *l, hid_t old, int64_t resume_step) {
    DM_TRY(copy_rows(l, old, "/train", train_cols, LOG_TRAIN_COLS, l->train, &l->rows,
                     resume_step, 0));
    return copy_rows(l, old, "/eval", eval_cols, LOG_EVAL_COLS, l->eval, &l->erows,
                     resume_step, 1);
}

/* Resume: copy the rows up to resume_step of the old log, when it opens. */
static dm_status copy_old(dm_log *l, int64_t resume_step) {
    hid_t old = H5Fopen(l->path, H5F_ACC_RDONLY | H5F_ACC_SWMR_READ, H5P_DEFAULT);
    if (old < 0) old = H5Fopen(l->path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (old < 0) {
        dm_error("%s: old log is unreadable; starting a new log", l->path);
        return DM_OK;
    }
    return h5_close_file(old, l->path, "the old log", copy_groups(l, old, resume_step));
}

/* Create the log under tmp, fill it, put it in place and start SWMR. */
static dm_status open_renamed(dm_log *l, const char *tmp, const dm_config *c,
                              double eval_sigma, int64_t resume_step) {
    DM_TRY(create_file(l, tmp, c, eval_sigma));
    if (resume_step >= 0 && access(l->path, F_OK) == 0) DM_TRY(copy_old(l, resume_step));
    if (H5Fflush(l->f, H5F_SCOPE_GLOBAL) < 0) {
        dm_error("%s: cannot write the new log (disk full?)", l->path);
        return DM_EIO;
    }
    DM_TRY(fs_sync_file(tmp));
    if (rename(tmp, l->path) != 0) {
        dm_error("%s: cannot rename the new log into place: %s", l->path,
                 strerror(errno));
        return DM_EIO;
    }
    if (H5Fstart_swmr_write(l->f) < 0) {
        dm_error("%s: cannot start SWMR writing", l->path);
        return DM_EIO;
    }
    return DM_OK;
}

/* Close every open handle of l (hid_t 0 is never valid: a zeroed dm_log
 * holds nothing); 0 when a close failed. */
static int close_all(dm_log *l) {
    int ok = 1;
    for (int i = 0; i < LOG_TRAIN_COLS; i++)
        if (l->train[i] > 0 && H5Dclose(l->train[i]) < 0) ok = 0;
    for (int i = 0; i < LOG_EVAL_COLS; i++)
        if (l->eval[i] > 0 && H5Dclose(l->eval[i]) < 0) ok = 0;
    if (l->f > 0 && H5Fclose(l->f) < 0) ok = 0;
    memset(l->train, 0, sizeof l->train);
    memset(l->eval, 0, sizeof l->eval);
    l->f = -1;
    return ok;
}

dm_status log_open(dm_log *l, const char *out_dir, const dm_config *c,
                   double eval_sigma, int64_t resume_step) {
    memset(l, 0, sizeof *l);
    l->f = -1;
    char tmp[4300];
    snprintf(l->path, sizeof l->path, "%s/log.h5", out_dir);
    snprintf(tmp, sizeof tmp, "%s/.log.h5.tmp", out_dir);
    dm_status st = open_renamed(l, tmp, c, eval_sigma, resume_step);
    if (st != DM_OK) {
        close_all(l); /* after a failure: its result changes nothing */
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
    DM_TRY(append(l, l->train, train_cols, LOG_TRAIN_COLS, &l->rows, row));
    return dm_now() - l->last_flush >= 1.0 ? log_flush(l) : DM_OK;
}

dm_status log_eval(dm_log *l, const dm_eval_row *e) {
    double row[LOG_EVAL_COLS] = {(double)e->step, e->epoch, e->test_mse, e->test_loss,
                                 e->test_acc, e->sample_acc, e->sample_fd};
    fault_point("log_eval");
    DM_TRY(append(l, l->eval, eval_cols, LOG_EVAL_COLS, &l->erows, row));
    return log_flush(l);
}

dm_status log_flush(dm_log *l) {
    l->last_flush = dm_now();
    if (l->f <= 0) return DM_OK;
    fault_point("log_flush");
    if (H5Fflush(l->f, H5F_SCOPE_GLOBAL) < 0) {
        dm_error("%s: cannot flush the log (disk full?)", l->path);
        return DM_EIO;
    }
    return DM_OK;
}

dm_status log_close(dm_log *l) {
    if (close_all(l)) return DM_OK;
    dm_error("%s: cannot close the log (disk full?)", l->path);
    return DM_EIO;
}
