/* unet.h: the UNet of SPEC.md at any width D, its parameters and its
 * activations, driven micro-batch by micro-batch.
 *
 * Parameters live in one flat float array (params), with parallel arrays for
 * gradients and Adam's m and v owned by the trainer; named views (unet_param)
 * give each tensor's name, PyTorch shape and offset, so checkpoints, the
 * optimizer and the gradient reduction all work on flat arrays. BatchNorm
 * running statistics live in a second flat array (buffers).
 *
 * The network is a table of units (conv or transposed conv, optionally
 * followed by a normalisation, a row of unet_norm_ops, and GELU). Forward
 * and backward walk the table layer by layer over all micro-batches this
 * rank owns, because BatchNorm needs the statistics of the whole global
 * batch before any micro-batch can continue.
 *
 *   unet u;
 *   unet_shape sh = {.D = 128, .mix = COND_MIX_FILM, .norm = NORM_BATCH,
 *                    .m = micro_batch, .max_mb = local_microbatches};
 *   unet_init(&u, &sh);
 *   unet_init_params(&u, seed);               // PyTorch default init
 *   unet_forward(&u, 1, nmb, sizes, global_n, dist_combine, &dist, 0.1f);
 *   unet_backward(&u, nmb, sizes, global_n, dist_combine, &dist,
 *                 dist_leaf_dst, dist_leaf_done);
 *   unet_free(&u);
 */
#ifndef DIFFMPI_UNET_H
#define DIFFMPI_UNET_H

#include <stddef.h>
#include <stdint.h>
#include "diffmpi/common.h"
#include "diffmpi/cond.h"
#include "diffmpi/norm.h"

#define UNET_MAX_UNITS 24
#define UNET_MAX_COND 2 /* conditioning points */
#define UNET_MAX_SEGMENTS (UNET_MAX_UNITS + 2 * UNET_MAX_COND)
#define UNET_MAX_PARAMS 128
#define UNET_MAX_BUFS 64

typedef enum { UNIT_CONV, UNIT_CONVT, UNIT_POOL } unet_unit_kind;


/* One named tensor view into params (trainable) or buffers (BN running). */
typedef struct {
    char name[64];      /* e.g. "down1/0/weight" (checkpoint path below /model) */
    int ndim;
    int shape[4];
    long offset;        /* into params or buffers */
    long size;
    int trainable;      /* 1: params/grads/m/v; 0: buffers */
} unet_param;

/* Where a unit reads its input and writes its output. */
typedef struct {
    int buf;            /* activation buffer id */
    int chan_off;       /* first channel inside that buffer (concat) */
} unet_ref;

typedef struct unet_unit {
    char name[24];      /* checkpoint group, e.g. "down1/0" */
    unet_unit_kind kind;
    int cin, cout, k, s, p;
    int hin, hout;      /* square images */
    const struct unet_norm_ops *norm; /* the normalisation that follows, or NULL */
    int gelu;           /* GELU follows */
    unet_ref in, out;   /* out: the unit's final output (after GELU) */
    int y_buf;          /* buffer holding the pre-BN conv output (-1: none) */
    long w, b, gamma, beta;      /* offsets into params (-1: none) */
    long run_mean, run_var;      /* offsets into buffers (-1: none) */
    int pw, pb, pgamma, pbeta;   /* indices into unet.params (-1: none) */
    /* per-step normalisation statistics, norm->stat_floats each */
    float *mean, *invstd;
} unet_unit;

/* An activation buffer: per micro-batch [chans][m][hw][hw], stored for every
 * local micro-batch at a fixed stride. */
typedef struct {
    int chans, hw;
    long mb_stride;     /* floats per micro-batch slot = chans*m*hw*hw */
    float *data;        /* [max_local_mb][mb_stride] */
    float *grad;        /* same shape; NULL where no gradient flows (the
                           network input, pre-BN values) */
} unet_buf;

/* FCBlock embedding: params [w1 b1 w2 b2] contiguous at [off, off+len). */
typedef struct {
    int in, out;
    long w1, b1, w2, b2, off, len;
    float *h, *g, *e;   /* [max_mb][m*out] kept for backward */
} unet_fc;

/* A conditioning point: the output of `unit` (a private buffer) is
 * modulated by the embeddings and written into dst (its concat region). */
typedef struct {
    int unit;
    unet_ref dst;
    int C, hw;
    unet_fc t, c;       /* c only with class conditioning */
} unet_condpt;

/* What to build. mix: COND_MIX_NONE (no conditioning), ADD or MUL (time
 * only: t1, t2), FILM (time and class: t1, t2, c1, c2). norm: what follows
 * every hidden convolution (groups: GroupNorm's group count, which must
 * divide D; config key norm_groups). */
typedef struct {
    int D;
    cond_mix mix;
    dm_norm norm;
    int groups;
    int m, max_mb;      /* micro-batch size and local slots */
    int inference;      /* forward only: no gradients, no backward scratch */
    int classes;        /* > 0: not the UNet but the classifier of that many
                           classes built from its encoder (mix must be NONE) */
    int winograd;       /* 3x3 stride-1 convolutions by Winograd in fp32 ... */
    int winograd_min;   /* ... on images at least this wide, by F(2x2,3x3) ... */
    int winograd4_min;  /* ... or by F(4x4,3x3) on those at least this wide (0: none) */
    int threads;        /* the rank's threads (0 or 1: one); see unet_forward */
} unet_shape;

/* Communication hooks so that unet.c does not depend on the trainer's
 * distribution: called once per BN layer with the per-micro-batch sums of
 * this rank (nloc x [2*C] doubles, s1 then s2) and must return the combined
 * sums over the global batch in fixed micro-batch order. */
typedef void (*unet_combine_fn)(void *ctx, double *out_sums, int C,
                                const double *local_sums, int nloc);

typedef struct unet {
    int D, m, max_mb;   /* width, micro-batch size, local micro-batch slots */
    dm_norm norm;
    int groups;         /* GroupNorm groups */
    int inference;
    int winograd, winograd_min, winograd4_min; /* see unet_shape */
    cond_mix mix;
    int nemb;           /* embeddings per conditioning point: 0, 1 (t), 2 (t, c) */
    int ncond;
    unet_condpt condpts[UNET_MAX_COND];
    float *t_in;        /* [max_mb][m] time input in [0,1] */
    float *c_in;        /* [max_mb][m][10] one-hot class or zeros */
    float *fc_scratch;  /* backward: [nscratch] x det, dec, dg, dh, each [m][2D] */
    int nthreads;       /* threads sharing the local micro-batches */
    int nscratch;       /* copies of col and fc_scratch: min(nthreads, max_mb) */
    int nunits;
    unet_unit units[UNET_MAX_UNITS];
    int nparams_t;      /* number of named tensors */
    unet_param params[UNET_MAX_PARAMS];
    long nparams;       /* trainable floats */
    long nbuffers;      /* BN running-stat floats */
    float *p;           /* [nparams] owned */
    float *bufs;        /* [nbuffers] owned */
    int nbufs;
    unet_buf act[UNET_MAX_BUFS];
    int in_buf, out_buf;          /* network input z and output y */
    int classes;                  /* classifier: logits [classes][m] in out_buf */
    int feat_buf;                 /* classifier: pooled features [2D][m]; else -1 */
    float *scratch_a, *scratch_b; /* [max_mb][scratch_stride] */
    long scratch_stride;          /* largest unit output per micro-batch */
    float *col;                   /* [nscratch][col_floats] im2col scratch, one per thread */
    long col_floats;
    double *sums;                 /* [max_mb][2*maxC] staging for combine */
    double *gsums;                /* [2*maxC] combined */
    void *arena;                  /* owns every buffer above */
    size_t arena_bytes;
} unet;

/* Build the unit table and allocate everything (one arena) for up to
 * max_mb local micro-batches of size m. max_mb may be 0 for a model used
 * only for I/O. */
void unet_init(unet *u, const unet_shape *shape);
/* Set the time and class inputs of micro-batch slot j, image i: t in [0,1],
 * label 0..9 or -1 for "no class" (zeros). */
void unet_set_cond(unet *u, int j, int i, float t, int label);
void unet_free(unet *u);
/* PyTorch default initialisation from the seed (counter-based per tensor). */
void unet_init_params(unet *u, uint64_t seed);
/* Find a named tensor, NULL if absent. */
const unet_param *unet_find(const unet *u, const char *name);

/* Pointer to micro-batch slot j of activation buffer b. */
static inline float *unet_slot(const unet *u, int b, int j) {
    return u->act[b].data + (long)j * u->act[b].mb_stride;
}

/* A unit's input/output region in micro-batch slot j holding n images (a
 * channel offset counts whole [n][hw][hw] planes); grad: the gradient. */
static inline float *unet_at(const unet *u, unet_ref r, int j, int n, int grad) {
    const unet_buf *b = &u->act[r.buf];
    float *base = grad ? b->grad : b->data;
    return base + (long)j * b->mb_stride + (long)r.chan_off * n * b->hw * b->hw;
}

/* A normalisation kind (one row of the table in norm.c), applied by the
 * unit after its convolution: y = pre-norm output (unit's y_buf), a = the
 * unit's output gelu(norm(y)). Forward: stats(j) after each micro-batch's
 * convolution, finish() once (BatchNorm combines across micro-batches and
 * ranks there), apply(j) writes a. Backward: grad_stats(j) writes
 * dz = da * gelu'(norm(y)) into dz and this micro-batch's dbeta, dgamma
 * sums into u->sums slot j ([2C]: dbeta then dgamma); grad_finish() once;
 * grad_input(j) ADDS the gradient at y into dy from dz. */
typedef struct unet_norm_ops {
    const char *name;       /* config value: "batch", "group" */
    const char *prefix;     /* parameter names: prefix_weight, prefix_bias */
    int running;            /* keeps running_mean, running_var buffers */
    long (*stat_floats)(const unet *u, int C); /* size of mean and of invstd */
    void (*stats)(unet *u, unet_unit *t, int train, int j, int n);
    void (*finish)(unet *u, unet_unit *t, int train, int nmb, long global_n,
                   unet_combine_fn combine, void *ctx, float momentum);
    void (*apply)(unet *u, unet_unit *t, int j, int n);
    void (*grad_stats)(unet *u, unet_unit *t, float *dz, int j, int n);
    void (*grad_finish)(unet *u, unet_unit *t, int nmb, unet_combine_fn combine,
                        void *ctx);
    void (*grad_input)(unet *u, unet_unit *t, float *dy, const float *dz, int j, int n,
                       long global_n);
} unet_norm_ops;

/* The row of normalisation kind k. */
const unet_norm_ops *unet_norm_get(dm_norm k);

/* Forward over nmb local micro-batches with sizes n[j] (input already in
 * act[in_buf] slots). The rank's threads (shape.threads) share them: thread
 * r of min(threads, nmb) takes micro-batches par_range(nmb, threads, r)
 * with scratch copy r, and every product of a micro-batch runs on that one
 * thread, so each micro-batch's numbers are those of a one-thread run; with
 * one micro-batch (sampling, evaluation) its layers' other work is cut over
 * the threads by channel instead (par.h). train != 0: BatchNorm uses global batch statistics
 * through `combine` and updates the running statistics (count = total
 * elements per channel over the global batch is computed by combine's
 * caller: pass the global number of images); train == 0: running stats.
 * nmb may be 0 on a rank that owns no micro-batch (it still joins every
 * combine call). */
void unet_forward(unet *u, int train, int nmb, const int *n, long global_n,
                  unet_combine_fn combine, void *ctx, float bn_momentum);

/* Evaluation of one slot, for the rank's threads each running a slot of
 * its own at once (sampling): unet_eval_ready once, on one thread (it sets
 * BatchNorm's evaluation statistics from the running ones), then
 * unet_forward_one(u, j, n, r) on thread r with slot j: the n images in
 * act[in_buf] slot j (and slot j's conditioning) through the network, with
 * scratch copy r < nscratch. The same numbers as unet_forward(u, 0, 1, ...)
 * on that slot. */
void unet_eval_ready(unet *u);
void unet_forward_one(unet *u, int j, int n, int r);

/* Zero every activation gradient of the first nmb slots (once per step). */
void unet_zero_grad(unet *u, int nmb);

/* Backward: the gradient of the loss wrt the output is in act[out_buf].grad.
 * For every unit from last to first and every local micro-batch j, the
 * weight gradient of micro-batch j is written into the [nparams] array
 * returned by `leaf_dst(ctx, j)` (only the unit's contiguous slice
 * [off, off+len) is written) and then announced with leaf_done(ctx, j, off,
 * len), so the caller can combine per-micro-batch leaves in a fixed tree;
 * both are called on the thread that owns j (as in unet_forward), at once
 * for different j. When every local j's leaf of [off, off+len) is done,
 * seg_done(ctx, off, len) is called once, on the calling thread. */
typedef float *(*unet_leaf_dst_fn)(void *ctx, int j);
typedef void (*unet_leaf_done_fn)(void *ctx, int j, long off, long len);
typedef void (*unet_seg_done_fn)(void *ctx, long off, long len);
void unet_backward(unet *u, int nmb, const int *n, long global_n,
                   unet_combine_fn combine, void *ctx, unet_leaf_dst_fn leaf_dst,
                   unet_leaf_done_fn leaf_done, unet_seg_done_fn seg_done);

/* Eval-mode forward (running BN statistics, no communication) of n images
 * x [n][28][28] into y [n][28][28], micro-batch by micro-batch in slot 0;
 * t [n] and labels [n] (-1 = none) for conditioned models, else NULL. */
void unet_predict(unet *u, float *y, const float *x, const float *t,
                  const int32_t *labels, int n);

/* Eval-mode forward of a classifier over n images x [n][28][28]: logits
 * [n][classes] and (if not NULL) the pooled features [n][2D], image-major. */
void unet_classify(unet *u, float *logits, float *feats, const float *x, int n);

/* Analytic FLOP counts per image (a multiply-add counts 2): the GEMM work
 * of convolutions, transposed convolutions and FCBlocks. Elementwise work
 * (BatchNorm, GELU, Adam) is not counted. */
void unet_unit_flops(const unet *u, int t, double *fwd, double *bwd);
/* conv_algo = auto's measurement: for each image width of u's 3x3 stride-1
 * convolutions (at most max, in the order met), the seconds of a forward
 * and a backward over n images of every such layer, by im2col
 * (secs[UNET_CONV_TIMED * i]), by Winograd F(2x2,3x3) (+ 1) and by
 * F(4x4,3x3) (+ 2), best of reps, in the precision the engine runs now;
 * only the first `rows` of those three are timed (the others get 0);
 * returns how many widths. Needs only u's shapes (max_mb may be 0). */
enum { UNET_CONV_TIMED = 3 };
int unet_conv_timings(const unet *u, int n, int reps, int rows, int *width, double *secs,
                      int max);
/* The share of the training FLOPs those layers hold: their forward and
 * backward FLOPs per image (unet_unit_flops), as unet_train_flops counts. */
double unet_conv3x3_train_flops(const unet *u);
void unet_fc_flops(const unet *u, double *fwd, double *bwd);
/* The parameter ranges backward completes one at a time (each unit's and
 * each FCBlock's), sorted by offset: off[], len[] get at most
 * UNET_MAX_SEGMENTS entries; returns how many. They cover
 * every parameter, for dist_set_segments. */
int unet_grad_segments(const unet *u, long *off, long *len);
double unet_forward_flops(const unet *u);
double unet_train_flops(const unet *u); /* forward + backward */

#endif
