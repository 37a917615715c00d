/* samples.c: figure data in samples.h5 and PNG grids (see samples.h). */
#include "diffmpi/samples.h"

#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "diffmpi/fault.h"
#include "diffmpi/h5util.h"
#include "diffmpi/png.h"

const double dm_sigmas[DM_NSIGMAS] = {0.0, 0.2, 0.4, 0.5, 0.6, 0.8, 1.0};

static dm_status copy_file(const char *src, const char *dst) {
    int in = open(src, O_RDONLY), out = -1;
    dm_status st = DM_OK;
    if (in < 0) return DM_EIO;
    out = open(dst, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    char buf[65536];
    ssize_t n = 0;
    while (out >= 0 && (n = read(in, buf, sizeof buf)) > 0)
        if (write(out, buf, (size_t)n) != n) break;
    if (out < 0 || n != 0) st = DM_EIO;
    close(in);
    if (out >= 0 && close(out) != 0) st = DM_EIO;
    return st;
}

/* Open a writable copy of samples.h5 (or a new file) under a temp name.
 * An existing samples.h5 that cannot be copied or read is left as it is
 * and the update fails: a new file renamed over it would lose the figures
 * of every earlier epoch. */
static hid_t open_copy(const char *out, char *tmp, size_t size) {
    char path[4200];
    snprintf(path, sizeof path, "%s/samples.h5", out);
    snprintf(tmp, size, "%s/.samples.h5.tmp", out);
    if (access(path, F_OK) != 0) {
        hid_t f = H5Fcreate(tmp, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
        if (f < 0) dm_error("%s: cannot create samples file", tmp);
        return f;
    }
    if (copy_file(path, tmp) != DM_OK) {
        dm_error("%s: cannot copy it to %s to add this epoch's figures (disk full?); "
                 "it is left as it is", path, tmp);
        unlink(tmp);
        return -1;
    }
    hid_t f = H5Fopen(tmp, H5F_ACC_RDWR, H5P_DEFAULT);
    if (f < 0) {
        dm_error("%s: not a readable HDF5 file, so this epoch's figures cannot be added "
                 "to it; it is left as it is: move it aside to start a new one", path);
        unlink(tmp);
    }
    return f;
}

/* Close the copy f (after its writes ended with st), sync it and rename it
 * over samples.h5; the temporary is removed when anything failed. */
static dm_status commit_renamed(hid_t f, const char *path, const char *tmp,
                                dm_status st) {
    st = h5_close_file(f, tmp, "samples file (disk full?)", st);
    fault_point("samples");
    DM_TRY(st);
    return fs_commit_tmp(tmp, path);
}

static dm_status commit_copy(hid_t f, const char *out, const char *tmp,
                             dm_status st) {
    char path[4200];
    snprintf(path, sizeof path, "%s/samples.h5", out);
    st = commit_renamed(f, path, tmp, st);
    if (st != DM_OK) unlink(tmp);
    return st;
}

/* The attributes every group carries. */
static dm_status group_attrs(hid_t g, const char *file, const dm_config *c) {
    double idx[SAMPLES_K];
    for (int i = 0; i < SAMPLES_K; i++) idx[i] = i;
    char cfg[8192];
    config_to_string(c, cfg, sizeof cfg);
    DM_TRY(h5_attr_f64v(g, file, "sigmas", dm_sigmas, DM_NSIGMAS));
    DM_TRY(h5_attr_f64v(g, file, "test_indices", idx, SAMPLES_K));
    DM_TRY(h5_attr_str(g, file, "config", cfg));
    return h5_attr_build(g, file);
}

/* Create group `name` (replacing an old one, intermediate groups created);
 * -1 on failure. */
static hid_t create_group(hid_t f, const char *name) {
    htri_t old = h5_exists(f, name);
    if (old < 0 || (old > 0 && H5Ldelete(f, name, H5P_DEFAULT) < 0)) return -1;
    hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
    if (lcpl < 0) return -1;
    hid_t g = H5Pset_create_intermediate_group(lcpl, 1) < 0
                  ? -1
                  : H5Gcreate2(f, name, lcpl, H5P_DEFAULT, H5P_DEFAULT);
    if (H5Pclose(lcpl) < 0 && g >= 0) {
        H5Gclose(g); /* after a failure: its result changes nothing */
        g = -1;
    }
    return g;
}

/* Close group g of file (after its writes ended with st). */
static dm_status close_group(hid_t g, const char *file, const char *name,
                             dm_status st) {
    if (H5Gclose(g) >= 0 || st != DM_OK) return st;
    dm_error("%s: cannot close group %s", file, name);
    return DM_EIO;
}

/* Create (replacing) group `name` with the common attributes. */
static hid_t new_group(hid_t f, const char *file, const char *name,
                       const dm_config *c) {
    hid_t g = create_group(f, name);
    if (g < 0) {
        dm_error("%s: cannot create group %s", file, name);
        return -1;
    }
    if (group_attrs(g, file, c) != DM_OK) {
        H5Gclose(g); /* after a failure: its result changes nothing */
        return -1;
    }
    return g;
}

static dm_status png(const char *out, const char *name, const float *img,
                     int rows, int cols) {
    char path[4200];
    snprintf(path, sizeof path, "%s/%s", out, name);
    return png_write_grid(path, img, rows, cols, DM_IMG, DM_IMG, 2);
}

/* img: [DM_NSIGMAS][SAMPLES_K][784]. */
static dm_status write_noising(hid_t f, const char *tmp, const dm_config *c,
                               const float *img) {
    hid_t g = new_group(f, tmp, "/noising", c);
    if (g < 0) return DM_EIO;
    hsize_t dims[4] = {DM_NSIGMAS, SAMPLES_K, DM_IMG, DM_IMG};
    return close_group(g, tmp, "/noising", h5_write_f32(g, tmp, "images", img, 4, dims));
}

dm_status samples_write_noising(const char *out, const dm_config *c, const float *img) {
    char tmp[4300];
    hid_t f = open_copy(out, tmp, sizeof tmp);
    if (f < 0) return DM_EIO;
    DM_TRY(commit_copy(f, out, tmp, write_noising(f, tmp, c, img)));
    return png(out, "noising.png", img, DM_NSIGMAS, SAMPLES_K);
}

/* img = [clean | noisy | denoised], each [SAMPLES_K][784]. */
static dm_status denoise_body(hid_t g, const char *tmp, int epoch, const float *img) {
    hsize_t dims[3] = {SAMPLES_K, DM_IMG, DM_IMG};
    DM_TRY(h5_attr_i64(g, tmp, "epoch", epoch));
    DM_TRY(h5_attr_f64(g, tmp, "sigma", dm_sigmas[DM_SIGMA_EVAL]));
    DM_TRY(h5_write_f32(g, tmp, "clean", img, 3, dims));
    DM_TRY(h5_write_f32(g, tmp, "noisy", img + SAMPLES_K * DM_PIX, 3, dims));
    return h5_write_f32(g, tmp, "denoised", img + 2 * SAMPLES_K * DM_PIX, 3, dims);
}

static dm_status write_denoise(hid_t f, const char *tmp, const dm_config *c,
                               int epoch, const float *img) {
    char name[64];
    snprintf(name, sizeof name, "/denoise/epoch_%04d", epoch);
    hid_t g = new_group(f, tmp, name, c);
    if (g < 0) return DM_EIO;
    return close_group(g, tmp, name, denoise_body(g, tmp, epoch, img));
}

dm_status samples_write_denoise(const char *out, const dm_config *c, int epoch,
                                const float *img) {
    char tmp[4300], name[64];
    hid_t f = open_copy(out, tmp, sizeof tmp);
    if (f < 0) return DM_EIO;
    DM_TRY(commit_copy(f, out, tmp, write_denoise(f, tmp, c, epoch, img)));
    snprintf(name, sizeof name, "denoise-epoch-%d.png", epoch);
    return png(out, name, img, 3, SAMPLES_K);
}

/* img = [noisy | denoised], each [DM_NSIGMAS][784]. */
static dm_status ood_body(hid_t g, const char *tmp, const float *img,
                          const double *test_mse) {
    hsize_t dims[3] = {DM_NSIGMAS, DM_IMG, DM_IMG}, n = DM_NSIGMAS;
    DM_TRY(h5_write_f32(g, tmp, "noisy", img, 3, dims));
    DM_TRY(h5_write_f32(g, tmp, "denoised", img + DM_NSIGMAS * DM_PIX, 3, dims));
    return h5_write_f64(g, tmp, "test_mse", test_mse, 1, &n);
}

static dm_status write_ood(hid_t f, const char *tmp, const dm_config *c,
                           const float *img, const double *test_mse) {
    hid_t g = new_group(f, tmp, "/ood", c);
    if (g < 0) return DM_EIO;
    return close_group(g, tmp, "/ood", ood_body(g, tmp, img, test_mse));
}

dm_status samples_write_ood(const char *out, const dm_config *c, const float *img,
                            const double *test_mse) {
    char tmp[4300];
    hid_t f = open_copy(out, tmp, sizeof tmp);
    if (f < 0) return DM_EIO;
    DM_TRY(commit_copy(f, out, tmp, write_ood(f, tmp, c, img, test_mse)));
    return png(out, "ood.png", img, 2, DM_NSIGMAS);
}

/* 40 samples as 4 rows x 10 columns; class models: column = digit. */
static void sample_grid(float *grid, const float *img, int class_model) {
    for (int i = 0; i < SAMPLES_N; i++) {
        int row = class_model ? i % 4 : i / 10, col = class_model ? i / 4 : i % 10;
        memcpy(grid + (long)(row * 10 + col) * DM_PIX, img + (long)i * DM_PIX,
               sizeof(float) * DM_PIX);
    }
}

dm_status samples_sampler_attrs(hid_t loc, const char *file, const samples_sampler *s) {
    if (!isnan(s->guidance)) /* nothing to guide by otherwise */
        DM_TRY(h5_attr_f64(loc, file, "guidance", s->guidance));
    DM_TRY(h5_attr_str(loc, file, "sampler", s->sampler));
    DM_TRY(h5_attr_i64(loc, file, "steps", s->steps));
    DM_TRY(h5_attr_i64(loc, file, "evaluations", s->evaluations));
    DM_TRY(h5_attr_str(loc, file, "spacing", s->spacing));
    DM_TRY(h5_attr_f64(loc, file, "eta", s->eta));
    DM_TRY(h5_attr_u64(loc, file, "seed", s->seed));
    return h5_attr_str(loc, file, "objective", s->objective);
}

static dm_status samples_body(hid_t g, const char *tmp, const samples_diffusion *e) {
    hsize_t d3[3] = {SAMPLES_N, DM_IMG, DM_IMG}, n1 = SAMPLES_N;
    DM_TRY(h5_write_f32(g, tmp, "images", e->img, 3, d3));
    DM_TRY(h5_write_i32(g, tmp, "labels", e->labels, 1, &n1));
    DM_TRY(h5_attr_i64(g, tmp, "epoch", e->epoch));
    return samples_sampler_attrs(g, tmp, &e->how);
}

static dm_status batch_vis_body(hid_t g, const char *tmp, const samples_diffusion *e) {
    hsize_t v3[3] = {8, DM_IMG, DM_IMG}, v1 = 8;
    DM_TRY(h5_write_f32(g, tmp, "x0", e->vis, 3, v3));
    DM_TRY(h5_write_f32(g, tmp, "xt", e->vis + 8 * DM_PIX, 3, v3));
    DM_TRY(h5_write_f32(g, tmp, "x0_hat", e->vis + 16 * DM_PIX, 3, v3));
    DM_TRY(h5_write_f32(g, tmp, "t", e->vt, 1, &v1));
    return h5_attr_i64(g, tmp, "epoch", e->epoch);
}

static dm_status trajectory_body(hid_t g, const char *tmp, const samples_diffusion *e) {
    hsize_t t4[4] = {(hsize_t)e->frames, SAMPLES_N, DM_IMG, DM_IMG}, t1 = (hsize_t)e->frames;
    DM_TRY(h5_write_f32(g, tmp, "images", e->traj, 4, t4));
    DM_TRY(h5_write_f32(g, tmp, "t", e->traj_t, 1, &t1));
    return h5_attr_i64(g, tmp, "epoch", e->epoch);
}

static dm_status write_diffusion(hid_t f, const char *tmp, const dm_config *c,
                                 const samples_diffusion *e) {
    char name[64];
    snprintf(name, sizeof name, "/samples/epoch_%04d", e->epoch);
    hid_t g = new_group(f, tmp, name, c);
    if (g < 0) return DM_EIO;
    DM_TRY(close_group(g, tmp, name, samples_body(g, tmp, e)));
    snprintf(name, sizeof name, "/batch_vis/epoch_%04d", e->epoch);
    g = new_group(f, tmp, name, c);
    if (g < 0) return DM_EIO;
    DM_TRY(close_group(g, tmp, name, batch_vis_body(g, tmp, e)));
    if (!e->traj) return DM_OK;
    g = new_group(f, tmp, "/trajectory", c);
    if (g < 0) return DM_EIO;
    return close_group(g, tmp, "/trajectory", trajectory_body(g, tmp, e));
}

/* The epoch's groups, then its two PNGs. */
static dm_status diffusion_outputs(const char *out, const dm_config *c,
                                   const samples_diffusion *e, float *grid) {
    char tmp[4300], name[64];
    hid_t f = open_copy(out, tmp, sizeof tmp);
    if (f < 0) return DM_EIO;
    DM_TRY(commit_copy(f, out, tmp, write_diffusion(f, tmp, c, e)));
    sample_grid(grid, e->img, c->conditioning == CONDITIONING_CLASS);
    snprintf(name, sizeof name, "samples-epoch-%d.png", e->epoch);
    DM_TRY(png(out, name, grid, 4, 10));
    snprintf(name, sizeof name, "batch-epoch-%d.png", e->epoch);
    return png(out, name, e->vis, 3, 8);
}

dm_status samples_write_diffusion(const char *out, const dm_config *c,
                                  const samples_diffusion *e) {
    float *grid = dm_malloc(sizeof(float) * SAMPLES_N * DM_PIX);
    dm_status st = diffusion_outputs(out, c, e, grid);
    free(grid);
    return st;
}
