/* unet.c: the UNet as a table of units, walked layer by layer over the
 * micro-batches this rank owns. See unet.h for the design. */
#include "diffmpi/unet.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "diffmpi/gemm.h"
#include "diffmpi/layers.h"
#include "diffmpi/par.h"
#include "diffmpi/prof.h"
#include "diffmpi/rng.h"

/* ---- building the table ------------------------------------------------ */

typedef struct {
    unet *u;
    long poff, boff;
} builder;

static int add_param(builder *bl, const char *unit, const char *leaf,
                     int trainable, int ndim, int s0, int s1, int s2, int s3) {
    unet *u = bl->u;
    DM_CHECK(u->nparams_t < UNET_MAX_PARAMS, "too many parameter tensors");
    unet_param *q = &u->params[u->nparams_t];
    snprintf(q->name, sizeof q->name, "%s/%s", unit, leaf);
    q->ndim = ndim;
    int sh[4] = {s0, s1, s2, s3};
    q->size = 1;
    for (int i = 0; i < 4; i++) {
        q->shape[i] = i < ndim ? sh[i] : 1;
        if (i < ndim) q->size *= sh[i];
    }
    q->trainable = trainable;
    long *off = trainable ? &bl->poff : &bl->boff;
    q->offset = *off;
    *off += q->size;
    return u->nparams_t++;
}

static int add_buf(unet *u, int chans, int hw) {
    DM_CHECK(u->nbufs < UNET_MAX_BUFS, "too many activation buffers");
    unet_buf *b = &u->act[u->nbufs];
    b->chans = chans;
    b->hw = hw;
    b->mb_stride = (long)chans * u->m * hw * hw;
    return u->nbufs++;
}

/* Add one unit. out_buf < 0 allocates a private output buffer. */
static int add_unit(builder *bl, const char *name, unet_unit_kind kind,
                    int cin, int cout, int k, int s, int p, int hin,
                    unet_ref in, int out_buf, int out_off, int norm) {
    unet *u = bl->u;
    DM_CHECK(u->nunits < UNET_MAX_UNITS, "too many units");
    unet_unit *t = &u->units[u->nunits];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", name);
    t->kind = kind;
    t->cin = cin, t->cout = cout, t->k = k, t->s = s, t->p = p;
    t->hin = hin;
    if (kind == UNIT_CONV) t->hout = (hin + 2 * p - k) / s + 1;
    else if (kind == UNIT_CONVT) t->hout = (hin - 1) * s - 2 * p + k;
    else t->hout = 1;
    t->norm = norm ? unet_norm_get(u->norm) : NULL;
    t->gelu = norm || kind == UNIT_POOL;
    t->in = in;
    if (out_buf < 0) out_buf = add_buf(u, cout, t->hout);
    t->out.buf = out_buf;
    t->out.chan_off = out_off;
    /* BN and the pool's GELU need their input kept for backward. */
    t->y_buf = t->gelu ? add_buf(u, cout, t->hout) : -1;
    t->pw = t->pb = t->pgamma = t->pbeta = -1;
    t->w = t->b = t->gamma = t->beta = t->run_mean = t->run_var = -1;
    if (kind != UNIT_POOL) {
        /* Conv2d [Cout][Cin][k][k]; ConvTranspose2d [Cin][Cout][k][k]. */
        int a = kind == UNIT_CONV ? cout : cin, b = kind == UNIT_CONV ? cin : cout;
        t->pw = add_param(bl, name, "weight", 1, 4, a, b, k, k);
        t->pb = add_param(bl, name, "bias", 1, 1, cout, 0, 0, 0);
    }
    if (t->norm) {
        char leaf[32];
        const char *pre = t->norm->prefix;
        snprintf(leaf, sizeof leaf, "%s_weight", pre);
        t->pgamma = add_param(bl, name, leaf, 1, 1, cout, 0, 0, 0);
        snprintf(leaf, sizeof leaf, "%s_bias", pre);
        t->pbeta = add_param(bl, name, leaf, 1, 1, cout, 0, 0, 0);
        if (t->norm->running) {
            snprintf(leaf, sizeof leaf, "%s_running_mean", pre);
            t->run_mean = u->params[add_param(bl, name, leaf, 0, 1, cout, 0, 0, 0)].offset;
            snprintf(leaf, sizeof leaf, "%s_running_var", pre);
            t->run_var = u->params[add_param(bl, name, leaf, 0, 1, cout, 0, 0, 0)].offset;
        }
    }
    if (t->pw >= 0) t->w = u->params[t->pw].offset;
    if (t->pb >= 0) t->b = u->params[t->pb].offset;
    if (t->pgamma >= 0) t->gamma = u->params[t->pgamma].offset;
    if (t->pbeta >= 0) t->beta = u->params[t->pbeta].offset;
    return u->nunits++;
}

static unet_ref ref(int buf, int off) {
    unet_ref r = {buf, off};
    return r;
}

static void add_fc(builder *bl, unet_fc *f, const char *name, int in, int out) {
    unet *u = bl->u;
    char nm[24];
    f->in = in, f->out = out;
    snprintf(nm, sizeof nm, "%s/fc1", name);
    int first = add_param(bl, nm, "weight", 1, 2, out, in, 0, 0);
    add_param(bl, nm, "bias", 1, 1, out, 0, 0, 0);
    snprintf(nm, sizeof nm, "%s/fc2", name);
    add_param(bl, nm, "weight", 1, 2, out, out, 0, 0);
    int last = add_param(bl, nm, "bias", 1, 1, out, 0, 0, 0);
    f->w1 = u->params[first].offset;
    f->b1 = u->params[first + 1].offset;
    f->w2 = u->params[first + 2].offset;
    f->b2 = u->params[last].offset;
    f->off = f->w1;
    f->len = f->b2 + out - f->w1;
}

/* Conditioning point k: t{k+1} (and c{k+1}) embeddings of width C. */
static void add_condpt(builder *bl, int k, int unit, unet_ref dst, int C, int hw) {
    unet *u = bl->u;
    unet_condpt *cp = &u->condpts[k];
    char nm[16]; /* "t" or "c" and any int */
    cp->unit = unit, cp->dst = dst, cp->C = C, cp->hw = hw;
    snprintf(nm, sizeof nm, "t%d", k + 1);
    add_fc(bl, &cp->t, nm, 1, C);
    if (u->nemb == 2) {
        snprintf(nm, sizeof nm, "c%d", k + 1);
        add_fc(bl, &cp->c, nm, 10, C);
    }
    u->ncond = k + 1;
}

/* The forward of SPEC.md as a table, one row per unit in order. Channel
 * counts are in units of D (0: one channel, the image or the head's
 * output); 3x3 convolutions have padding 1, the 7x7 pool and its
 * transposed convolution none. A unit reads the previous unit's output or
 * a buffer from channel 0, and writes a private buffer or the channels of a
 * concat buffer from out_off x D: concats [skip, decoder] are buffers whose
 * first channels the encoder unit writes and whose last channels the
 * decoder unit writes, so no copy is ever made. A row with cond = k is
 * conditioning point k: conditioned models modulate its output on its way
 * into the concat buffer, so it writes a private buffer there. */
enum { FROM_PREV, BUF_IN, BUF_CAT0, BUF_CAT1, BUF_CAT2, BUF_OWN };
static const struct {
    const char *name;
    unet_unit_kind kind;
    int cin, cout, k, s, p, hin;
    int in;           /* FROM_PREV, BUF_IN or a concat buffer */
    int out, out_off; /* BUF_OWN, or a concat buffer and a channel offset (x D) */
    int norm;         /* normalisation + GELU after the convolution */
    int cond;         /* conditioning point 0 or 1; -1: none */
} unet_rows[] = {
    {"inc/0", UNIT_CONV, 0, 1, 3, 1, 1, 28, BUF_IN, BUF_OWN, 0, 1, -1},
    {"inc/1", UNIT_CONV, 1, 1, 3, 1, 1, 28, FROM_PREV, BUF_CAT0, 0, 1, -1},
    {"down1/0", UNIT_CONV, 1, 1, 3, 2, 1, 28, BUF_CAT0, BUF_OWN, 0, 1, -1},
    {"down1/1", UNIT_CONV, 1, 1, 3, 1, 1, 14, FROM_PREV, BUF_OWN, 0, 1, -1},
    {"down1/2", UNIT_CONV, 1, 1, 3, 1, 1, 14, FROM_PREV, BUF_CAT1, 0, 1, -1},
    {"down2/0", UNIT_CONV, 1, 2, 3, 2, 1, 14, BUF_CAT1, BUF_OWN, 0, 1, -1},
    {"down2/1", UNIT_CONV, 2, 2, 3, 1, 1, 7, FROM_PREV, BUF_OWN, 0, 1, -1},
    {"down2/2", UNIT_CONV, 2, 2, 3, 1, 1, 7, FROM_PREV, BUF_CAT2, 0, 1, -1},
    {"flatten", UNIT_POOL, 2, 2, 7, 7, 0, 7, BUF_CAT2, BUF_OWN, 0, 0, -1},
    {"unflatten", UNIT_CONVT, 2, 2, 7, 7, 0, 1, FROM_PREV, BUF_CAT2, 2, 1, 0},
    {"up1/0", UNIT_CONVT, 4, 1, 4, 2, 1, 7, BUF_CAT2, BUF_OWN, 0, 1, -1},
    {"up1/1", UNIT_CONV, 1, 1, 3, 1, 1, 14, FROM_PREV, BUF_OWN, 0, 1, -1},
    {"up1/2", UNIT_CONV, 1, 1, 3, 1, 1, 14, FROM_PREV, BUF_CAT1, 1, 1, 1},
    {"up2/0", UNIT_CONVT, 2, 1, 4, 2, 1, 14, BUF_CAT1, BUF_OWN, 0, 1, -1},
    {"up2/1", UNIT_CONV, 1, 1, 3, 1, 1, 28, FROM_PREV, BUF_OWN, 0, 1, -1},
    {"up2/2", UNIT_CONV, 1, 1, 3, 1, 1, 28, FROM_PREV, BUF_CAT0, 1, 1, -1},
    {"outc/0", UNIT_CONV, 2, 1, 3, 1, 1, 28, BUF_CAT0, BUF_OWN, 0, 1, -1},
    {"outc/1", UNIT_CONV, 1, 1, 3, 1, 1, 28, FROM_PREV, BUF_OWN, 0, 1, -1},
    {"head", UNIT_CONV, 1, 0, 3, 1, 1, 28, FROM_PREV, BUF_OWN, 0, 0, -1},
};

static void build(unet *u) {
    builder bl = {u, 0, 0};
    const int D = u->D, conditioned = u->nemb > 0;
    int buf[BUF_OWN];
    buf[BUF_IN] = u->in_buf = add_buf(u, 1, 28);
    buf[BUF_CAT0] = add_buf(u, 2 * D, 28);
    buf[BUF_CAT1] = add_buf(u, 2 * D, 14);
    buf[BUF_CAT2] = add_buf(u, 4 * D, 7);
    int cond_unit[2] = {-1, -1}, i = -1;
    for (size_t r = 0; r < sizeof unet_rows / sizeof unet_rows[0]; r++) {
        const int cin = unet_rows[r].cin ? unet_rows[r].cin * D : 1;
        const int cout = unet_rows[r].cout ? unet_rows[r].cout * D : 1;
        const unet_ref in = unet_rows[r].in == FROM_PREV ? u->units[i].out
                                                          : ref(buf[unet_rows[r].in], 0);
        const int own = unet_rows[r].out == BUF_OWN || (unet_rows[r].cond >= 0 && conditioned);
        i = add_unit(&bl, unet_rows[r].name, unet_rows[r].kind, cin, cout, unet_rows[r].k,
                     unet_rows[r].s, unet_rows[r].p, unet_rows[r].hin, in,
                     own ? -1 : buf[unet_rows[r].out], own ? 0 : unet_rows[r].out_off * D,
                     unet_rows[r].norm);
        if (unet_rows[r].cond >= 0) cond_unit[unet_rows[r].cond] = (int)r;
    }
    u->out_buf = u->units[i].out.buf;
    /* the conditioning points' parameters after every unit's */
    for (int k = 0; conditioned && k < 2; k++) {
        const int r = cond_unit[k], C = unet_rows[r].cout * D;
        add_condpt(&bl, k, r, ref(buf[unet_rows[r].out], unet_rows[r].out_off * D), C,
                   u->units[r].hout);
    }
    u->nparams = bl.poff;
    u->nbuffers = bl.boff;
}

/* The judge of `diffmpi score` (objective = classify): the UNet's encoder
 * with the same unit names and shapes, every unit into a private buffer,
 * the global average pool + GELU (the features the Frechet distance
 * compares), and a 1x1 convolution to the class logits, [classes][m]. */
static void build_classifier(unet *u) {
    builder bl = {u, 0, 0};
    int D = u->D;
    u->in_buf = add_buf(u, 1, 28);
    static const struct {
        const char *name;
        int cin, cout, s, hin; /* in D units; 3x3, padding 1 */
    } enc[] = {{"inc/0", 0, 1, 1, 28},   {"inc/1", 1, 1, 1, 28},   {"down1/0", 1, 1, 2, 28},
               {"down1/1", 1, 1, 1, 14}, {"down1/2", 1, 1, 1, 14}, {"down2/0", 1, 2, 2, 14},
               {"down2/1", 2, 2, 1, 7},  {"down2/2", 2, 2, 1, 7}};
    unet_ref in = ref(u->in_buf, 0);
    for (size_t q = 0; q < sizeof enc / sizeof enc[0]; q++) {
        int cin = enc[q].cin ? enc[q].cin * D : 1;
        int i = add_unit(&bl, enc[q].name, UNIT_CONV, cin, enc[q].cout * D, 3, enc[q].s, 1,
                         enc[q].hin, in, -1, 0, 1);
        in = u->units[i].out;
    }
    int i = add_unit(&bl, "flatten", UNIT_POOL, 2 * D, 2 * D, 7, 7, 0, 7, in, -1, 0, 0);
    u->feat_buf = u->units[i].out.buf;
    i = add_unit(&bl, "head", UNIT_CONV, 2 * D, u->classes, 1, 1, 0, 1, u->units[i].out, -1,
                 0, 0);
    u->out_buf = u->units[i].out.buf;
    u->nparams = bl.poff;
    u->nbuffers = bl.boff;
}

static int winograd_can(const unet_unit *t) {
    return t->kind == UNIT_CONV && winograd_applies(t->k, t->s, t->p, t->hin);
}

/* The Winograd tile the configuration gives this unit (in fp32): 4, 2, or
 * 0 for im2col. */
static int winograd_unit(const unet *u, const unet_unit *t) {
    if (!u->winograd || !winograd_can(t)) return 0;
    if (u->winograd4_min > 0 && t->hin >= u->winograd4_min) return 4;
    return t->hin >= u->winograd_min ? 2 : 0;
}

/* Hand out 64-byte aligned pieces of one arena; with base == NULL only
 * count, so the same walk sizes the arena and then carves it. */
static void *take(char *base, size_t *used, size_t bytes) {
    void *p = base ? base + *used : NULL;
    *used += (bytes + 63) & ~(size_t)63;
    return p;
}

/* Every buffer of the model in one walk; returns the arena size. */
static size_t layout(unet *u, char *base) {
    size_t used = 0;
    int m = u->m, max_mb = u->max_mb;
    u->p = take(base, &used, sizeof(float) * (size_t)u->nparams);
    u->bufs = take(base, &used, sizeof(float) * (size_t)u->nbuffers);
    if (max_mb == 0) return used;
    long maxout = 0, maxc = 0;
    u->col_floats = 0;
    int needs_grad[UNET_MAX_BUFS] = {0};
    for (int t = 0; t < u->nunits; t++) {
        unet_unit *un = &u->units[t];
        long o = (long)un->cout * m * un->hout * un->hout, c = 0;
        if (o > maxout) maxout = o;
        if (un->cout > maxc) maxc = un->cout;
        if (un->kind == UNIT_CONV)
            c = conv2d_scratch_floats(m, un->cin, un->hin, un->hin, un->cout, un->k, un->s,
                                      un->p);
        else if (un->kind == UNIT_CONVT)
            c = convt2d_col_floats(m, un->cout, un->hin, un->hin, un->k, un->s, un->p);
        if (winograd_unit(u, un)) {
            long wf = winograd_scratch_floats(m, un->cin, un->cout, un->hin, un->hin,
                                              winograd_unit(u, un), !u->inference);
            if (wf > c) c = wf;
        }
        if (c > u->col_floats) u->col_floats = c;
        long sf = un->norm ? un->norm->stat_floats(u, un->cout) : 0;
        un->mean = take(base, &used, sizeof(float) * (size_t)sf);
        un->invstd = take(base, &used, sizeof(float) * (size_t)sf);
        /* Only unit outputs receive gradients from their consumers; pre-BN
         * values and the network input never do. */
        needs_grad[un->out.buf] = !u->inference;
    }
    for (int b = 0; b < u->nbufs; b++) {
        size_t n = sizeof(float) * (size_t)u->act[b].mb_stride * (size_t)max_mb;
        u->act[b].data = take(base, &used, n);
        u->act[b].grad = needs_grad[b] ? take(base, &used, n) : NULL;
    }
    u->t_in = take(base, &used, sizeof(float) * (size_t)(m * max_mb));
    u->c_in = take(base, &used, sizeof(float) * (size_t)(10 * m * max_mb));
    for (int k = 0; k < u->ncond; k++) {
        unet_fc *fs[2] = {&u->condpts[k].t, &u->condpts[k].c};
        for (int q = 0; q < u->nemb; q++) {
            size_t n = sizeof(float) * (size_t)(fs[q]->out * m * max_mb);
            fs[q]->h = take(base, &used, n);
            fs[q]->g = take(base, &used, n);
            fs[q]->e = take(base, &used, n);
        }
    }
    u->nscratch = u->nthreads < max_mb ? u->nthreads : max_mb;
    u->fc_scratch = take(base, &used, sizeof(float) * (size_t)(u->nscratch * 4 * m * 2 * u->D));
    u->scratch_stride = maxout;
    if (u->inference) maxout = 0;
    u->scratch_a = take(base, &used, sizeof(float) * (size_t)(maxout * max_mb));
    u->scratch_b = take(base, &used, sizeof(float) * (size_t)(maxout * max_mb));
    u->col = take(base, &used, sizeof(float) * (size_t)(u->nscratch * u->col_floats));
    u->sums = take(base, &used, sizeof(double) * (size_t)(2 * maxc * max_mb));
    u->gsums = take(base, &used, sizeof(double) * (size_t)(2 * maxc));
    return used;
}

void unet_init(unet *u, const unet_shape *sh) {
    memset(u, 0, sizeof *u);
    u->D = sh->D, u->m = sh->m, u->max_mb = sh->max_mb;
    u->nthreads = sh->threads > 1 ? sh->threads : 1;
    u->inference = sh->inference;
    u->winograd = sh->winograd;
    u->winograd_min = sh->winograd_min;
    u->winograd4_min = sh->winograd4_min;
    u->mix = sh->mix;
    u->norm = sh->norm;
    u->groups = sh->groups;
    DM_CHECK(sh->norm != NORM_GROUP || (u->groups > 0 && sh->D % u->groups == 0),
             "GroupNorm: %d groups do not divide D = %d", u->groups, sh->D);
    u->nemb = sh->mix == COND_MIX_NONE ? 0 : sh->mix == COND_MIX_FILM ? 2 : 1;
    u->classes = sh->classes;
    u->feat_buf = -1;
    DM_CHECK(!u->classes || !u->nemb, "a classifier takes no conditioning");
    if (u->classes)
        build_classifier(u);
    else
        build(u);
    u->arena_bytes = layout(u, NULL);
    /* calloc: zero parameters, buffers and activations; aligned_alloc
     * would need an explicit memset of several GB. */
    u->arena = dm_calloc(u->arena_bytes + 64, 1);
    char *base = (char *)(((uintptr_t)u->arena + 63) & ~(uintptr_t)63);
    layout(u, base);
    for (int t = 0; t < u->nunits; t++) {
        unet_unit *un = &u->units[t];
        if (un->run_var >= 0)
            for (int c = 0; c < un->cout; c++) u->bufs[un->run_var + c] = 1.0f;
    }
}

void unet_free(unet *u) {
    free(u->arena);
    memset(u, 0, sizeof *u);
}

/* Linear layers: PyTorch's U(-1/sqrt(in), 1/sqrt(in)) for weight and bias. */
static void init_fc(unet *u, const unet_fc *f, uint64_t seed) {
    long offs[4] = {f->w1, f->b1, f->w2, f->b2};
    long sizes[4] = {(long)f->out * f->in, f->out, (long)f->out * f->out, f->out};
    int fan[4] = {f->in, f->in, f->out, f->out};
    for (int q = 0; q < 4; q++) {
        dm_rng r;
        /* Key by offset: unique per tensor, independent of the unit count. */
        rng_init(&r, seed, DM_STREAM_INIT, (uint64_t)offs[q] + (1ull << 40), 0);
        init_uniform(u->p + offs[q], sizes[q], 1.0f / sqrtf((float)fan[q]), &r);
    }
}

void unet_init_params(unet *u, uint64_t seed) {
    for (int t = 0; t < u->nunits; t++) {
        unet_unit *un = &u->units[t];
        if (un->kind == UNIT_POOL) continue;
        /* PyTorch's fan_in is weight.size(1)*k*k for both conv kinds: Cin
         * for Conv2d, Cout for ConvTranspose2d. kaiming_uniform(a=sqrt(5))
         * and the bias both give U(-1/sqrt(fan_in), 1/sqrt(fan_in)). */
        int fan_in = u->params[un->pw].shape[1] * un->k * un->k;
        float bound = 1.0f / sqrtf((float)fan_in);
        dm_rng r;
        rng_init(&r, seed, DM_STREAM_INIT, (uint64_t)un->pw, 0);
        init_uniform(u->p + un->w, u->params[un->pw].size, bound, &r);
        rng_init(&r, seed, DM_STREAM_INIT, (uint64_t)un->pb, 0);
        init_uniform(u->p + un->b, u->params[un->pb].size, bound, &r);
        for (int c = 0; un->norm && c < un->cout; c++) {
            u->p[un->gamma + c] = 1.0f;
            u->p[un->beta + c] = 0.0f;
        }
        for (int c = 0; un->run_mean >= 0 && c < un->cout; c++) {
            u->bufs[un->run_mean + c] = 0.0f;
            u->bufs[un->run_var + c] = 1.0f;
        }
    }
    for (int k = 0; k < u->ncond; k++) {
        init_fc(u, &u->condpts[k].t, seed);
        if (u->nemb == 2) init_fc(u, &u->condpts[k].c, seed);
    }
}

void unet_set_cond(unet *u, int j, int i, float t, int label) {
    u->t_in[(long)j * u->m + i] = t;
    float *c = u->c_in + ((long)j * u->m + i) * 10;
    for (int k = 0; k < 10; k++) c[k] = k == label ? 1.0f : 0.0f;
}

const unet_param *unet_find(const unet *u, const char *name) {
    for (int i = 0; i < u->nparams_t; i++)
        if (strcmp(u->params[i].name, name) == 0) return &u->params[i];
    return NULL;
}

/* ---- forward ------------------------------------------------------------ */

/* ---- how a convolution unit runs: a row per algorithm ------------------ */

typedef struct {
    void (*forward)(const unet_unit *t, float *y, const float *x, const float *w,
                    const float *b, float *scratch, int n);
    /* dx ADDED (NULL: none wanted), dw and db OVERWRITTEN */
    void (*backward)(const unet_unit *t, float *dx, float *dw, float *db, const float *dy,
                     const float *x, const float *w, float *scratch, int n);
} conv_kernel;

/* the rows in unet_conv_timings' order */
enum { CONV_ROW_IM2COL, CONV_ROW_WINOGRAD2, CONV_ROW_WINOGRAD4, CONV_ROWS };
_Static_assert((int)CONV_ROWS == (int)UNET_CONV_TIMED, "unet_conv_timings times every row");

static void im2col_fwd(const unet_unit *t, float *y, const float *x, const float *w,
                       const float *b, float *scratch, int n) {
    conv2d_forward(y, x, w, b, scratch, n, t->cin, t->hin, t->hin, t->cout, t->k, t->s, t->p);
}

static void im2col_bwd(const unet_unit *t, float *dx, float *dw, float *db, const float *dy,
                       const float *x, const float *w, float *scratch, int n) {
    conv2d_backward(dx, dw, db, dy, x, w, scratch, n, t->cin, t->hin, t->hin, t->cout, t->k,
                    t->s, t->p);
}

static void winograd_fwd(const unet_unit *t, float *y, const float *x, const float *w,
                         const float *b, float *scratch, int n, int tile) {
    winograd_conv3x3(y, 0, x, w, scratch, n, t->cin, t->hin, t->hin, t->cout, tile);
    conv_bias_add(y, b, t->cout, (long)n * t->hout * t->hout);
}

static void winograd_bwd(const unet_unit *t, float *dx, float *dw, float *db, const float *dy,
                         const float *x, const float *w, float *scratch, int n, int tile) {
    winograd_conv3x3_backward(dx, dw, dy, x, w, scratch, n, t->cin, t->hin, t->hin, t->cout,
                              tile);
    conv_bias_grad(db, dy, t->cout, (long)n * t->hout * t->hout);
}

static void winograd2_fwd(const unet_unit *t, float *y, const float *x, const float *w,
                          const float *b, float *scratch, int n) {
    winograd_fwd(t, y, x, w, b, scratch, n, 2);
}

static void winograd2_bwd(const unet_unit *t, float *dx, float *dw, float *db, const float *dy,
                          const float *x, const float *w, float *scratch, int n) {
    winograd_bwd(t, dx, dw, db, dy, x, w, scratch, n, 2);
}

static void winograd4_fwd(const unet_unit *t, float *y, const float *x, const float *w,
                          const float *b, float *scratch, int n) {
    winograd_fwd(t, y, x, w, b, scratch, n, 4);
}

static void winograd4_bwd(const unet_unit *t, float *dx, float *dw, float *db, const float *dy,
                          const float *x, const float *w, float *scratch, int n) {
    winograd_bwd(t, dx, dw, db, dy, x, w, scratch, n, 4);
}

static const conv_kernel conv_kernels[CONV_ROWS] = {
    [CONV_ROW_IM2COL] = {im2col_fwd, im2col_bwd},
    [CONV_ROW_WINOGRAD2] = {winograd2_fwd, winograd2_bwd},
    [CONV_ROW_WINOGRAD4] = {winograd4_fwd, winograd4_bwd},
};

/* The row a convolution unit runs now. Winograd only in fp32: the
 * transforms would amplify bf16's rounding. */
static int unit_algo(const unet *u, const unet_unit *t) {
    const int tile = gemm_precision_now() == DM_PREC_FP32 ? winograd_unit(u, t) : 0;
    return tile == 4 ? CONV_ROW_WINOGRAD4 : tile == 2 ? CONV_ROW_WINOGRAD2 : CONV_ROW_IM2COL;
}

/* Scratch copy r (im2col columns, Winograd planes) of thread range r. */
static float *col_of(const unet *u, int r) { return u->col + (long)r * u->col_floats; }

/* The local micro-batches over the rank's threads: range r of nranges()
 * is par_range(nmb, nthreads, r), run by one thread with scratch r. */
static int nranges(const unet *u, int nmb) {
    const int n = u->nthreads < nmb ? u->nthreads : nmb;
    return n > 1 ? n : 1; /* a rank without micro-batches runs one empty range */
}

static void unit_linear_forward(unet *u, unet_unit *t, float *y,
                                const float *x, int n, float *col) {
    const float *w = u->p + t->w, *b = u->p + t->b;
    if (t->kind == UNIT_CONV)
        conv_kernels[unit_algo(u, t)].forward(t, y, x, w, b, col, n);
    else if (t->kind == UNIT_CONVT)
        convt2d_forward(y, x, w, b, col, n, t->cin, t->hin, t->hin, t->cout,
                        t->k, t->s, t->p);
    else
        avgpool_forward(y, x, t->cin, n, t->hin * t->hin);
}

int unet_conv_timings(const unet *u, int n, int reps, int rows, int *width, double *secs,
                      int max) {
    int nw = 0;
    long fx = 0, fy = 0, fw = 0, fs = 0;
    for (int i = 0; i < u->nunits; i++) {
        const unet_unit *t = &u->units[i];
        if (!winograd_can(t)) continue;
        long hw = (long)n * t->hin * t->hin, s1, s2;
        if ((long)t->cin * hw > fx) fx = (long)t->cin * hw;
        if ((long)t->cout * hw > fy) fy = (long)t->cout * hw;
        if (9L * t->cin * t->cout > fw) fw = 9L * t->cin * t->cout;
        s1 = conv2d_scratch_floats(n, t->cin, t->hin, t->hin, t->cout, 3, 1, 1);
        if (s1 > fs) fs = s1;
        for (int m = 2; m <= 4; m += 2) {
            s2 = winograd_scratch_floats(n, t->cin, t->cout, t->hin, t->hin, m, 1);
            if (s2 > fs) fs = s2;
        }
    }
    if (fx == 0) return 0;
    float *x = dm_malloc(sizeof(float) * (size_t)fx), *dx = dm_malloc(sizeof(float) * (size_t)fx);
    float *y = dm_malloc(sizeof(float) * (size_t)fy), *dy = dm_malloc(sizeof(float) * (size_t)fy);
    float *w = dm_malloc(sizeof(float) * (size_t)fw), *dw = dm_malloc(sizeof(float) * (size_t)fw);
    float *b = dm_calloc((size_t)fy, sizeof(float)), *db = dm_malloc(sizeof(float) * (size_t)fy);
    float *scratch = dm_malloc(sizeof(float) * (size_t)fs);
    for (long i = 0; i < fx; i++) x[i] = dx[i] = (float)((i * 7919) % 251) / 251.0f - 0.5f;
    for (long i = 0; i < fy; i++) dy[i] = (float)((i * 104729) % 257) / 257.0f - 0.5f;
    for (long i = 0; i < fw; i++) w[i] = (float)((i * 31) % 61) / 610.0f - 0.05f;
    int prof = prof_on;
    prof_enable(0);
    for (int i = 0; i < u->nunits; i++) {
        const unet_unit *t = &u->units[i];
        if (!winograd_can(t)) continue;
        int at = 0;
        while (at < nw && width[at] != t->hin) at++;
        if (at == nw) {
            if (nw == max) continue;
            width[nw] = t->hin;
            for (int a = 0; a < CONV_ROWS; a++) secs[CONV_ROWS * nw + a] = 0;
            nw++;
        }
        double best[CONV_ROWS] = {0, 0, 0};
        for (int a = 0; a < rows && a < CONV_ROWS; a++) best[a] = 1e30;
        for (int r = 0; r <= reps; r++) /* round 0 warms up */
            for (int a = 0; a < rows && a < CONV_ROWS; a++) {
                double t0 = dm_now();
                conv_kernels[a].forward(t, y, x, w, b, scratch, n);
                conv_kernels[a].backward(t, dx, dw, db, dy, x, w, scratch, n);
                double s = dm_now() - t0;
                if (r > 0 && s < best[a]) best[a] = s;
            }
        for (int a = 0; a < CONV_ROWS; a++) secs[CONV_ROWS * at + a] += best[a];
    }
    prof_enable(prof);
    free(x), free(dx), free(y), free(dy), free(w), free(dw), free(b), free(db), free(scratch);
    return nw;
}

static void unit_forward(unet *u, unet_unit *t, int train, int nmb,
                         const int *n, long global_n, unet_combine_fn combine,
                         void *ctx, float momentum) {
    const unet_norm_ops *nm = t->norm;
    const long hw2 = (long)t->hout * t->hout;
    const int nr = nranges(u, nmb);
#pragma omp parallel for num_threads(nr) schedule(static, 1) if (nr > 1)
    for (int r = 0; r < nr; r++) {
        int lo, hi;
        par_range(nmb, u->nthreads, r, &lo, &hi);
        for (int j = lo; j < hi; j++) {
            float *x = unet_at(u, t->in, j, n[j], 0);
            float *y = t->y_buf >= 0 ? unet_slot(u, t->y_buf, j) : unet_at(u, t->out, j, n[j], 0);
            unit_linear_forward(u, t, y, x, n[j], col_of(u, r));
            double t0 = prof_start();
            if (nm) nm->stats(u, t, train, j, n[j]);
            prof_add(PROF_ELEM, t0);
        }
    }
    if (nm) nm->finish(u, t, train, nmb, global_n, combine, ctx, momentum);
    if (!t->gelu) return;
    double t0 = prof_start();
#pragma omp parallel for num_threads(nr) schedule(static, 1) if (nr > 1)
    for (int r = 0; r < nr; r++) {
        int lo, hi;
        par_range(nmb, u->nthreads, r, &lo, &hi);
        for (int j = lo; j < hi; j++) {
            if (nm)
                nm->apply(u, t, j, n[j]);
            else
                gelu_forward(unet_at(u, t->out, j, n[j], 0), unet_slot(u, t->y_buf, j),
                             (long)t->cout * n[j] * hw2);
        }
    }
    prof_add(PROF_ELEM, t0);
}

static float *fc_at(const unet *u, const float *base, const unet_fc *f, int j) {
    return (float *)base + (long)j * u->m * f->out;
}

/* Embeddings of micro-batch j and the modulated unit output. */
static void cond_point_forward(unet *u, const unet_condpt *cp, int j, int n) {
    const unet_fc *fs[2] = {&cp->t, &cp->c};
    const float *ins[2] = {u->t_in + (long)j * u->m, u->c_in + (long)j * u->m * 10};
    for (int q = 0; q < u->nemb; q++) {
        const unet_fc *f = fs[q];
        fcblock_forward(fc_at(u, f->e, f, j), fc_at(u, f->h, f, j), fc_at(u, f->g, f, j),
                        ins[q], u->p + f->w1, u->p + f->b1, u->p + f->w2, u->p + f->b2,
                        n, f->in, f->out);
    }
    const unet_unit *t = &u->units[cp->unit];
    double t0 = prof_start();
    cond_forward(unet_at(u, cp->dst, j, n, 0), unet_at(u, t->out, j, n, 0),
                 fc_at(u, cp->t.e, &cp->t, j),
                 u->nemb == 2 ? fc_at(u, cp->c.e, &cp->c, j) : NULL, u->mix, cp->C, n,
                 cp->hw * cp->hw);
    prof_add(PROF_ELEM, t0);
}

void unet_forward(unet *u, int train, int nmb, const int *n, long global_n,
                  unet_combine_fn combine, void *ctx, float bn_momentum) {
    DM_CHECK(nmb <= u->max_mb, "%d micro-batches exceed %d slots", nmb, u->max_mb);
    const int nr = nranges(u, nmb);
    for (int t = 0; t < u->nunits; t++) {
        unit_forward(u, &u->units[t], train, nmb, n, global_n, combine, ctx,
                     bn_momentum);
        for (int k = 0; k < u->ncond; k++) {
            if (u->condpts[k].unit != t) continue;
#pragma omp parallel for num_threads(nr) schedule(static, 1) if (nr > 1)
            for (int r = 0; r < nr; r++) {
                int lo, hi;
                par_range(nmb, u->nthreads, r, &lo, &hi);
                for (int j = lo; j < hi; j++) cond_point_forward(u, &u->condpts[k], j, n[j]);
            }
        }
    }
}

void unet_eval_ready(unet *u) {
    for (int t = 0; t < u->nunits; t++)
        if (u->units[t].norm) u->units[t].norm->finish(u, &u->units[t], 0, 1, 0, NULL, NULL, 0.0f);
}

void unet_forward_one(unet *u, int j, int n, int r) {
    DM_CHECK(j < u->max_mb && r < u->nscratch, "slot %d / scratch %d of %d / %d", j, r,
             u->max_mb, u->nscratch);
    for (int k = 0; k < u->nunits; k++) {
        unet_unit *t = &u->units[k];
        const unet_norm_ops *nm = t->norm;
        float *x = unet_at(u, t->in, j, n, 0);
        float *y = t->y_buf >= 0 ? unet_slot(u, t->y_buf, j) : unet_at(u, t->out, j, n, 0);
        unit_linear_forward(u, t, y, x, n, col_of(u, r));
        if (nm) nm->stats(u, t, 0, j, n);
        if (t->gelu) {
            if (nm)
                nm->apply(u, t, j, n);
            else
                gelu_forward(unet_at(u, t->out, j, n, 0), y,
                             (long)t->cout * n * t->hout * t->hout);
        }
        for (int c = 0; c < u->ncond; c++)
            if (u->condpts[c].unit == k) cond_point_forward(u, &u->condpts[c], j, n);
    }
}

/* ---- backward ----------------------------------------------------------- */

static void unit_linear_backward(unet *u, unet_unit *t, float *leaf,
                                 const float *dy, int j, int n, float *col) {
    float *x = unet_at(u, t->in, j, n, 0);
    /* The network input needs no gradient. */
    float *dx = t->in.buf == u->in_buf ? NULL : unet_at(u, t->in, j, n, 1);
    if (t->kind == UNIT_CONV)
        conv_kernels[unit_algo(u, t)].backward(t, dx, leaf + t->w, leaf + t->b, dy, x,
                                               u->p + t->w, col, n);
    else if (t->kind == UNIT_CONVT)
        convt2d_backward(dx, leaf + t->w, leaf + t->b, dy, x, u->p + t->w, col,
                         n, t->cin, t->hin, t->hin, t->cout, t->k, t->s, t->p);
    else
        avgpool_backward(dx, dy, t->cin, n, t->hin * t->hin);
}

/* Offset and length of a unit's contiguous parameter slice. */
static void unit_slice(const unet *u, const unet_unit *t, long *off, long *len) {
    int first = t->pw, last = t->pbeta >= 0 ? t->pbeta : t->pb;
    if (first < 0) {
        *off = 0, *len = 0;
        return;
    }
    *off = u->params[first].offset;
    *len = u->params[last].offset + u->params[last].size - *off;
}

static void unit_backward(unet *u, unet_unit *t, int nmb, const int *n,
                          long global_n, unet_combine_fn combine, void *ctx,
                          unet_leaf_dst_fn leaf_dst, unet_leaf_done_fn leaf_done,
                          unet_seg_done_fn seg_done) {
    const unet_norm_ops *nm = t->norm;
    const int C = t->cout, nr = nranges(u, nmb);
    const long hw2 = (long)t->hout * t->hout, stride = u->scratch_stride;
    /* Pass 1: gradient through GELU (and the norm's per-micro-batch sums). */
    double t0 = prof_start();
#pragma omp parallel for num_threads(nr) schedule(static, 1) if (nr > 1 && t->gelu)
    for (int r = 0; r < nr; r++) {
        int lo, hi;
        par_range(nmb, u->nthreads, r, &lo, &hi);
        for (int j = lo; t->gelu && j < hi; j++) {
            long cnt = (long)C * n[j] * hw2;
            float *dz = u->scratch_b + j * stride;
            if (nm) {
                nm->grad_stats(u, t, dz, j, n[j]);
            } else {
                par_zero(dz, cnt);
                gelu_backward(dz, unet_at(u, t->out, j, n[j], 1), unet_slot(u, t->y_buf, j),
                              cnt);
            }
        }
    }
    prof_add(PROF_ELEM, t0);
    if (nm) nm->grad_finish(u, t, nmb, combine, ctx);
    long off, len;
    unit_slice(u, t, &off, &len);
    /* Pass 2: through BN, then the conv; one weight-gradient leaf per j. */
#pragma omp parallel for num_threads(nr) schedule(static, 1) if (nr > 1)
    for (int r = 0; r < nr; r++) {
        int lo, hi;
        par_range(nmb, u->nthreads, r, &lo, &hi);
        for (int j = lo; j < hi; j++) {
            long cnt = (long)C * n[j] * hw2;
            const float *dy = unet_at(u, t->out, j, n[j], 1);
            if (t->gelu) dy = u->scratch_b + j * stride;
            double t1 = prof_start();
            if (nm) {
                float *dyc = u->scratch_a + j * stride;
                par_zero(dyc, cnt);
                nm->grad_input(u, t, dyc, dy, j, n[j], global_n);
                dy = dyc;
            }
            float *leaf = len ? leaf_dst(ctx, j) : NULL;
            prof_add(PROF_ELEM, t1);
            unit_linear_backward(u, t, leaf, dy, j, n[j], col_of(u, r));
            if (nm) {
                const double *g1 = u->sums + (long)j * 2 * C, *g2 = g1 + C;
                for (int c = 0; c < C; c++) {
                    leaf[t->gamma + c] = (float)g2[c];
                    leaf[t->beta + c] = (float)g1[c];
                }
            }
            if (len) leaf_done(ctx, j, off, len);
        }
    }
    if (len) seg_done(ctx, off, len);
}

void unet_zero_grad(unet *u, int nmb) {
    for (int b = 0; b < u->nbufs; b++)
        if (u->act[b].grad) par_zero(u->act[b].grad, u->act[b].mb_stride * nmb);
}

/* Gradient through the modulation into the unit output and the FCBlocks;
 * one leaf per micro-batch for each FCBlock's parameters. */
static void cond_point_backward(unet *u, const unet_condpt *cp, int nmb, const int *n,
                                void *ctx, unet_leaf_dst_fn leaf_dst,
                                unet_leaf_done_fn leaf_done, unet_seg_done_fn seg_done) {
    const unet_unit *t = &u->units[cp->unit];
    const long w = (long)u->m * 2 * u->D;
    const unet_fc *fs[2] = {&cp->t, &cp->c};
    const int nfc = u->nemb, nr = nranges(u, nmb);
#pragma omp parallel for num_threads(nr) schedule(static, 1) if (nr > 1)
    for (int r = 0; r < nr; r++) {
        float *sc = u->fc_scratch + r * 4 * w;
        float *de[2] = {sc, sc + w}, *dg = sc + 2 * w, *dh = sc + 3 * w;
        int lo, hi;
        par_range(nmb, u->nthreads, r, &lo, &hi);
        for (int j = lo; j < hi; j++) {
            double t0 = prof_start();
            cond_backward(unet_at(u, t->out, j, n[j], 1), de[0], de[1],
                          unet_at(u, cp->dst, j, n[j], 1), unet_at(u, t->out, j, n[j], 0),
                          fc_at(u, cp->t.e, &cp->t, j),
                          nfc == 2 ? fc_at(u, cp->c.e, &cp->c, j) : NULL, u->mix, cp->C,
                          n[j], cp->hw * cp->hw);
            prof_add(PROF_ELEM, t0);
            const float *ins[2] = {u->t_in + (long)j * u->m, u->c_in + (long)j * u->m * 10};
            float *leaf = leaf_dst(ctx, j);
            for (int q = 0; q < nfc; q++) {
                const unet_fc *f = fs[q];
                fcblock_backward(leaf + f->w1, leaf + f->b1, leaf + f->w2, leaf + f->b2, dg,
                                 dh, de[q], ins[q], fc_at(u, f->h, f, j), fc_at(u, f->g, f, j),
                                 u->p + f->w2, n[j], f->in, f->out);
                leaf_done(ctx, j, f->off, f->len);
            }
        }
    }
    for (int q = 0; q < nfc; q++) seg_done(ctx, fs[q]->off, fs[q]->len);
}

void unet_backward(unet *u, int nmb, const int *n, long global_n,
                   unet_combine_fn combine, void *ctx, unet_leaf_dst_fn leaf_dst,
                   unet_leaf_done_fn leaf_done, unet_seg_done_fn seg_done) {
    DM_CHECK(!u->inference, "backward on an inference-only model");
    for (int t = u->nunits - 1; t >= 0; t--) {
        for (int k = 0; k < u->ncond; k++)
            if (u->condpts[k].unit == t)
                cond_point_backward(u, &u->condpts[k], nmb, n, ctx, leaf_dst, leaf_done,
                                    seg_done);
        unit_backward(u, &u->units[t], nmb, n, global_n, combine, ctx, leaf_dst,
                      leaf_done, seg_done);
    }
}

void unet_unit_flops(const unet *u, int t, double *fwd, double *bwd) {
    const unet_unit *un = &u->units[t];
    double hw_in = (double)un->hin * un->hin, hw_out = (double)un->hout * un->hout;
    double f = 0;
    if (un->kind == UNIT_CONV)
        f = 2.0 * un->cout * un->cin * un->k * un->k * hw_out;
    else if (un->kind == UNIT_CONVT)
        f = 2.0 * un->cin * un->cout * un->k * un->k * hw_in;
    /* Backward: the weight gradient costs one forward; the input gradient
     * another, except for the first layer whose input is data. */
    *fwd = f;
    *bwd = un->in.buf == u->in_buf ? f : 2.0 * f;
}

void unet_fc_flops(const unet *u, double *fwd, double *bwd) {
    double f = 0;
    for (int k = 0; k < u->ncond; k++) {
        const unet_fc *fs[2] = {&u->condpts[k].t, &u->condpts[k].c};
        for (int q = 0; q < u->nemb; q++)
            f += 2.0 * fs[q]->out * (fs[q]->in + fs[q]->out);
    }
    *fwd = f;
    *bwd = 2.0 * f; /* dW of both layers and dX of the second */
}

int unet_grad_segments(const unet *u, long *off, long *len) {
    int n = 0;
    for (int t = 0; t < u->nunits; t++) {
        unit_slice(u, &u->units[t], &off[n], &len[n]);
        if (len[n]) n++;
    }
    for (int k = 0; k < u->ncond; k++) {
        const unet_fc *fs[2] = {&u->condpts[k].t, &u->condpts[k].c};
        for (int q = 0; q < u->nemb; q++) {
            off[n] = fs[q]->off;
            len[n] = fs[q]->len;
            n++;
        }
    }
    return n;
}

double unet_forward_flops(const unet *u) {
    double f = 0, a, b;
    for (int t = 0; t < u->nunits; t++) {
        unet_unit_flops(u, t, &a, &b);
        f += a;
    }
    unet_fc_flops(u, &a, &b);
    return f + a;
}

double unet_conv3x3_train_flops(const unet *u) {
    double f = 0, a, b;
    for (int t = 0; t < u->nunits; t++)
        if (winograd_can(&u->units[t])) {
            unet_unit_flops(u, t, &a, &b);
            f += a + b;
        }
    return f;
}

double unet_train_flops(const unet *u) {
    double f = 0, a, b;
    for (int t = 0; t < u->nunits; t++) {
        unet_unit_flops(u, t, &a, &b);
        f += a + b;
    }
    unet_fc_flops(u, &a, &b);
    return f + a + b;
}

void unet_predict(unet *u, float *y, const float *x, const float *t,
                  const int32_t *labels, int n) {
    DM_CHECK(u->max_mb >= 1, "unet_predict needs one micro-batch slot");
    DM_CHECK(!u->classes, "unet_predict on a classifier: use unet_classify");
    for (int i = 0; i < n; i += u->m) {
        int k = n - i < u->m ? n - i : u->m;
        memcpy(unet_slot(u, u->in_buf, 0), x + (long)i * 784,
               (size_t)k * 784 * sizeof(float));
        for (int q = 0; u->nemb && q < k; q++)
            unet_set_cond(u, 0, q, t ? t[i + q] : 0.0f, labels ? labels[i + q] : -1);
        unet_forward(u, 0, 1, &k, k, NULL, NULL, 0.0f);
        memcpy(y + (long)i * 784, unet_slot(u, u->out_buf, 0),
               (size_t)k * 784 * sizeof(float));
    }
}

void unet_classify(unet *u, float *logits, float *feats, const float *x, int n) {
    DM_CHECK(u->max_mb >= 1 && u->classes, "unet_classify needs a classifier with a slot");
    int K = u->classes, F = u->act[u->feat_buf].chans;
    for (int i = 0; i < n; i += u->m) {
        int k = n - i < u->m ? n - i : u->m;
        memcpy(unet_slot(u, u->in_buf, 0), x + (long)i * 784,
               (size_t)k * 784 * sizeof(float));
        unet_forward(u, 0, 1, &k, k, NULL, NULL, 0.0f);
        /* Class-major [K][k] and [F][k] slots to image-major rows. */
        const float *lo = unet_slot(u, u->out_buf, 0), *fe = unet_slot(u, u->feat_buf, 0);
        for (int q = 0; q < k; q++) {
            for (int c = 0; logits && c < K; c++)
                logits[(long)(i + q) * K + c] = lo[(long)c * k + q];
            for (int c = 0; feats && c < F; c++)
                feats[(long)(i + q) * F + c] = fe[(long)c * k + q];
        }
    }
}
