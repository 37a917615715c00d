/* ckpt.c: atomic HDF5 checkpoints (see ckpt.h). */
#include "diffmpi/ckpt.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include <zlib.h>

#include "diffmpi/fault.h"
#include "diffmpi/h5util.h"

#define MAX_CKPTS 100000 /* checkpoint files of one run that are looked at */

static void param_dims(const unet_param *q, hsize_t *dims) {
    for (int i = 0; i < q->ndim; i++) dims[i] = (hsize_t)q->shape[i];
}

/* Tests widen the window in which a kill hits a checkpoint write. */
static void fault_delay(void) {
    const char *s = getenv("DIFFMPI_TEST_CKPT_DELAY");
    if (!s) return;
    double sec = atof(s);
    struct timespec ts = {(time_t)sec, (long)((sec - (double)(time_t)sec) * 1e9)};
    nanosleep(&ts, NULL);
}

static dm_status write_tensors(hid_t f, const char *path, const unet *u,
                               const float *m, const float *v, const ckpt_ema *ema) {
    char name[160];
    hsize_t dims[4];
    for (int i = 0; i < u->nparams_t; i++) {
        const unet_param *q = &u->params[i];
        const float *src = q->trainable ? u->p : u->bufs;
        param_dims(q, dims);
        snprintf(name, sizeof name, "/model/%s", q->name);
        DM_TRY(h5_write_f32(f, path, name, src + q->offset, q->ndim, dims));
        if (q->trainable) {
            snprintf(name, sizeof name, "/optim/m/%s", q->name);
            DM_TRY(h5_write_f32(f, path, name, m + q->offset, q->ndim, dims));
            snprintf(name, sizeof name, "/optim/v/%s", q->name);
            DM_TRY(h5_write_f32(f, path, name, v + q->offset, q->ndim, dims));
        }
        if (ema) {
            snprintf(name, sizeof name, "/ema/%s", q->name);
            DM_TRY(h5_write_f32(f, path, name, (q->trainable ? ema->p : ema->bufs) + q->offset,
                                q->ndim, dims));
        }
        if (i == u->nparams_t / 2) {
            fault_delay();
            fault_point("ckpt_mid");
        }
    }
    return DM_OK;
}

/* The root attributes that say what a checkpoint is and where training
 * stands, as one text; state_crc32 is its CRC-32 (zlib). Read back from
 * the file both when writing and when checking, so the two texts are made
 * by the same code from the same stored values. */
static dm_status state_crc(hid_t f, const char *path, int64_t *crc) {
    static const char *const ints[] = {"format_version", "step", "epoch", "batch_in_epoch",
                                       "adam_step", "hidden"};
    static const char *const strs[] = {"format", "objective", "conditioning", "config"};
    char text[8192 + 512], buf[8192];
    size_t n = 0;
    for (size_t i = 0; i < sizeof ints / sizeof *ints; i++) {
        int64_t x;
        DM_TRY(h5_get_i64(f, path, ints[i], &x));
        n += (size_t)snprintf(text + n, sizeof text - n, "%s=%lld\n", ints[i], (long long)x);
    }
    double lr;
    uint64_t seed;
    DM_TRY(h5_get_f64(f, path, "lr", &lr));
    DM_TRY(h5_get_u64(f, path, "seed", &seed));
    n += (size_t)snprintf(text + n, sizeof text - n, "lr=%a\nseed=%llu\n", lr,
                          (unsigned long long)seed);
    uLong sum = crc32(0L, (const Bytef *)text, (uInt)n);
    for (size_t i = 0; i < sizeof strs / sizeof *strs; i++) {
        DM_TRY(h5_get_str(f, path, strs[i], buf, sizeof buf));
        sum = crc32(sum, (const Bytef *)strs[i], (uInt)strlen(strs[i]));
        sum = crc32(sum, (const Bytef *)buf, (uInt)strlen(buf) + 1);
    }
    *crc = (int64_t)sum;
    return DM_OK;
}

static dm_status write_body(hid_t f, const char *path, const unet *u,
                            const float *m, const float *v, const ckpt_ema *ema,
                            const dm_train_state *s, const dm_config *c) {
    char cfg[8192];
    DM_TRY(write_tensors(f, path, u, m, v, ema));
    config_to_string(c, cfg, sizeof cfg);
    DM_TRY(h5_attr_str(f, path, "format", CKPT_FORMAT));
    DM_TRY(h5_attr_i64(f, path, "format_version", CKPT_VERSION));
    DM_TRY(h5_attr_i64(f, path, "step", s->step));
    DM_TRY(h5_attr_i64(f, path, "epoch", s->epoch));
    DM_TRY(h5_attr_i64(f, path, "batch_in_epoch", s->batch_in_epoch));
    DM_TRY(h5_attr_i64(f, path, "adam_step", s->adam_t));
    DM_TRY(h5_attr_f64(f, path, "lr", s->lr));
    DM_TRY(h5_attr_u64(f, path, "seed", c->seed));
    DM_TRY(h5_attr_i64(f, path, "hidden", c->hidden));
    DM_TRY(h5_attr_str(f, path, "objective", config_objective_name(c->objective)));
    DM_TRY(h5_attr_str(f, path, "conditioning",
                       config_conditioning_name(c->conditioning)));
    DM_TRY(h5_attr_str(f, path, "config", cfg));
    /* how time (and class) enter the network: readers need not re-derive
     * it from the objective (tools/diffmpi_torch.py) */
    DM_TRY(h5_attr_str(f, path, "cond_mix", cond_mix_name(u->mix)));
    DM_TRY(h5_attr_build(f, path));
    int64_t crc;
    DM_TRY(state_crc(f, path, &crc));
    return h5_attr_i64(f, path, "state_crc32", crc);
}

static int parse_step(const char *fname, long *step) {
    char tail[8];
    if (sscanf(fname, "ckpt-%ld%7s", step, tail) != 2) return 0;
    return strcmp(tail, ".h5") == 0 && *step >= 0;
}

static int cmp_long(const void *a, const void *b) {
    long x = *(const long *)a, y = *(const long *)b;
    return (x > y) - (x < y);
}

/* Steps of the ckpt-<step>.h5 files in dir, ascending; returns the count. */
static int list_steps(const char *dir, long *steps, int cap) {
    DIR *dp = opendir(dir);
    if (!dp) return 0;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(dp)) != NULL) {
        long st;
        if (parse_step(e->d_name, &st) && n < cap) steps[n++] = st;
    }
    closedir(dp);
    qsort(steps, (size_t)n, sizeof(long), cmp_long);
    return n;
}

int ckpt_any(const char *out_dir) {
    char dir[4096];
    long steps[4];
    snprintf(dir, sizeof dir, "%s/checkpoints", out_dir);
    return list_steps(dir, steps, 4) > 0;
}

void ckpt_remove_stale(const char *out_dir) {
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/checkpoints", out_dir);
    DIR *dp = opendir(dir);
    if (!dp) return;
    struct dirent *e;
    while ((e = readdir(dp)) != NULL) {
        size_t n = strlen(e->d_name);
        if ((strncmp(e->d_name, ".ckpt-", 6) == 0 || strncmp(e->d_name, ".epoch-", 7) == 0) &&
            n > 4 &&
            strcmp(e->d_name + n - 4, ".tmp") == 0) {
            char p[4400];
            snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
            unlink(p);
        }
    }
    closedir(dp);
}

static dm_status prune(const char *dir, int keep, long newest) {
    long *steps = dm_malloc(MAX_CKPTS * sizeof(long));
    int n = list_steps(dir, steps, MAX_CKPTS);
    dm_status st = DM_OK;
    for (int i = 0; st == DM_OK && i < n - keep; i++) {
        if (steps[i] == newest) continue;
        char p[4200];
        snprintf(p, sizeof p, "%s/ckpt-%ld.h5", dir, steps[i]);
        if (unlink(p) != 0 && errno != ENOENT) {
            dm_error("%s: cannot delete old checkpoint: %s", p, strerror(errno));
            st = DM_EIO;
        }
    }
    free(steps);
    return st;
}

/* Tests: DIFFMPI_TEST_CKPT_DAMAGE=STEP flips one byte in the middle of
 * ckpt-STEP.h5 after it is renamed, as a bad disk or copy would, so that
 * the read-back check before pruning has something to find. */
static void fault_damage(const char *fin, int64_t step) {
    const char *s = getenv("DIFFMPI_TEST_CKPT_DAMAGE");
    if (!s || atoll(s) != step) return;
    FILE *fp = fopen(fin, "r+b");
    if (!fp) return;
    if (fseek(fp, 0, SEEK_END) == 0) {
        long mid = ftell(fp) / 2;
        int c = fseek(fp, mid, SEEK_SET) == 0 ? fgetc(fp) : EOF;
        if (c != EOF && fseek(fp, mid, SEEK_SET) == 0) fputc(c ^ 0x10, fp);
    }
    fclose(fp);
}

/* Write the checkpoint under tmp and rename it to fin; the caller removes
 * tmp when this fails. Quiet: the caller prints the one line. */
static dm_status write_renamed(const char *tmp, const char *fin, const unet *u,
                               const float *m, const float *v, const ckpt_ema *ema,
                               const dm_train_state *s, const dm_config *c) {
    hid_t f = H5Fcreate(tmp, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    dm_status st = f < 0 ? DM_EIO : write_body(f, tmp, u, m, v, ema, s, c);
    if (f >= 0) st = h5_close_file(f, tmp, "checkpoint", st);
    fault_point("ckpt_closed");
    DM_TRY(st);
    DM_TRY(fs_sync_file(tmp));
    return rename(tmp, fin) != 0 ? DM_EIO : DM_OK;
}

dm_status ckpt_write(const char *out_dir, const unet *u, const float *m,
                     const float *v, const ckpt_ema *ema, const dm_train_state *s,
                     const dm_config *c, int keep) {
    char dir[4096], tmp[4300], fin[4300];
    snprintf(dir, sizeof dir, "%s/checkpoints", out_dir);
    fault_point("ckpt_begin");
    DM_TRY(fs_mkdirs(dir));
    snprintf(tmp, sizeof tmp, "%s/.ckpt-%ld.h5.tmp", dir, (long)s->step);
    snprintf(fin, sizeof fin, "%s/ckpt-%ld.h5", dir, (long)s->step);
    /* The body's own messages would name datasets of a temporary file;
     * one line naming the checkpoint says more. */
    dm_set_quiet(1);
    errno = 0;
    dm_status st = write_renamed(tmp, fin, u, m, v, ema, s, c);
    int err = errno;
    dm_set_quiet(0);
    if (st != DM_OK) {
        unlink(tmp);
        struct statvfs fs;
        int full = statvfs(dir, &fs) == 0 && (double)fs.f_bavail * fs.f_frsize < 4e6;
        dm_error("%s: cannot write checkpoint (%s); the previous checkpoints are kept",
                 fin, full ? "disk full" : err ? strerror(err) : "HDF5 write error");
        return st;
    }
    fault_point("ckpt_renamed");
    fault_damage(fin, s->step);
    st = fs_sync_dir_of(fin);
    DM_TRY(st);
    /* Read back before pruning: a write that came out damaged must not
     * cost the last intact checkpoint. */
    long checked;
    if (ckpt_verify(fin, &checked) != DM_OK) {
        dm_error("%s: the checkpoint just written does not read back intact; the previous "
                 "checkpoints are kept", fin);
        return DM_EIO;
    }
    fault_point("ckpt_prune");
    return prune(dir, keep, s->step);
}

/* Copy src to dst (a new file), flushed to disk; for ckpt_keep_as where
 * the file system has no hard links. */
static dm_status copy_file(const char *src, const char *dst) {
    FILE *in = fopen(src, "rb");
    if (!in) return DM_EIO;
    FILE *out = fopen(dst, "wb");
    if (!out) {
        fclose(in);
        return DM_EIO;
    }
    char buf[1 << 16];
    size_t n;
    int ok = 1;
    while (ok && (n = fread(buf, 1, sizeof buf, in)) > 0) ok = fwrite(buf, 1, n, out) == n;
    ok = ok && !ferror(in);
    fclose(in);
    ok = fclose(out) == 0 && ok;
    return ok ? fs_sync_file(dst) : DM_EIO;
}

dm_status ckpt_keep_as(const char *out_dir, long step, const char *name) {
    char src[4300], tmp[4400], dst[4400];
    snprintf(src, sizeof src, "%s/checkpoints/ckpt-%ld.h5", out_dir, step);
    snprintf(tmp, sizeof tmp, "%s/checkpoints/.%s.tmp", out_dir, name);
    snprintf(dst, sizeof dst, "%s/checkpoints/%s", out_dir, name);
    unlink(tmp);
    errno = 0;
    dm_status st = link(src, tmp) == 0 ? DM_OK : copy_file(src, tmp);
    if (st == DM_OK && rename(tmp, dst) != 0) st = DM_EIO;
    if (st != DM_OK) {
        int err = errno;
        unlink(tmp);
        dm_error("%s: cannot keep %s as it (%s); the checkpoint itself is written", dst, src,
                 err ? strerror(err) : "I/O error");
        return st;
    }
    return fs_sync_dir_of(dst);
}

/* The last file warned about having no checksums: one warning per file,
 * however often a command opens it. */
static char warned_unchecked[4200];

/* The format attributes of an open checkpoint, and its state checksum. */
static dm_status check_format(hid_t f, const char *path) {
    char fmt[64];
    int64_t ver;
    DM_TRY(h5_get_str(f, path, "format", fmt, sizeof fmt));
    if (strcmp(fmt, CKPT_FORMAT) != 0) {
        dm_error("%s: not a diffmpi checkpoint (format '%s')", path, fmt);
        return DM_EIO;
    }
    DM_TRY(h5_get_i64(f, path, "format_version", &ver));
    if (ver == CKPT_VERSION_UNCHECKED) {
        if (strcmp(warned_unchecked, path) != 0)
            dm_error("warning: %s was written without checksums (format version 1); it "
                     "loads, but damage to it cannot be detected", path);
        snprintf(warned_unchecked, sizeof warned_unchecked, "%s", path);
        return DM_OK;
    }
    if (ver != CKPT_VERSION) {
        dm_error("%s: unsupported checkpoint format version %lld (this build "
                 "reads %d and %d)", path, (long long)ver, CKPT_VERSION_UNCHECKED,
                 CKPT_VERSION);
        return DM_EIO;
    }
    int64_t stored, crc;
    DM_TRY(h5_get_i64(f, path, "state_crc32", &stored));
    DM_TRY(state_crc(f, path, &crc));
    if (crc != stored) {
        dm_error("%s: the training state attributes are damaged (checksum mismatch)", path);
        return DM_EIO;
    }
    return DM_OK;
}

static hid_t open_ckpt(const char *path) {
    if (access(path, R_OK) != 0) {
        dm_error("%s: cannot open checkpoint: %s", path, strerror(errno));
        return -1;
    }
    if (H5Fis_hdf5(path) <= 0) {
        dm_error("%s: not an HDF5 file (damaged or wrong file?)", path);
        return -1;
    }
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0) {
        dm_error("%s: cannot open checkpoint (damaged HDF5 file?)", path);
        return -1;
    }
    if (check_format(f, path) != DM_OK) {
        H5Fclose(f); /* after a failure: its result changes nothing */
        return -1;
    }
    return f;
}

dm_status ckpt_read_config(const char *path, dm_config *c) {
    char cfg[8192];
    hid_t f = open_ckpt(path);
    if (f < 0) return DM_EIO;
    dm_status st = h5_get_str(f, path, "config", cfg, sizeof cfg);
    DM_TRY(h5_close_file(f, path, "checkpoint", st));
    config_defaults(c);
    char origin[4200];
    snprintf(origin, sizeof origin, "%s (stored config)", path);
    if (config_load_string(c, cfg, origin) != DM_OK || config_validate(c) != DM_OK)
        return DM_EIO;
    return DM_OK;
}

static dm_status read_tensors(hid_t f, const char *path, const char *prefix,
                              const unet *u, float *dst_p, float *dst_b,
                              int trainable_only) {
    char name[160];
    hsize_t dims[4];
    for (int i = 0; i < u->nparams_t; i++) {
        const unet_param *q = &u->params[i];
        if (trainable_only && !q->trainable) continue;
        float *dst = q->trainable ? dst_p : dst_b;
        param_dims(q, dims);
        snprintf(name, sizeof name, "%s/%s", prefix, q->name);
        DM_TRY(h5_read_f32(f, path, name, dst + q->offset, q->ndim, dims));
    }
    return DM_OK;
}

static dm_status read_state(hid_t f, const char *path, dm_train_state *s) {
    DM_TRY(h5_get_i64(f, path, "step", &s->step));
    DM_TRY(h5_get_i64(f, path, "epoch", &s->epoch));
    DM_TRY(h5_get_i64(f, path, "batch_in_epoch", &s->batch_in_epoch));
    DM_TRY(h5_get_i64(f, path, "adam_step", &s->adam_t));
    DM_TRY(h5_get_f64(f, path, "lr", &s->lr));
    if (s->step < 0 || s->epoch < 0 || s->batch_in_epoch < 0 || s->adam_t < 0 ||
        !(s->lr > 0)) {
        dm_error("%s: training state attributes are out of range", path);
        return DM_EIO;
    }
    return DM_OK;
}

static dm_status read_body(hid_t f, const char *path, unet *u, float *m, float *v,
                           const ckpt_ema *ema, dm_train_state *s) {
    int64_t hidden = 0;
    DM_TRY(h5_get_i64(f, path, "hidden", &hidden));
    if (hidden != u->D) {
        dm_error("%s: checkpoint has hidden=%lld, the model has hidden=%d", path,
                 (long long)hidden, u->D);
        return DM_EIO;
    }
    DM_TRY(read_tensors(f, path, "/model", u, u->p, u->bufs, 0));
    if (m) DM_TRY(read_tensors(f, path, "/optim/m", u, m, NULL, 1));
    if (v) DM_TRY(read_tensors(f, path, "/optim/v", u, v, NULL, 1));
    if (ema) DM_TRY(read_tensors(f, path, "/ema", u, ema->p, ema->bufs, 0));
    return s ? read_state(f, path, s) : DM_OK;
}

/* A read that does not load Adam's state (predict, sample) verifies every
 * checksum first, so that a checkpoint damaged anywhere is named as such by
 * every command that opens it. One that loads m and v (resume) reads every
 * dataset of the checkpoint anyway, each read checking its checksum: it is
 * not read twice. */
static dm_status verify_then_read(hid_t f, const char *path, unet *u, float *m, float *v,
                                  ckpt_ema *ema, int *has_ema, dm_train_state *s) {
    long sums, plain;
    if (!m || !v) DM_TRY(h5_verify_all(f, path, &sums, &plain));
    htri_t e = h5_exists(f, "/ema");
    if (e < 0) {
        dm_error("%s: cannot read the checkpoint's structure", path);
        return DM_EIO;
    }
    if (has_ema) *has_ema = e > 0;
    return read_body(f, path, u, m, v, e > 0 ? ema : NULL, s);
}

dm_status ckpt_read(const char *path, unet *u, float *m, float *v,
                    dm_train_state *s) {
    return ckpt_read_train(path, u, m, v, NULL, NULL, s);
}

dm_status ckpt_read_train(const char *path, unet *u, float *m, float *v, ckpt_ema *ema,
                          int *has_ema, dm_train_state *s) {
    hid_t f = open_ckpt(path);
    if (f < 0) return DM_EIO;
    return h5_close_file(f, path, "checkpoint",
                         verify_then_read(f, path, u, m, v, ema, has_ema, s));
}

const char *ckpt_weights_name(int w) {
    static const char *const names[] = {"auto", "ema", "raw"};
    return w >= 0 && w < 3 ? names[w] : NULL;
}

dm_status ckpt_read_weights(const char *path, unet *u, ckpt_weights w, int *used_ema) {
    /* The averaged weights, when wanted and stored, load over the raw ones
     * in the model's own arrays. */
    ckpt_ema into = {u->p, u->bufs};
    int has = 0;
    DM_TRY(ckpt_read_train(path, u, NULL, NULL, w != CKPT_WEIGHTS_RAW ? &into : NULL, &has,
                           NULL));
    if (w == CKPT_WEIGHTS_EMA && !has) {
        dm_error("--weights ema: %s holds no EMA weights (its run had ema_decay = 0); use "
                 "--weights raw", path);
        return DM_EUSAGE;
    }
    if (used_ema) *used_ema = has && w != CKPT_WEIGHTS_RAW;
    return DM_OK;
}

dm_status ckpt_verify(const char *path, long *checked) {
    hid_t f = open_ckpt(path);
    if (f < 0) return DM_EIO;
    int64_t ver = 0;
    long sums = 0, plain = 0;
    dm_status st = h5_get_i64(f, path, "format_version", &ver);
    if (st == DM_OK) st = h5_verify_all(f, path, &sums, &plain);
    if (st == DM_OK && ver == CKPT_VERSION && plain > 0) {
        dm_error("%s: %ld dataset(s) without a checksum in a checksummed checkpoint "
                 "(replaced by another writer?)", path, plain);
        st = DM_EIO;
    }
    DM_TRY(h5_close_file(f, path, "checkpoint", st));
    *checked = sums + (ver == CKPT_VERSION);
    return DM_OK;
}

/* The newest of the n checkpoints steps[] in dir that verifies, into path;
 * each damaged newer one is named (its own line says what is damaged). */
static dm_status find_latest(const char *dir, const long *steps, int n,
                             char *path, size_t size) {
    for (int i = n - 1; i >= 0; i--) {
        snprintf(path, size, "%s/ckpt-%ld.h5", dir, steps[i]);
        long checked;
        if (ckpt_verify(path, &checked) != DM_OK) {
            dm_error("warning: %s is damaged (above); trying the next older checkpoint",
                     path);
            continue;
        }
        if (i < n - 1)
            dm_error("warning: skipped %d newer damaged checkpoint(s); resuming from %s",
                     n - 1 - i, path);
        return DM_OK;
    }
    if (n > 0)
        dm_error("%s: none of the %d checkpoints is intact; nothing to resume from", dir, n);
    else
        dm_error("%s: no checkpoint to resume from (--resume auto)", dir);
    return DM_EIO;
}

dm_status ckpt_resume_path(const char *out_dir, const char *resume, char *path, size_t size) {
    if (strcmp(resume, "auto") == 0) return ckpt_find_latest(out_dir, path, size);
    snprintf(path, size, "%s", resume);
    return DM_OK;
}

dm_status ckpt_find_latest(const char *out_dir, char *path, size_t size) {
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/checkpoints", out_dir);
    long *steps = dm_malloc(MAX_CKPTS * sizeof(long));
    int n = list_steps(dir, steps, MAX_CKPTS);
    dm_status st = find_latest(dir, steps, n, path, size);
    free(steps);
    return st;
}
