/* score.c: the judge's figures for a set of images (see score.h). */
#include "diffmpi/score.h"

#include <cblas.h>
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "diffmpi/ckpt.h"
#include "diffmpi/data.h"
#include "diffmpi/diffusion.h"
#include "diffmpi/dist.h"
#include "diffmpi/gemm.h"

/* LAPACK's symmetric eigensolver (Fortran ABI; Debian's OpenBLAS exports
 * it, so no LAPACKE is needed). The two trailing arguments are the hidden
 * lengths of the character arguments. */
void dsyev_(const char *jobz, const char *uplo, const int *n, double *a, const int *lda,
            double *w, double *work, const int *lwork, int *info, size_t ljobz, size_t luplo);

long first_nonfinite(const float *x, long n) {
    for (long i = 0; i < n; i++)
        if (!isfinite(x[i])) return i;
    return -1;
}

/* ---- the judge ----------------------------------------------------------------- */

/* CRC-32 of the judge's weights and BatchNorm statistics as loaded: the
 * same for the same judge whatever file (or file timestamps) holds it. */
static uint32_t weights_crc(const unet *u) {
    uLong c = crc32(0L, Z_NULL, 0);
    c = crc32(c, (const Bytef *)u->p, (uInt)(sizeof(float) * (size_t)u->nparams));
    c = crc32(c, (const Bytef *)u->bufs, (uInt)(sizeof(float) * (size_t)u->nbuffers));
    return (uint32_t)c;
}

static dm_status open_local(dm_judge *j, const char *path, int weights) {
    DM_TRY(ckpt_read_config(path, &j->cfg));
    const dm_objective_def *o = objective_get(j->cfg.objective);
    if (!o->classes) {
        dm_error("%s: not a judge: a checkpoint of objective = %s, where a classifier "
                 "(objective = classify, jobs/configs/judge.ini) is needed",
                 path, config_objective_name(j->cfg.objective));
        return DM_EUSAGE;
    }
    unet_shape sh = diffusion_shape(&j->cfg, j->cfg.micro_batch, 1, 1);
    unet_init(&j->net, &sh);
    DM_TRY(ckpt_read_weights(path, &j->net, (ckpt_weights)weights, &j->ema));
    j->K = j->net.classes;
    j->F = j->net.act[j->net.feat_buf].chans;
    j->crc = weights_crc(&j->net);
    return DM_OK;
}

dm_status judge_open(dm_judge *j, const char *path, int weights) {
    memset(j, 0, sizeof *j);
    snprintf(j->path, sizeof j->path, "%s", path);
    int rank;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    int quiet = dm_quiet();
    dm_set_quiet(quiet || rank != 0);
    dm_status st = dm_agree(open_local(j, path, weights));
    dm_set_quiet(quiet);
    if (st != DM_OK) {
        judge_close(j);
        return st;
    }
    j->ref_mu = dm_calloc((size_t)j->F, sizeof(double));
    j->ref_cov = dm_calloc((size_t)j->F * j->F, sizeof(double));
    return DM_OK;
}

void judge_close(dm_judge *j) {
    if (j->net.arena) unet_free(&j->net);
    free(j->ref_mu), free(j->ref_cov), free(j->feats), free(j->logits);
    memset(j, 0, sizeof *j);
}

void judge_features(dm_judge *j, const float *images, int n, const float **logits,
                    const float **feats) {
    int size, rank, m = j->net.m, K = j->K, F = j->F;
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    if (n > j->cap) {
        free(j->feats), free(j->logits);
        j->cap = n;
        j->feats = dm_malloc(sizeof(float) * (size_t)n * F);
        j->logits = dm_malloc(sizeof(float) * (size_t)n * K);
    }
    /* Chunks of m images, cut at fixed image indices whatever the rank
     * count; rank r classifies chunks [lo, hi). */
    int nch = (n + m - 1) / m, lo, hi;
    dist_range(nch, size, rank, &lo, &hi);
    int first = lo * m, last = hi * m < n ? hi * m : n;
    dm_precision was = gemm_use_precision(j->prec);
    if (last > first)
        unet_classify(&j->net, j->logits + (long)first * K, j->feats + (long)first * F,
                      images + (long)first * DM_PIX, last - first);
    gemm_use_precision(was);
    /* Every rank gets every row: rank r's rows are contiguous. */
    int *cnt = dm_malloc(sizeof(int) * 4 * (size_t)size), *dsp = cnt + size;
    int *cntk = cnt + 2 * size, *dspk = cnt + 3 * size;
    for (int r = 0; r < size; r++) {
        int a, b;
        dist_range(nch, size, r, &a, &b);
        int fa = a * m, fb = b * m < n ? b * m : n;
        if (fb < fa) fb = fa;
        cnt[r] = (fb - fa) * F, dsp[r] = fa * F;
        cntk[r] = (fb - fa) * K, dspk[r] = fa * K;
    }
    MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, j->feats, cnt, dsp, MPI_FLOAT,
                   MPI_COMM_WORLD);
    MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, j->logits, cntk, dspk, MPI_FLOAT,
                   MPI_COMM_WORLD);
    free(cnt);
    *logits = j->logits;
    *feats = j->feats;
}

/* One line for the first bad input (every rank holds the same images). */
static dm_status check_images(const char *what, const float *images, int n) {
    if (n < 2) {
        dm_error("%s: %d image%s: the Frechet distance needs a covariance, so at least 2",
                 what, n, n == 1 ? "" : "s");
        return DM_EUSAGE;
    }
    long bad = first_nonfinite(images, (long)n * DM_PIX);
    if (bad >= 0) {
        dm_error("%s: image %ld has a non-finite pixel (%g at row %ld, column %ld)", what,
                 bad / DM_PIX, (double)images[bad], bad % DM_PIX / DM_IMG, bad % DM_IMG);
        return DM_EIO;
    }
    return DM_OK;
}

dm_status judge_reference(dm_judge *j, const char *what, const float *images, int n) {
    DM_TRY(check_images(what, images, n));
    const float *lo, *fe;
    judge_features(j, images, n, &lo, &fe);
    feature_stats(fe, n, j->F, j->ref_mu, j->ref_cov);
    j->ref_n = n;
    return DM_OK;
}

dm_status judge_score(dm_judge *j, const char *what, const float *images,
                      const int32_t *labels, int n, dm_score *s) {
    DM_CHECK(j->ref_n >= 2, "judge_score before judge_reference");
    memset(s, 0, sizeof *s);
    DM_TRY(check_images(what, images, n));
    const float *lo, *fe;
    judge_features(j, images, n, &lo, &fe);
    int K = j->K, F = j->F, right = 0;
    double conf = 0, count[10] = {0};
    for (int i = 0; i < n; i++) {
        const float *l = lo + (long)i * K;
        int arg = 0;
        double mx = l[0], z = 0;
        for (int k = 1; k < K; k++)
            if (l[k] > mx) mx = l[k], arg = k;
        for (int k = 0; k < K; k++) z += exp((double)l[k] - mx);
        if (arg < 10) count[arg] += 1;
        int y = labels ? labels[i] : -1;
        if (y < 0 || y >= K) continue;
        s->conditioned++;
        conf += exp((double)l[y] - mx) / z;
        right += arg == y;
        if (y < 10) {
            s->n_digit[y]++;
            s->acc_digit[y] += arg == y;
        }
    }
    s->n = n;
    s->acc = s->conditioned ? (double)right / s->conditioned : NAN;
    s->conf = s->conditioned ? conf / s->conditioned : NAN;
    for (int d = 0; d < 10; d++) {
        s->acc_digit[d] = s->n_digit[d] ? s->acc_digit[d] / s->n_digit[d] : NAN;
        s->hist[d] = count[d] / n;
        if (s->hist[d] > 0) s->entropy -= s->hist[d] * log(s->hist[d]);
    }
    double *mu = dm_malloc(sizeof(double) * (size_t)F * (F + 1)), *cov = mu + F;
    feature_stats(fe, n, F, mu, cov);
    s->fd = frechet_distance(mu, cov, j->ref_mu, j->ref_cov, F);
    s->ref_n = j->ref_n;
    free(mu);
    return DM_OK;
}

/* ---- statistics ---------------------------------------------------------------- */

void feature_stats(const float *x, int n, int F, double *mu, double *cov) {
    for (int f = 0; f < F; f++) mu[f] = 0;
    for (int i = 0; i < n; i++)
        for (int f = 0; f < F; f++) mu[f] += x[(long)i * F + f];
    for (int f = 0; f < F; f++) mu[f] /= n;
    /* Centred rows in double, blocks of 256, accumulated with dsyrk. */
    enum { ROWS = 256 };
    double *c = dm_malloc(sizeof(double) * ROWS * (size_t)F);
    memset(cov, 0, sizeof(double) * (size_t)F * F);
    for (int i0 = 0; i0 < n; i0 += ROWS) {
        int r = n - i0 < ROWS ? n - i0 : ROWS;
        for (int i = 0; i < r; i++)
            for (int f = 0; f < F; f++) c[(long)i * F + f] = x[(long)(i0 + i) * F + f] - mu[f];
        cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, F, r, 1.0, c, F, 1.0, cov, F);
    }
    free(c);
    for (int a = 0; a < F; a++)
        for (int b = a; b < F; b++) {
            cov[(long)a * F + b] /= n - 1;
            cov[(long)b * F + a] = cov[(long)a * F + b];
        }
}

/* Eigenvalues w [F] and (in a) eigenvectors, column-major, of symmetric a;
 * 0 on success. */
static int eig(double *a, double *w, int F) {
    int info = 0, lwork = -1;
    double q;
    dsyev_("V", "U", &F, a, &F, w, &q, &lwork, &info, 1, 1);
    if (info != 0) return info;
    lwork = (int)q;
    double *work = dm_malloc(sizeof(double) * (size_t)lwork);
    dsyev_("V", "U", &F, a, &F, w, work, &lwork, &info, 1, 1);
    free(work);
    return info;
}

double frechet_distance(const double *mu1, const double *c1, const double *mu2,
                        const double *c2, int F) {
    size_t FF = (size_t)F * F;
    double *v = dm_malloc(sizeof(double) * (3 * FF + F)), *s = v + FF, *t = s + FF, *w = t + FF;
    /* sqrt(C1) = V diag(sqrt w) V^T */
    memcpy(v, c1, sizeof(double) * FF);
    double d = NAN;
    if (eig(v, w, F) == 0) {
        /* t = V diag(w^1/4) (column-major V), so sqrt(C1) = t t^T */
        for (int k = 0; k < F; k++) {
            double r = w[k] > 0 ? sqrt(sqrt(w[k])) : 0.0;
            for (int i = 0; i < F; i++) t[(long)k * F + i] = v[(long)k * F + i] * r;
        }
        cblas_dgemm(CblasColMajor, CblasNoTrans, CblasTrans, F, F, F, 1.0, t, F, t, F, 0.0,
                    s, F); /* s = sqrt(C1) */
        /* M = sqrt(C1) C2 sqrt(C1), symmetric PSD; tr sqrt(C1 C2) = tr sqrt(M). */
        cblas_dsymm(CblasColMajor, CblasLeft, CblasUpper, F, F, 1.0, c2, F, s, F, 0.0, t, F);
        cblas_dgemm(CblasColMajor, CblasNoTrans, CblasNoTrans, F, F, F, 1.0, s, F, t, F, 0.0,
                    v, F);
        for (int a = 0; a < F; a++) /* symmetrise the rounding */
            for (int b = a + 1; b < F; b++) {
                double m = 0.5 * (v[(long)a * F + b] + v[(long)b * F + a]);
                v[(long)a * F + b] = v[(long)b * F + a] = m;
            }
        if (eig(v, w, F) == 0) {
            double tr = 0, dm = 0;
            for (int k = 0; k < F; k++) tr += w[k] > 0 ? sqrt(w[k]) : 0.0;
            for (int k = 0; k < F; k++) {
                double e = mu1[k] - mu2[k];
                dm += e * e + c1[(long)k * F + k] + c2[(long)k * F + k];
            }
            d = dm - 2.0 * tr;
        }
    }
    free(v);
    return d;
}
