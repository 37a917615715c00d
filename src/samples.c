/* samples.c: figure data in samples.h5 and PNG grids (see samples.h). */
#include "diffmpi/samples.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "diffmpi/fault.h"
#include "diffmpi/h5util.h"
#include "diffmpi/png.h"
#include "diffmpi/sampler.h"
#include "diffmpi/train.h"

#define SIGMA_IDX_HALF 3 /* dm_sigmas[3] == 0.5 */

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

/* Open a writable copy of samples.h5 (or a new file) under a temp name. */
static hid_t open_copy(const char *out, char *tmp, size_t size) {
    char path[4200];
    snprintf(path, sizeof path, "%s/samples.h5", out);
    snprintf(tmp, size, "%s/.samples.h5.tmp", out);
    hid_t f = -1;
    if (access(path, F_OK) == 0 && copy_file(path, tmp) == DM_OK)
        f = H5Fopen(tmp, H5F_ACC_RDWR, H5P_DEFAULT);
    if (f < 0) f = H5Fcreate(tmp, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    if (f < 0) dm_error("%s: cannot create samples file", tmp);
    return f;
}

static dm_status commit_copy(hid_t f, const char *out, const char *tmp,
                             dm_status st) {
    char path[4200];
    snprintf(path, sizeof path, "%s/samples.h5", out);
    if (H5Fclose(f) < 0 && st == DM_OK) {
        dm_error("%s: cannot close samples file (disk full?)", tmp);
        st = DM_EIO;
    }
    fault_point("samples");
    if (st == DM_OK) st = fs_sync_file(tmp);
    if (st == DM_OK && rename(tmp, path) != 0) {
        dm_error("%s: cannot rename into place: %s", path, strerror(errno));
        st = DM_EIO;
    }
    if (st != DM_OK) unlink(tmp);
    return st;
}

/* Create (replacing) group `name` with the common attributes. */
static hid_t new_group(hid_t f, const char *file, const char *name,
                       const dm_config *c) {
    if (H5Lexists(f, name, H5P_DEFAULT) > 0) H5Ldelete(f, name, H5P_DEFAULT);
    hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
    H5Pset_create_intermediate_group(lcpl, 1);
    hid_t g = H5Gcreate2(f, name, lcpl, H5P_DEFAULT, H5P_DEFAULT);
    H5Pclose(lcpl);
    if (g < 0) {
        dm_error("%s: cannot create group %s", file, name);
        return -1;
    }
    double idx[SAMPLES_K];
    for (int i = 0; i < SAMPLES_K; i++) idx[i] = i;
    char cfg[8192];
    config_to_string(c, cfg, sizeof cfg);
    if (h5_attr_f64v(g, file, "sigmas", dm_sigmas, DM_NSIGMAS) != DM_OK ||
        h5_attr_f64v(g, file, "test_indices", idx, SAMPLES_K) != DM_OK ||
        h5_attr_str(g, file, "config", cfg) != DM_OK) {
        H5Gclose(g);
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

dm_status samples_noising(const char *out, const dm_config *c,
                          const dm_dataset *test) {
    static float img[DM_NSIGMAS * SAMPLES_K * DM_PIX];
    for (int s = 0; s < DM_NSIGMAS; s++)
        for (int i = 0; i < SAMPLES_K; i++)
            diffusion_noisy_at(c, img + (long)(s * SAMPLES_K + i) * DM_PIX,
                            test->images + (long)i * DM_PIX, dm_sigmas[s], s, i);
    char tmp[4300];
    hid_t f = open_copy(out, tmp, sizeof tmp);
    if (f < 0) return DM_EIO;
    hid_t g = new_group(f, tmp, "/noising", c);
    hsize_t dims[4] = {DM_NSIGMAS, SAMPLES_K, DM_IMG, DM_IMG};
    dm_status st = g < 0 ? DM_EIO : h5_write_f32(g, tmp, "images", img, 4, dims);
    if (g >= 0) H5Gclose(g);
    st = commit_copy(f, out, tmp, st);
    if (st == DM_OK) st = png(out, "noising.png", img, DM_NSIGMAS, SAMPLES_K);
    return st;
}

dm_status samples_epoch(const char *out, unet *u, const dm_config *c,
                        const dm_dataset *test, int epoch, int rank) {
    if (rank != 0) return DM_OK;
    static float img[3 * SAMPLES_K * DM_PIX];
    float *clean = img, *noisy = img + SAMPLES_K * DM_PIX,
          *den = img + 2 * SAMPLES_K * DM_PIX;
    memcpy(clean, test->images, sizeof(float) * SAMPLES_K * DM_PIX);
    for (int i = 0; i < SAMPLES_K; i++)
        diffusion_noisy_at(c, noisy + (long)i * DM_PIX, clean + (long)i * DM_PIX,
                        dm_sigmas[SIGMA_IDX_HALF], SIGMA_IDX_HALF, i);
    unet_predict(u, den, noisy, NULL, NULL, SAMPLES_K);
    char tmp[4300], name[64];
    hid_t f = open_copy(out, tmp, sizeof tmp);
    if (f < 0) return DM_EIO;
    snprintf(name, sizeof name, "/denoise/epoch_%04d", epoch);
    hid_t g = new_group(f, tmp, name, c);
    hsize_t dims[3] = {SAMPLES_K, DM_IMG, DM_IMG};
    dm_status st = g < 0 ? DM_EIO : h5_attr_i64(g, tmp, "epoch", epoch);
    if (st == DM_OK) st = h5_attr_f64(g, tmp, "sigma", dm_sigmas[SIGMA_IDX_HALF]);
    if (st == DM_OK) st = h5_write_f32(g, tmp, "clean", clean, 3, dims);
    if (st == DM_OK) st = h5_write_f32(g, tmp, "noisy", noisy, 3, dims);
    if (st == DM_OK) st = h5_write_f32(g, tmp, "denoised", den, 3, dims);
    if (g >= 0) H5Gclose(g);
    st = commit_copy(f, out, tmp, st);
    snprintf(name, sizeof name, "denoise-epoch-%d.png", epoch);
    if (st == DM_OK) st = png(out, name, img, 3, SAMPLES_K);
    return st;
}

dm_status samples_ood(const char *out, unet *u, const dm_config *c,
                      const dm_dataset *test, const double *test_mse,
                      int rank) {
    if (rank != 0) return DM_OK;
    static float img[2 * DM_NSIGMAS * DM_PIX];
    float *noisy = img, *den = img + DM_NSIGMAS * DM_PIX;
    for (int s = 0; s < DM_NSIGMAS; s++)
        diffusion_noisy_at(c, noisy + (long)s * DM_PIX, test->images, dm_sigmas[s], s, 0);
    unet_predict(u, den, noisy, NULL, NULL, DM_NSIGMAS);
    char tmp[4300];
    hid_t f = open_copy(out, tmp, sizeof tmp);
    if (f < 0) return DM_EIO;
    hid_t g = new_group(f, tmp, "/ood", c);
    hsize_t dims[3] = {DM_NSIGMAS, DM_IMG, DM_IMG}, n = DM_NSIGMAS;
    dm_status st = g < 0 ? DM_EIO : h5_write_f32(g, tmp, "noisy", noisy, 3, dims);
    if (st == DM_OK) st = h5_write_f32(g, tmp, "denoised", den, 3, dims);
    if (st == DM_OK) st = h5_write_f64(g, tmp, "test_mse", test_mse, 1, &n);
    if (g >= 0) H5Gclose(g);
    st = commit_copy(f, out, tmp, st);
    if (st == DM_OK) st = png(out, "ood.png", img, 2, DM_NSIGMAS);
    return st;
}

/* The first 8 training images at 8 fixed times, and the model's estimate of
 * the clean image: img = [x0 | xt | x0_hat] each [8][784]. */
static void batch_vis(unet *net, const dm_config *c, const ddpm_schedule *s,
                      const dm_dataset *train, float *img, float *t) {
    enum { K = 8 };
    static float target[K * DM_PIX], out[K * DM_PIX];
    int32_t labels[K];
    float *x0 = img, *xt = img + K * DM_PIX, *est = img + 2 * K * DM_PIX;
    memcpy(x0, train->images, sizeof(float) * K * DM_PIX);
    for (int i = 0; i < K; i++) {
        diffusion_example_at(c, s, xt + i * DM_PIX, target + i * DM_PIX, &t[i],
                             x0 + i * DM_PIX, (i + 0.5) / K, 2000, i);
        labels[i] = c->conditioning == COND_CLASS ? train->labels[i] : -1;
    }
    unet_predict(net, out, xt, t, labels, K);
    for (int i = 0; i < K; i++)
        diffusion_x0_hat(c, s, est + i * DM_PIX, xt + i * DM_PIX, out + i * DM_PIX, t[i],
                         DM_PIX);
}

/* 40 samples as 4 rows x 10 columns; class models: column = digit. */
static void sample_grid(float *grid, const float *img, int class_model) {
    for (int i = 0; i < SAMPLES_N; i++) {
        int row = class_model ? i % 4 : i / 10, col = class_model ? i / 4 : i % 10;
        memcpy(grid + (long)(row * 10 + col) * DM_PIX, img + (long)i * DM_PIX,
               sizeof(float) * DM_PIX);
    }
}

static dm_status write_diffusion(const char *out, const dm_config *c, int epoch,
                                 const float *img, const int32_t *labels, int steps,
                                 const float *vis, const float *vt, const float *traj,
                                 const float *traj_t) {
    char tmp[4300], name[64];
    hid_t f = open_copy(out, tmp, sizeof tmp);
    if (f < 0) return DM_EIO;
    snprintf(name, sizeof name, "/samples/epoch_%04d", epoch);
    hid_t g = new_group(f, tmp, name, c);
    hsize_t d3[3] = {SAMPLES_N, DM_IMG, DM_IMG}, n1 = SAMPLES_N;
    dm_status st = g < 0 ? DM_EIO : h5_write_f32(g, tmp, "images", img, 3, d3);
    if (st == DM_OK) st = h5_write_i32(g, tmp, "labels", labels, 1, &n1);
    if (st == DM_OK) st = h5_attr_i64(g, tmp, "epoch", epoch);
    if (st == DM_OK) st = h5_attr_f64(g, tmp, "guidance", c->guidance);
    if (st == DM_OK) st = h5_attr_i64(g, tmp, "steps", steps);
    if (st == DM_OK) st = h5_attr_u64(g, tmp, "seed", c->seed);
    if (st == DM_OK) st = h5_attr_str(g, tmp, "objective", config_objective_name(c->objective));
    if (g >= 0) H5Gclose(g);
    snprintf(name, sizeof name, "/batch_vis/epoch_%04d", epoch);
    g = st == DM_OK ? new_group(f, tmp, name, c) : -1;
    hsize_t v3[3] = {8, DM_IMG, DM_IMG}, v1 = 8;
    if (g < 0) st = DM_EIO;
    if (st == DM_OK) st = h5_write_f32(g, tmp, "x0", vis, 3, v3);
    if (st == DM_OK) st = h5_write_f32(g, tmp, "xt", vis + 8 * DM_PIX, 3, v3);
    if (st == DM_OK) st = h5_write_f32(g, tmp, "x0_hat", vis + 16 * DM_PIX, 3, v3);
    if (st == DM_OK) st = h5_write_f32(g, tmp, "t", vt, 1, &v1);
    if (st == DM_OK) st = h5_attr_i64(g, tmp, "epoch", epoch);
    if (g >= 0) H5Gclose(g);
    if (st == DM_OK && traj) {
        g = new_group(f, tmp, "/trajectory", c);
        hsize_t t4[4] = {SAMPLES_FRAMES, SAMPLES_N, DM_IMG, DM_IMG}, t1 = SAMPLES_FRAMES;
        if (g < 0) st = DM_EIO;
        if (st == DM_OK) st = h5_write_f32(g, tmp, "images", traj, 4, t4);
        if (st == DM_OK) st = h5_write_f32(g, tmp, "t", traj_t, 1, &t1);
        if (st == DM_OK) st = h5_attr_i64(g, tmp, "epoch", epoch);
        if (g >= 0) H5Gclose(g);
    }
    return commit_copy(f, out, tmp, st);
}

dm_status samples_diffusion(const char *out, unet *net, unet *sampler,
                            const dm_config *c, const ddpm_schedule *s,
                            const dm_dataset *train, int epoch, int rank) {
    int class_model = c->conditioning == COND_CLASS, last = epoch == c->epochs;
    int steps = diffusion_steps(c);
    int32_t labels[SAMPLES_N];
    for (int i = 0; i < SAMPLES_N; i++) labels[i] = class_model ? i / 4 : -1;
    sampler_request q = {.n = SAMPLES_N, .labels = labels, .guidance = (float)c->guidance,
                         .steps = steps, .seed = c->seed,
                         .frames = last ? SAMPLES_FRAMES : 0};
    float *img = rank == 0 ? dm_calloc(SAMPLES_N * DM_PIX, sizeof(float)) : NULL;
    float *traj = rank == 0 && last
                      ? dm_calloc((size_t)SAMPLES_FRAMES * SAMPLES_N * DM_PIX, sizeof(float))
                      : NULL;
    float traj_t[SAMPLES_FRAMES];
    sampler_run(sampler, c, &q, img, traj, traj_t);
    dm_status st = DM_OK;
    if (rank == 0) {
        static float vis[24 * DM_PIX], grid[SAMPLES_N * DM_PIX];
        float vt[8];
        batch_vis(net, c, s, train, vis, vt);
        st = write_diffusion(out, c, epoch, img, labels, steps, vis, vt, traj, traj_t);
        char name[64];
        sample_grid(grid, img, class_model);
        snprintf(name, sizeof name, "samples-epoch-%d.png", epoch);
        if (st == DM_OK) st = png(out, name, grid, 4, 10);
        snprintf(name, sizeof name, "batch-epoch-%d.png", epoch);
        if (st == DM_OK) st = png(out, name, vis, 3, 8);
    }
    free(img);
    free(traj);
    return st;
}
