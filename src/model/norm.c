/* norm.c: the normalisation table (see unet_norm_ops in unet.h): how a unit
 * turns its convolution output y into gelu(norm(y)) and back. A new kind is
 * a kernel file plus one row here; unet.c and the config key read the row.
 *
 *   batch  BatchNorm2d: statistics of the whole global batch, combined over
 *          micro-batches and ranks in fixed order (dist.h), running
 *          statistics for evaluation (PyTorch semantics, eps 1e-5)
 *   group  GroupNorm(groups, C): statistics per image and group of C/groups
 *          channels, the same in training and evaluation, nothing combined
 */
#include <math.h>
#include <string.h>

#include "diffmpi/layers.h"
#include "diffmpi/prof.h"
#include "diffmpi/unet.h"

#define NORM_EPS 1e-5f

static long hw2(const unet_unit *t) { return (long)t->hout * t->hout; }
static double *sums_at(const unet *u, const unet_unit *t, int j) {
    return u->sums + (long)j * 2 * t->cout;
}

/* ---- batch ------------------------------------------------------------------ */

static long bn_stat_floats(const unet *u, int C) { return C; }

static void bn_stats(unet *u, unet_unit *t, int train, int j, int n) {
    if (!train) return;
    double *s = sums_at(u, t, j);
    bn2d_stats(s, s + t->cout, unet_slot(u, t->y_buf, j), t->cout, (int)(n * hw2(t)));
}

static void bn_finish(unet *u, unet_unit *t, int train, int nmb, long global_n,
                      unet_combine_fn combine, void *ctx, float momentum) {
    int C = t->cout;
    if (train && global_n > 0) {
        combine(ctx, u->gsums, C, u->sums, nmb);
        double count = (double)global_n * (double)hw2(t);
        bn2d_finish_stats(t->mean, t->invstd, u->gsums, u->gsums + C, count, C, NORM_EPS);
        bn2d_update_running(u->bufs + t->run_mean, u->bufs + t->run_var, u->gsums,
                            u->gsums + C, count, C, momentum);
    } else if (!train) {
        for (int c = 0; c < C; c++) {
            t->mean[c] = u->bufs[t->run_mean + c];
            t->invstd[c] = 1.0f / sqrtf(u->bufs[t->run_var + c] + NORM_EPS);
        }
    }
}

static void bn_apply(unet *u, unet_unit *t, int j, int n) {
    bn_gelu_forward(unet_at(u, t->out, j, n, 0), unet_slot(u, t->y_buf, j), t->mean,
                    t->invstd, u->p + t->gamma, u->p + t->beta, t->cout, (int)(n * hw2(t)));
}

static void bn_grad_stats(unet *u, unet_unit *t, float *dz, int j, int n) {
    double *s = sums_at(u, t, j);
    bn_gelu_backward_stats(dz, s, s + t->cout, unet_at(u, t->out, j, n, 1),
                           unet_slot(u, t->y_buf, j), t->mean, t->invstd, u->p + t->gamma,
                           u->p + t->beta, t->cout, (int)(n * hw2(t)));
}

static void bn_grad_finish(unet *u, unet_unit *t, int nmb, unet_combine_fn combine,
                           void *ctx) {
    combine(ctx, u->gsums, t->cout, u->sums, nmb);
}

static void bn_grad_input(unet *u, unet_unit *t, float *dy, const float *dz, int j, int n,
                          long global_n) {
    int C = t->cout;
    bn2d_backward(dy, dz, unet_slot(u, t->y_buf, j), t->mean, t->invstd, u->p + t->gamma,
                  u->gsums, u->gsums + C, (double)global_n * (double)hw2(t), C,
                  (int)(n * hw2(t)));
}

/* ---- group ------------------------------------------------------------------- */

/* mean, invstd [max_mb][m][groups]: per image, per group. */
static long gn_stat_floats(const unet *u, int C) {
    return (long)(u->max_mb > 0 ? u->max_mb : 1) * u->m * u->groups;
}

static float *gn_mean(const unet *u, const unet_unit *t, int j) {
    return t->mean + (long)j * u->m * u->groups;
}
static float *gn_invstd(const unet *u, const unet_unit *t, int j) {
    return t->invstd + (long)j * u->m * u->groups;
}

static void gn_stats_j(unet *u, unet_unit *t, int train, int j, int n) {
    gn_stats(gn_mean(u, t, j), gn_invstd(u, t, j), unet_slot(u, t->y_buf, j), t->cout, n,
             (int)hw2(t), u->groups, NORM_EPS);
}

static void gn_finish(unet *u, unet_unit *t, int train, int nmb, long global_n,
                      unet_combine_fn combine, void *ctx, float momentum) {}

static void gn_apply(unet *u, unet_unit *t, int j, int n) {
    gn_gelu_forward(unet_at(u, t->out, j, n, 0), unet_slot(u, t->y_buf, j), gn_mean(u, t, j),
                    gn_invstd(u, t, j), u->p + t->gamma, u->p + t->beta, t->cout, n,
                    (int)hw2(t), u->groups);
}

static void gn_grad_stats(unet *u, unet_unit *t, float *dz, int j, int n) {
    double *s = sums_at(u, t, j);
    gn_gelu_backward_stats(dz, s, s + t->cout, unet_at(u, t->out, j, n, 1),
                           unet_slot(u, t->y_buf, j), gn_mean(u, t, j), gn_invstd(u, t, j),
                           u->p + t->gamma, u->p + t->beta, t->cout, n, (int)hw2(t),
                           u->groups);
}

static void gn_grad_finish(unet *u, unet_unit *t, int nmb, unet_combine_fn combine,
                           void *ctx) {}

static void gn_grad_input(unet *u, unet_unit *t, float *dy, const float *dz, int j, int n,
                          long global_n) {
    gn_backward(dy, dz, unet_slot(u, t->y_buf, j), gn_mean(u, t, j), gn_invstd(u, t, j),
                u->p + t->gamma, t->cout, n, (int)hw2(t), u->groups);
}

/* ---- the table ------------------------------------------------------------------- */

static const unet_norm_ops norms[NORM_COUNT] = {
    [NORM_BATCH] = {"batch", "bn", 1, bn_stat_floats, bn_stats, bn_finish, bn_apply,
                    bn_grad_stats, bn_grad_finish, bn_grad_input},
    [NORM_GROUP] = {"group", "gn", 0, gn_stat_floats, gn_stats_j, gn_finish, gn_apply,
                    gn_grad_stats, gn_grad_finish, gn_grad_input},
};

const unet_norm_ops *unet_norm_get(dm_norm k) {
    DM_CHECK((int)k >= 0 && k < NORM_COUNT, "normalisation %d out of range", (int)k);
    return &norms[k];
}

const char *norm_name(int i) { return i >= 0 && i < NORM_COUNT ? norms[i].name : NULL; }
