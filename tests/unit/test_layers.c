/* test_layers.c: every kernel of layers.h checked
 *  - forward against a direct loop written here in double precision,
 *  - backward against central finite differences of the scalar loss
 *    L = sum(out * R) for a fixed random R (loss summed in double),
 *  - the conventions of layers.h: weight gradients OVERWRITTEN (buffers are
 *    pre-filled with garbage), input gradients ADDED (pre-filled with
 *    PREFILL, which must survive), NULL for optional outputs.
 * Every array comparison also requires max |ref| > 25 * atol, so that a 5 %
 * error in the largest entry cannot hide under the absolute tolerance. */
#include "diffmpi/gemm.h"
#include "diffmpi/layers.h"
#include "diffmpi/rng.h"
#include "test_util.h"

#include <stdlib.h>
#include <string.h>

#define PREFILL 0.5f   /* initial content of ADDED gradient buffers */
#define GARBAGE 123.0f /* initial content of OVERWRITTEN buffers */

static dm_rng trng;

static void *xcalloc(long n, size_t size) {
    void *p = calloc((size_t)n, size);
    if (!p) {
        fprintf(stderr, "test_layers: out of memory (%ld x %zu)\n", n, size);
        exit(1);
    }
    return p;
}
#define FALLOC(n) ((float *)xcalloc((n), sizeof(float)))
#define DALLOC(n) ((double *)xcalloc((n), sizeof(double)))

static void randn(float *x, long n, float mean, float sd) {
    for (long i = 0; i < n; i++) x[i] = mean + sd * rng_normal(&trng);
}

static void fill(float *x, long n, float v) {
    for (long i = 0; i < n; i++) x[i] = v;
}

static double dot(const float *a, const float *b, long n) {
    double acc = 0.0;
    for (long i = 0; i < n; i++) acc += (double)a[i] * b[i];
    return acc;
}

/* got[i] - sub against ref[i]; reports the worst element only. */
static void check_sub(const char *what, const float *got, double sub,
                      const double *ref, long n, double atol, double rtol) {
    long worst = 0;
    double wr = -1.0, maxref = 0.0;
    for (long i = 0; i < n; i++) {
        const double r =
            fabs(got[i] - sub - ref[i]) / (atol + rtol * fabs(ref[i]));
        if (r > wr) wr = r, worst = i;
        if (fabs(ref[i]) > maxref) maxref = fabs(ref[i]);
    }
    char name[160];
    snprintf(name, sizeof name, "%s[%ld]", what, worst);
    EXPECT_CLOSE(got[worst] - sub, ref[worst], atol, rtol, name);
    EXPECT(maxref > 25.0 * atol, "%s: max |ref| %.3g too small for atol %.3g",
           what, maxref, atol);
}

static void check(const char *what, const float *got, const double *ref, long n,
                  double atol, double rtol) {
    check_sub(what, got, 0.0, ref, n, atol, rtol);
}

/* Central differences of f(ctx) with respect to each p[i]; the actual step
 * (p+h) - (p-h) after rounding to float is used as the denominator. */
typedef double (*loss_fn)(void *ctx);
static void fd_grad(double *g, loss_fn f, void *ctx, float *p, long n,
                    float h) {
    for (long i = 0; i < n; i++) {
        const float orig = p[i];
        p[i] = orig + h;
        const double xp = p[i], lp = f(ctx);
        p[i] = orig - h;
        const double xm = p[i], lm = f(ctx);
        p[i] = orig;
        g[i] = (lp - lm) / (xp - xm);
    }
}

/* ------------------------------------------------------------------------
 * Conv2d and ConvTranspose2d share one harness. */
struct conv_case {
    int N, Cin, H, W, Cout, k, s, p, transposed;
};

struct conv_ctx {
    struct conv_case c;
    float *in, *w, *b, *col, *out;
    const float *R;
    long nout;
};

static void conv_out_hw(const struct conv_case *c, int *Ho, int *Wo) {
    if (c->transposed) {
        *Ho = (c->H - 1) * c->s - 2 * c->p + c->k;
        *Wo = (c->W - 1) * c->s - 2 * c->p + c->k;
    } else {
        *Ho = (c->H + 2 * c->p - c->k) / c->s + 1;
        *Wo = (c->W + 2 * c->p - c->k) / c->s + 1;
    }
}

static void run_forward(struct conv_ctx *x, const float *b) {
    const struct conv_case *c = &x->c;
    if (c->transposed)
        convt2d_forward(x->out, x->in, x->w, b, x->col, c->N, c->Cin, c->H,
                        c->W, c->Cout, c->k, c->s, c->p);
    else
        conv2d_forward(x->out, x->in, x->w, b, x->col, c->N, c->Cin, c->H, c->W,
                       c->Cout, c->k, c->s, c->p);
}

static void run_backward(struct conv_ctx *x, float *din, float *dw, float *db,
                         const float *dout) {
    const struct conv_case *c = &x->c;
    if (c->transposed)
        convt2d_backward(din, dw, db, dout, x->in, x->w, x->col, c->N, c->Cin,
                         c->H, c->W, c->Cout, c->k, c->s, c->p);
    else
        conv2d_backward(din, dw, db, dout, x->in, x->w, x->col, c->N, c->Cin,
                        c->H, c->W, c->Cout, c->k, c->s, c->p);
}

static double conv_loss(void *v) {
    struct conv_ctx *x = v;
    run_forward(x, x->b);
    return dot(x->out, x->R, x->nout);
}

/* Offset of element (c, n, h, w) of a [C][N][H][W] array. */
static long at(int c, int n, int h, int w, int N, int H, int W) {
    return (((long)c * N + n) * H + h) * W + w;
}

/* Direct PyTorch definitions in CNHW layout, one flat loop over the output
 * (conv) or input (convt) elements and one over (ci or co, ki, kj).
 * Conv2d gathers: out[co][n][oh][ow] = b[co]
 *   + sum in[ci][n][oh*s-p+ki][ow*s-p+kj] * w[co][ci][ki][kj]. */
static void naive_conv2d(double *out, const float *in, const float *w,
                         const float *b, const struct conv_case *c) {
    int Ho, Wo;
    conv_out_hw(c, &Ho, &Wo);
    const int N = c->N, H = c->H, W = c->W, k = c->k, kk = k * k;
    for (long o = 0; o < (long)c->Cout * N * Ho * Wo; o++) {
        const int ow = o % Wo, oh = o / Wo % Ho, n = o / Wo / Ho % N;
        const int co = o / Wo / Ho / N;
        double acc = b ? b[co] : 0.0;
        for (int r = 0; r < c->Cin * kk; r++) {
            const int ci = r / kk, ki = r / k % k, kj = r % k;
            const int ih = oh * c->s - c->p + ki, iw = ow * c->s - c->p + kj;
            if (ih < 0 || ih >= H || iw < 0 || iw >= W) continue;
            acc += (double)in[at(ci, n, ih, iw, N, H, W)] *
                   w[co * c->Cin * kk + r];
        }
        out[o] = acc;
    }
}

/* ConvTranspose2d scatters: out[co][n][ih*s-p+ki][iw*s-p+kj]
 *   += in[ci][n][ih][iw] * w[ci][co][ki][kj], on top of b[co]. */
static void naive_convt2d(double *out, const float *in, const float *w,
                          const float *b, const struct conv_case *c) {
    int Ho, Wo;
    conv_out_hw(c, &Ho, &Wo);
    const int N = c->N, H = c->H, W = c->W, k = c->k, kk = k * k;
    const long plane = (long)N * Ho * Wo;
    for (long o = 0; o < c->Cout * plane; o++) out[o] = b ? b[o / plane] : 0.0;
    for (long i = 0; i < (long)c->Cin * N * H * W; i++) {
        const int iw = i % W, ih = i / W % H, n = i / W / H % N;
        const int ci = i / W / H / N;
        for (int r = 0; r < c->Cout * kk; r++) {
            const int co = r / kk, ki = r / k % k, kj = r % k;
            const int oh = ih * c->s - c->p + ki, ow = iw * c->s - c->p + kj;
            if (oh < 0 || oh >= Ho || ow < 0 || ow >= Wo) continue;
            out[at(co, n, oh, ow, N, Ho, Wo)] +=
                (double)in[i] * w[ci * c->Cout * kk + r];
        }
    }
}

/* Forward with and without bias; out is pre-filled since it is
 * overwritten. */
static void test_conv_forward(struct conv_ctx *x, double *ref,
                              const char *tag) {
    char what[160];
    for (int with_b = 0; with_b < 2; with_b++) {
        const float *b = with_b ? x->b : NULL;
        fill(x->out, x->nout, GARBAGE);
        run_forward(x, b);
        if (x->c.transposed)
            naive_convt2d(ref, x->in, x->w, b, &x->c);
        else
            naive_conv2d(ref, x->in, x->w, b, &x->c);
        snprintf(what, sizeof what, "%s forward%s", tag,
                 with_b ? "" : " (no bias)");
        check(what, x->out, ref, x->nout, 1e-5, 1e-4);
    }
}

/* Backward with dout = R, so the kernels return dL/d(param); dw, db
 * pre-filled with garbage (OVERWRITTEN), din with PREFILL (ADDED). */
static void test_conv_backward(struct conv_ctx *x, double *ref, long nin,
                               long nw, const char *tag) {
    const int Cout = x->c.Cout;
    float *dw = FALLOC(nw), *dw2 = FALLOC(nw), *db = FALLOC(Cout);
    float *din = FALLOC(nin);
    char what[160];
    fill(dw, nw, GARBAGE), fill(db, Cout, GARBAGE);
    fill(din, nin, PREFILL);
    run_backward(x, din, dw, db, x->R);
    fd_grad(ref, conv_loss, x, x->w, nw, 1e-2f);
    snprintf(what, sizeof what, "%s dw", tag);
    check(what, dw, ref, nw, 1e-3, 1e-2);
    fd_grad(ref, conv_loss, x, x->b, Cout, 1e-2f);
    snprintf(what, sizeof what, "%s db", tag);
    check(what, db, ref, Cout, 1e-3, 1e-2);
    fd_grad(ref, conv_loss, x, x->in, nin, 1e-2f);
    snprintf(what, sizeof what, "%s din (added to %g)", tag, PREFILL);
    check_sub(what, din, PREFILL, ref, nin, 1e-3, 1e-2);
    /* din and db NULL: dw must come out identical */
    fill(dw2, nw, GARBAGE);
    run_backward(x, NULL, dw2, NULL, x->R);
    EXPECT(memcmp(dw, dw2, sizeof(float) * (size_t)nw) == 0,
           "%s: dw differs when din, db are NULL", tag);
    free(dw), free(dw2), free(db), free(din);
}

static void test_conv_case(struct conv_case c) {
    int Ho, Wo;
    conv_out_hw(&c, &Ho, &Wo);
    const long nin = (long)c.Cin * c.N * c.H * c.W;
    const long nw = (long)c.Cin * c.Cout * c.k * c.k;
    const long nout = (long)c.Cout * c.N * Ho * Wo;
    const long ncol =
        c.transposed ? convt2d_col_floats(c.N, c.Cout, c.H, c.W, c.k, c.s, c.p)
                     : conv2d_scratch_floats(c.N, c.Cin, c.H, c.W, c.Cout, c.k, c.s, c.p);
    float *R = FALLOC(nout);
    struct conv_ctx x = {
        c, FALLOC(nin), FALLOC(nw), FALLOC(c.Cout), FALLOC(ncol), FALLOC(nout),
        R, nout};
    long nref = nout > nin ? nout : nin;
    double *ref = DALLOC(nref > nw ? nref : nw);
    randn(x.in, nin, 0.0f, 1.0f), randn(x.w, nw, 0.0f, 0.5f);
    randn(x.b, c.Cout, 0.0f, 0.5f), randn(R, nout, 0.0f, 1.0f);
    char tag[96];
    snprintf(tag, sizeof tag, "%s N%d Cin%d %dx%d Cout%d k%d s%d p%d",
             c.transposed ? "convt2d" : "conv2d", c.N, c.Cin, c.H, c.W, c.Cout,
             c.k, c.s, c.p);
    test_conv_forward(&x, ref, tag);
    test_conv_backward(&x, ref, nin, nw, tag);
    free(x.in), free(x.w), free(x.b), free(x.col), free(x.out);
    free(R), free(ref);
}

static void test_conv_cases(void);

/* max|a - b| / max|b| */
static double rel_max(const float *a, const float *b, long n) {
    double d = 0, m = 0;
    for (long i = 0; i < n; i++) {
        if (fabs(a[i] - b[i]) > d) d = fabs(a[i] - b[i]);
        if (fabs(b[i]) > m) m = fabs(b[i]);
    }
    return d / (m + 1e-30);
}

/* bf16 products against fp32 ones for one case (forward, dw, db, din):
 * within bf16's rounding (2e-2 of the largest entry) and not equal (the
 * operands were rounded). The scratch is exactly the size the layer asks
 * for, so a staging buffer past its end shows up under ASan. */
static void test_conv_case_bf16(struct conv_case c) {
    int Ho, Wo;
    conv_out_hw(&c, &Ho, &Wo);
    const long nin = (long)c.Cin * c.N * c.H * c.W, nw = (long)c.Cin * c.Cout * c.k * c.k;
    const long nout = (long)c.Cout * c.N * Ho * Wo;
    const long ncol =
        c.transposed ? convt2d_col_floats(c.N, c.Cout, c.H, c.W, c.k, c.s, c.p)
                     : conv2d_scratch_floats(c.N, c.Cin, c.H, c.W, c.Cout, c.k, c.s, c.p);
    float *R = FALLOC(nout);
    struct conv_ctx x = {c, FALLOC(nin), FALLOC(nw), FALLOC(c.Cout), FALLOC(ncol), FALLOC(nout),
                         R, nout};
    randn(x.in, nin, 0.0f, 1.0f), randn(x.w, nw, 0.0f, 0.5f);
    randn(x.b, c.Cout, 0.0f, 0.5f), randn(R, nout, 0.0f, 1.0f);
    float *r[2][4];
    const long sz[4] = {nout, nw, c.Cout, nin};
    for (int bf = 0; bf < 2; bf++) {
        EXPECT(gemm_setup(DM_ENGINE_ONEDNN, bf ? DM_PREC_BF16 : DM_PREC_FP32, 1) == DM_OK, "engine");
        for (int q = 0; q < 4; q++) r[bf][q] = FALLOC(sz[q]);
        run_forward(&x, x.b);
        memcpy(r[bf][0], x.out, sizeof(float) * (size_t)nout);
        fill(r[bf][3], nin, 0.0f);
        run_backward(&x, r[bf][3], r[bf][1], r[bf][2], R);
    }
    static const char *const names[4] = {"out", "dw", "db", "din"};
    for (int q = 0; q < 4; q++) {
        double e = rel_max(r[1][q], r[0][q], sz[q]);
        EXPECT(e < 2e-2 && (q == 2 || e > 0),
               "%s N%d Cin%d %dx%d Cout%d k%d s%d p%d bf16 %s: %.3g of the largest",
               c.transposed ? "convt2d" : "conv2d", c.N, c.Cin, c.H, c.W, c.Cout, c.k, c.s,
               c.p, names[q], e);
        free(r[0][q]), free(r[1][q]);
    }
    free(x.in), free(x.w), free(x.b), free(x.col), free(x.out), free(R);
}

/* Every case with the default image groups (the tiny cases fit in one)
 * and with one image per group, so that the group loops, the accumulated
 * weight gradient and the strided GEMM operands are exercised. */
static void test_conv(void) {
    test_conv_cases();
    long keep = conv_group_floats;
    conv_group_floats = 1;
    EXPECT(conv_group(5, 100) == 1 && conv_group(5, 0) == 1, "conv_group at least 1");
    test_conv_cases();
    conv_group_floats = keep;
    EXPECT(conv_group(3, 10) == 3, "conv_group at most N");
    EXPECT(conv_group(64, keep / 4) == 4, "conv_group = budget / per-image floats");
}

static void test_conv_cases(void) {
    /* Conv2d: 3x3 s1 p1 and 3x3 s2 p1, odd/even and non-square planes */
    test_conv_case((struct conv_case){2, 3, 7, 6, 4, 3, 1, 1, 0});
    test_conv_case((struct conv_case){2, 3, 7, 6, 4, 3, 2, 1, 0});
    test_conv_case((struct conv_case){2, 3, 6, 6, 4, 3, 2, 1, 0});
    test_conv_case((struct conv_case){2, 3, 5, 5, 2, 1, 1, 0, 0});
    /* stride 1 with p <= k-1 takes the input gradient as a convolution;
     * p = 0 and p = 3 > k-1 (col2im path) pin both sides of that switch */
    test_conv_case((struct conv_case){2, 3, 6, 5, 4, 3, 1, 0, 0});
    test_conv_case((struct conv_case){1, 2, 4, 5, 3, 3, 1, 3, 0});
    /* ConvTranspose2d: 4x4 s2 p1 (7 -> 14 upsampling), 7x7 s7 p0 (1 -> 7) */
    test_conv_case((struct conv_case){2, 3, 3, 4, 4, 4, 2, 1, 1});
    test_conv_case((struct conv_case){2, 3, 1, 1, 2, 7, 7, 0, 1});
}

/* im2col against its definition, exactly, over a column matrix prefilled
 * with garbage: covers the block-copy path (stride 1, Wo == W) including
 * planes smaller than the kernel, and the general path. */
static void test_im2col_naive(int N, int C, int H, int W, int k, int s, int p) {
    const int Ho = (H + 2 * p - k) / s + 1, Wo = (W + 2 * p - k) / s + 1;
    const long nim = (long)C * N * H * W, ncol = conv2d_col_floats(N, C, H, W, k, s, p);
    float *im = FALLOC(nim), *col = FALLOC(ncol);
    randn(im, nim, 0.0f, 1.0f), fill(col, ncol, GARBAGE);
    im2col(col, im, N, C, H, W, k, s, p);
    long bad = 0;
    for (int c = 0; c < C; c++)
        for (int ki = 0; ki < k; ki++)
            for (int kj = 0; kj < k; kj++)
                for (int n = 0; n < N; n++)
                    for (int oh = 0; oh < Ho; oh++)
                        for (int ow = 0; ow < Wo; ow++) {
                            int ih = oh * s - p + ki, iw = ow * s - p + kj;
                            float want = ih >= 0 && ih < H && iw >= 0 && iw < W
                                             ? im[(((long)c * N + n) * H + ih) * W + iw]
                                             : 0.0f;
                            long r = ((long)(c * k + ki) * k + kj);
                            long j = r * N * Ho * Wo + ((long)n * Ho + oh) * Wo + ow;
                            bad += col[j] != want;
                        }
    EXPECT(bad == 0, "im2col %dx%d k%d s%d p%d: %ld wrong entries", H, W, k, s, p, bad);
    /* The bf16 columns are the float columns rounded, bit for bit. */
    unsigned short *col16 = malloc(sizeof *col16 * (size_t)ncol);
    unsigned short *stage = malloc(sizeof(float) * (size_t)im2col_stage_floats(C, N, H, W));
    for (long j = 0; j < ncol; j++) col16[j] = 0xdead;
    im2col_part_typed(col16, DM_T_BF16, stage, im, N, 0, N, C, H, W, k, s, p);
    bad = 0;
    for (long j = 0; j < ncol; j++) bad += col16[j] != dm_bf16_bits(col[j]);
    EXPECT(bad == 0, "bf16 im2col %dx%d k%d s%d p%d: %ld entries not the rounded float",
           H, W, k, s, p, bad);
    free(im), free(col), free(col16), free(stage);
}

/* im2col and col2im are adjoint: <im2col(x), y> = <x, col2im(y)>; col2im
 * adds into its output. */
static void test_im2col_adjoint(int N, int C, int H, int W, int k, int s,
                                int p) {
    const int Ho = (H + 2 * p - k) / s + 1, Wo = (W + 2 * p - k) / s + 1;
    const long nim = (long)C * N * H * W,
               ncol = conv2d_col_floats(N, C, H, W, k, s, p);
    EXPECT(ncol == (long)C * k * k * N * Ho * Wo, "conv2d_col_floats %ld",
           ncol);
    float *im = FALLOC(nim), *col = FALLOC(ncol), *y = FALLOC(ncol),
          *back = FALLOC(nim);
    randn(im, nim, 0.0f, 1.0f), randn(y, ncol, 0.0f, 1.0f);
    fill(col, ncol, GARBAGE), fill(back, nim, PREFILL);
    im2col(col, im, N, C, H, W, k, s, p);
    col2im(back, y, N, C, H, W, k, s, p);
    double lhs = dot(col, y, ncol), rhs = 0.0;
    for (long i = 0; i < nim; i++) rhs += (double)im[i] * (back[i] - PREFILL);
    char what[96];
    snprintf(what, sizeof what, "im2col/col2im adjoint %dx%d k%d s%d p%d", H, W,
             k, s, p);
    EXPECT_CLOSE(rhs, lhs, 1e-4, 1e-4, what);
    free(im), free(col), free(y), free(back);
}

/* ------------------------------------------------------------------------
 * BatchNorm2d: the full training composition stats -> finish -> forward,
 * differentiated through backward_stats -> backward (dgamma = G2,
 * dbeta = G1). */
struct bn_ctx {
    float *x, *gamma, *beta, *y, *mean, *invstd;
    double *s1, *s2;
    const float *R;
    int C, M;
    float eps;
};

static double bn_loss(void *v) {
    struct bn_ctx *b = v;
    bn2d_stats(b->s1, b->s2, b->x, b->C, b->M);
    bn2d_finish_stats(b->mean, b->invstd, b->s1, b->s2, b->M, b->C, b->eps);
    bn2d_forward(b->y, b->x, b->mean, b->invstd, b->gamma, b->beta, b->C, b->M);
    return dot(b->y, b->R, (long)b->C * b->M);
}

static void test_bn_forward(struct bn_ctx *b) {
    const int C = b->C, M = b->M;
    double *ref = DALLOC((long)C * M);
    bn_loss(b);
    for (int c = 0; c < C; c++) {
        double m = 0.0, v = 0.0;
        for (int i = 0; i < M; i++) m += b->x[c * M + i];
        m /= M;
        for (int i = 0; i < M; i++)
            v += (b->x[c * M + i] - m) * (b->x[c * M + i] - m);
        v /= M; /* biased */
        for (int i = 0; i < M; i++)
            ref[c * M + i] =
                b->gamma[c] * (b->x[c * M + i] - m) / sqrt(v + b->eps) +
                b->beta[c];
    }
    check("bn2d forward", b->y, ref, (long)C * M, 1e-5, 1e-4);
    free(ref);
}

enum { BN_C = 3, BN_N = 2, BN_HW = 9, BN_M = BN_N * BN_HW };

/* Micro-batch m (sample m alone) of a [C][N][HW] array with N = BN_N. */
static void bn_slice(float *dst, const float *src, int m) {
    for (int c = 0; c < BN_C; c++)
        memcpy(dst + c * BN_HW, src + c * BN_M + m * BN_HW,
               sizeof(float) * BN_HW);
}

/* The same batch as BN_N micro-batches of one sample each, with the sums
 * combined before finishing: G1, G2, y and dx must equal the single-batch
 * g1, g2, y and dx - PREFILL. mean, invstd are recomputed in place. */
static void test_bn_split(struct bn_ctx *b, const double *g1, const double *g2,
                          const float *dx) {
    enum { C = BN_C, HW = BN_HW };
    float xs[BN_N][C * HW], Rs[BN_N][C * HW], ys[C * HW], dxs[C * HW];
    float yref[C * HW], dxref[C * HW];
    double t1[C], t2[C], S1[C] = {0}, S2[C] = {0}, G1[C] = {0}, G2[C] = {0};
    double yr[C * HW], dxr[C * HW];
    for (int m = 0; m < BN_N; m++) {
        bn_slice(xs[m], b->x, m), bn_slice(Rs[m], b->R, m);
        bn2d_stats(t1, t2, xs[m], C, HW);
        for (int c = 0; c < C; c++) S1[c] += t1[c], S2[c] += t2[c];
    }
    bn2d_finish_stats(b->mean, b->invstd, S1, S2, BN_M, C, b->eps);
    for (int m = 0; m < BN_N; m++) {
        bn2d_backward_stats(t1, t2, Rs[m], xs[m], b->mean, b->invstd, C, HW);
        for (int c = 0; c < C; c++) G1[c] += t1[c], G2[c] += t2[c];
    }
    for (int c = 0; c < C; c++) {
        EXPECT_CLOSE(G1[c], g1[c], 1e-6, 1e-6, "bn2d split G1");
        EXPECT_CLOSE(G2[c], g2[c], 1e-6, 1e-6, "bn2d split G2");
    }
    for (int m = 0; m < BN_N; m++) {
        bn2d_forward(ys, xs[m], b->mean, b->invstd, b->gamma, b->beta, C, HW);
        fill(dxs, C * HW, 0.0f);
        bn2d_backward(dxs, Rs[m], xs[m], b->mean, b->invstd, b->gamma, G1, G2,
                      BN_M, C, HW);
        bn_slice(yref, b->y, m), bn_slice(dxref, dx, m);
        for (int i = 0; i < C * HW; i++)
            yr[i] = yref[i], dxr[i] = dxref[i] - (double)PREFILL;
        check("bn2d split y", ys, yr, C * HW, 1e-5, 1e-4);
        check("bn2d split dx", dxs, dxr, C * HW, 1e-5, 1e-3);
    }
}

static void test_bn(void) {
    enum { C = BN_C, M = BN_M };
    float x[C * M], gamma[C], beta[C], y[C * M], mean[C], invstd[C], R[C * M];
    float dx[C * M], dgamma[C], dbeta[C];
    double s1[C], s2[C], g1[C], g2[C], ref[C * M];
    struct bn_ctx b = {x, gamma, beta, y, mean, invstd, s1, s2, R, C, M, 1e-5f};
    for (int c = 0; c < C; c++) randn(x + c * M, M, 2.0f * c - 1.0f, 0.5f + c);
    randn(gamma, C, 1.0f, 0.3f), randn(beta, C, 0.0f, 0.5f);
    randn(R, C * M, 0.0f, 1.0f);
    test_bn_forward(&b);

    bn_loss(&b);
    bn2d_backward_stats(g1, g2, R, x, mean, invstd, C, M);
    fill(dx, C * M, PREFILL);
    bn2d_backward(dx, R, x, mean, invstd, gamma, g1, g2, M, C, M);
    bn2d_backward(NULL, R, x, mean, invstd, gamma, g1, g2, M, C, M);
    for (int c = 0; c < C; c++)
        dgamma[c] = (float)g2[c], dbeta[c] = (float)g1[c];
    fd_grad(ref, bn_loss, &b, x, C * M, 1e-2f);
    check_sub("bn2d dx (added)", dx, PREFILL, ref, C * M, 1e-3, 1e-2);
    fd_grad(ref, bn_loss, &b, gamma, C, 1e-2f);
    check("bn2d dgamma = G2", dgamma, ref, C, 1e-3, 1e-2);
    fd_grad(ref, bn_loss, &b, beta, C, 1e-2f);
    check("bn2d dbeta = G1", dbeta, ref, C, 1e-3, 1e-2);
    bn_loss(&b); /* the last finite difference left y at beta - h */
    test_bn_split(&b, g1, g2, dx);
}

/* Running statistics by hand: channel 0 = {1,2,3,4} (mean 2.5, biased var
 * 1.25, unbiased 5/3), channel 1 = {-2,0,0,2} (mean 0, biased 2, unbiased
 * 8/3); momentum 0.1 from run_mean {0.5,-1}, run_var {1,2}. */
/* The fused BN+GELU kernels against the separate layers: equal values
 * (==, so -0 and +0 agree) and bitwise-equal double sums, on planes longer
 * than one 512-element chunk and not a multiple of the 8 sum lanes. */
static void test_bn_gelu_fused(void) {
    enum { C = 3, M = 1203 };
    static float x[C * M], da[C * M], a1[C * M], a2[C * M], z[C * M], dz1[C * M],
        dz2[C * M];
    float mean[C], invstd[C], gamma[C], beta[C];
    double s1[C], s2[C], g1a[C], g2a[C], g1b[C], g2b[C];
    randn(x, C * M, 0.3f, 2.0f), randn(da, C * M, 0.0f, 1.0f);
    randn(gamma, C, 1.0f, 0.5f), randn(beta, C, 0.0f, 0.5f);
    bn2d_stats(s1, s2, x, C, M);
    bn2d_finish_stats(mean, invstd, s1, s2, (double)M, C, 1e-5f);
    bn2d_forward(a1, x, mean, invstd, gamma, beta, C, M);
    gelu_forward(a1, a1, C * M);
    fill(a2, C * M, GARBAGE);
    bn_gelu_forward(a2, x, mean, invstd, gamma, beta, C, M);
    long bad = 0;
    for (long i = 0; i < C * M; i++) bad += a1[i] != a2[i];
    EXPECT(bad == 0, "bn_gelu_forward = bn2d_forward + gelu_forward (%ld differ)", bad);
    bn2d_forward(z, x, mean, invstd, gamma, beta, C, M);
    fill(dz1, C * M, 0.0f);
    gelu_backward(dz1, da, z, C * M);
    bn2d_backward_stats(g1a, g2a, dz1, x, mean, invstd, C, M);
    fill(dz2, C * M, GARBAGE);
    bn_gelu_backward_stats(dz2, g1b, g2b, da, x, mean, invstd, gamma, beta, C, M);
    bad = 0;
    for (long i = 0; i < C * M; i++) bad += dz1[i] != dz2[i];
    EXPECT(bad == 0, "bn_gelu_backward_stats dz = gelu_backward at bn(x) (%ld differ)", bad);
    EXPECT(memcmp(g1a, g1b, sizeof g1a) == 0 && memcmp(g2a, g2b, sizeof g2a) == 0,
           "bn_gelu_backward_stats sums = bn2d_backward_stats, bitwise");
    /* and the lane sums are the sums: against a plain double loop */
    for (int c = 0; c < C; c++) {
        double ref = 0.0;
        for (int i = 0; i < M; i++) ref += dz1[(long)c * M + i];
        EXPECT_CLOSE(g1b[c], ref, 1e-9, 1e-12, "lane-summed g1");
    }
}

static void test_bn_running(void) {
    const float x[8] = {1, 2, 3, 4, -2, 0, 0, 2};
    float run_mean[2] = {0.5f, -1.0f}, run_var[2] = {1.0f, 2.0f}, mean[2],
          invstd[2];
    double s1[2], s2[2];
    bn2d_stats(s1, s2, x, 2, 4);
    EXPECT(s1[0] == 10.0 && s2[0] == 30.0 && s1[1] == 0.0 && s2[1] == 8.0,
           "bn2d_stats sums %g %g %g %g", s1[0], s2[0], s1[1], s2[1]);
    bn2d_finish_stats(mean, invstd, s1, s2, 4.0, 2, 1e-5f);
    EXPECT_CLOSE(mean[0], 2.5, 1e-7, 1e-6, "finish mean0");
    EXPECT_CLOSE(mean[1], 0.0, 1e-7, 1e-6, "finish mean1");
    EXPECT_CLOSE(invstd[0], 1.0 / sqrt(1.25 + 1e-5), 0.0, 1e-6,
                 "finish invstd0 (biased var)");
    EXPECT_CLOSE(invstd[1], 1.0 / sqrt(2.0 + 1e-5), 0.0, 1e-6,
                 "finish invstd1 (biased var)");
    bn2d_update_running(run_mean, run_var, s1, s2, 4.0, 2, 0.1f);
    EXPECT_CLOSE(run_mean[0], 0.9 * 0.5 + 0.1 * 2.5, 0.0, 1e-6,
                 "running mean0");
    EXPECT_CLOSE(run_mean[1], 0.9 * -1.0 + 0.1 * 0.0, 0.0, 1e-6,
                 "running mean1");
    EXPECT_CLOSE(run_var[0], 0.9 * 1.0 + 0.1 * 5.0 / 3.0, 0.0, 1e-6,
                 "running var0 (unbiased)");
    EXPECT_CLOSE(run_var[1], 0.9 * 2.0 + 0.1 * 8.0 / 3.0, 0.0, 1e-6,
                 "running var1 (unbiased)");
}

/* ------------------------------------------------------------------------
 * Elementwise and small layers. */
struct vec_ctx {
    float *x, *y;
    const float *R;
    long n;
};

static double gelu_loss(void *v) {
    struct vec_ctx *g = v;
    gelu_forward(g->y, g->x, g->n);
    return dot(g->y, g->R, g->n);
}

static void test_gelu(void) {
    enum { n = 101 };
    float x[n], y[n], R[n], dx[n];
    double ref[n];
    for (int i = 0; i < n; i++)
        x[i] = -5.0f + 0.1f * i + 0.01f * rng_normal(&trng);
    randn(R, n, 0.0f, 1.0f);
    gelu_forward(y, x, n);
    for (int i = 0; i < n; i++)
        ref[i] = 0.5 * x[i] * (1.0 + erf(x[i] / sqrt(2.0)));
    check("gelu forward (erf)", y, ref, n, 1e-6, 1e-5);
    /* gelu(1) exact = 0.841344746; the tanh form gives 0.841192 and fails */
    float one = 1.0f, g1;
    gelu_forward(&g1, &one, 1);
    EXPECT_CLOSE(g1, 0.8413447460685429, 0.0, 2e-6, "gelu(1) exact erf form");
    struct vec_ctx g = {x, y, R, n};
    fill(dx, n, PREFILL);
    gelu_backward(dx, R, x, n);
    fd_grad(ref, gelu_loss, &g, x, n, 1e-3f);
    check_sub("gelu dx (added)", dx, PREFILL, ref, n, 1e-3, 1e-2);
    gelu_backward(NULL, R, x, n);
}

/* The normal cdf/pdf is compiled for several vector widths (layers.h,
 * DM_VECTOR_CLONES); all of them must give the same bits, or a run's results
 * would depend on the CPU it lands on. Here the same math is built for
 * plain x86-64, AVX2 and AVX-512 and compared bitwise on a dense grid. */
#if defined(__x86_64__) && defined(__GNUC__)
#include "../../src/nn/normal.h"
#define CDF_LOOP(name, attr)                                                   \
    attr static void name(float *c, float *d, const float *x, int n) {         \
        for (int i = 0; i < n; i++) normal_cdf_pdf(x[i], &c[i], &d[i]);          \
    }
CDF_LOOP(cdf_plain, )
CDF_LOOP(cdf_avx2, __attribute__((target("avx2"))))
CDF_LOOP(cdf_avx512, __attribute__((target("avx512f"))))

static void test_cdf_isa(void) {
    enum { n = 1 << 16 };
    static float x[n], c0[n], d0[n], c1[n], d1[n];
    for (int i = 0; i < n; i++) x[i] = -16.0f + 32.0f * (float)i / n + 1e-4f * (i % 7);
    cdf_plain(c0, d0, x, n);
    if (__builtin_cpu_supports("avx2")) {
        cdf_avx2(c1, d1, x, n);
        EXPECT(memcmp(c0, c1, sizeof c0) == 0 && memcmp(d0, d1, sizeof d0) == 0,
               "normal cdf/pdf: AVX2 build = plain build, bitwise");
    }
    if (__builtin_cpu_supports("avx512f")) {
        cdf_avx512(c1, d1, x, n);
        EXPECT(memcmp(c0, c1, sizeof c0) == 0 && memcmp(d0, d1, sizeof d0) == 0,
               "normal cdf/pdf: AVX-512 build = plain build, bitwise");
    }
}
#else
static void test_cdf_isa(void) {}
#endif

/* ------------------------------------------------------------------------
 * GroupNorm + GELU (gn_gelu.c), the composition the UNet runs:
 * gn_stats -> gn_gelu_forward, and backward gn_gelu_backward_stats (dz,
 * dbeta = g1, dgamma = g2) -> gn_backward (dx ADDED). The reference is
 * nn.GroupNorm(G, C) then exact GELU, naively in double: statistics per
 * image and group of C/G consecutive channels over all HW positions, biased
 * variance, eps = 1e-5 inside the square root, per-channel gamma, beta.
 * The backward is checked against central differences of that reference,
 * whose loss L = sum a * R has no float rounding: steps of 1e-5 leave a
 * truncation error of about 1e-10 * L''' and a rounding error of about
 * 1e-16 * |L| / 1e-5, both far below the float kernels' own error. So the
 * tolerances are tight: 1e-6 + 1e-5 |ref| (statistics 1e-7 + 1e-6 |ref|,
 * dx 2e-6 + 2e-5 |ref|); the largest error measured is 0.23 of its
 * tolerance (dx at variance about eps), most are below 0.03. */
struct gn_case {
    int C, N, HW, G;
    float mean, sd; /* x of channel c ~ N(mean * (c - C/2), sd * (1 + c/4)) */
};

enum { GN_MAX_NG = 64 }; /* N * G */
#define GN_EPS 1e-5

struct gn_ref {
    struct gn_case c;
    double *x, *gamma, *beta; /* [C][N][HW], [C], [C] */
    const float *R;           /* [C][N][HW]: da of L = sum a * R */
    double *z, *a;            /* [C][N][HW]: GN output, GELU output */
    double mean[GN_MAX_NG], invstd[GN_MAX_NG]; /* [N][G] */
};

static double gelu_exact(double z) { return 0.5 * z * erfc(-z / sqrt(2.0)); }
static double gelu_exact_grad(double z) {
    return 0.5 * erfc(-z / sqrt(2.0)) + z * exp(-0.5 * z * z) / sqrt(2.0 * 3.14159265358979324);
}

/* The reference forward; returns L = sum a * R. */
static double gn_ref_forward(void *v) {
    struct gn_ref *r = v;
    const int C = r->c.C, N = r->c.N, HW = r->c.HW, G = r->c.G, cg = C / G;
    const double count = (double)cg * HW;
    double L = 0.0;
    for (int n = 0; n < N; n++)
        for (int g = 0; g < G; g++) {
            double m = 0.0, var = 0.0;
            for (int c = g * cg; c < (g + 1) * cg; c++)
                for (int i = 0; i < HW; i++) m += r->x[((long)c * N + n) * HW + i];
            m /= count;
            for (int c = g * cg; c < (g + 1) * cg; c++)
                for (int i = 0; i < HW; i++) {
                    const double d = r->x[((long)c * N + n) * HW + i] - m;
                    var += d * d;
                }
            var /= count; /* biased */
            const double is = 1.0 / sqrt(var + GN_EPS);
            r->mean[n * G + g] = m, r->invstd[n * G + g] = is;
            for (int c = g * cg; c < (g + 1) * cg; c++)
                for (int i = 0; i < HW; i++) {
                    const long o = ((long)c * N + n) * HW + i;
                    r->z[o] = r->gamma[c] * (r->x[o] - m) * is + r->beta[c];
                    r->a[o] = gelu_exact(r->z[o]);
                    L += r->a[o] * r->R[o];
                }
        }
    return L;
}

/* Central differences of f with respect to each double p[i]. */
static void fd_grad_d(double *g, loss_fn f, void *ctx, double *p, long n, double h) {
    for (long i = 0; i < n; i++) {
        const double orig = p[i];
        p[i] = orig + h;
        const double lp = f(ctx);
        p[i] = orig - h;
        const double lm = f(ctx);
        p[i] = orig;
        g[i] = (lp - lm) / (2.0 * h);
    }
}

/* The float kernels on x [C][N][HW]: mean, invstd [N][G], a, dz [C][N][HW]
 * OVERWRITTEN (pre-filled with garbage), g1, g2 [C] OVERWRITTEN, dx ADDED. */
static void gn_kernels(float *mean, float *invstd, float *a, float *dz, double *g1,
                       double *g2, float *dx, const float *x, const float *R,
                       const float *gamma, const float *beta, int C, int N, int HW,
                       int G) {
    const long n = (long)C * N * HW;
    fill(mean, (long)N * G, GARBAGE), fill(invstd, (long)N * G, GARBAGE);
    fill(a, n, GARBAGE), fill(dz, n, GARBAGE);
    for (int c = 0; c < C; c++) g1[c] = g2[c] = GARBAGE;
    gn_stats(mean, invstd, x, C, N, HW, G, 1e-5f);
    gn_gelu_forward(a, x, mean, invstd, gamma, beta, C, N, HW, G);
    gn_gelu_backward_stats(dz, g1, g2, R, x, mean, invstd, gamma, beta, C, N, HW, G);
    gn_backward(dx, dz, x, mean, invstd, gamma, C, N, HW, G);
}

static int gn_same(const float *p, const float *q, long n) {
    for (long i = 0; i < n; i++)
        if (p[i] != q[i]) return 0; /* ==: -0 and +0 agree */
    return 1;
}

static void gn_isa_check(const struct gn_case *c, const float *x, const float *R,
                         const float *mean, const float *invstd, const float *gamma,
                         const float *beta, const float *a, const float *dz,
                         const char *tag);

/* Every image alone (N = 1) gives the same bits as inside the batch, and
 * the sums over images give g1, g2: nothing crosses images. Image n alone
 * also equals the separate layers fed each channel's group statistics:
 * bn2d_forward + gelu_forward, gelu_backward, bn2d_backward_stats, bitwise
 * (the same expressions and the same lane sums). */
static void gn_images(const struct gn_case *c, const float *x, const float *R,
                      const float *gamma, const float *beta, const float *mean,
                      const float *invstd, const float *a, const float *dz,
                      const double *g1, const double *g2, const float *dx,
                      const char *tag) {
    const int C = c->C, N = c->N, HW = c->HW, G = c->G, cg = C / G;
    const long m = (long)C * HW;
    float *xs = FALLOC(m), *Rs = FALLOC(m), *as = FALLOC(m), *dzs = FALLOC(m);
    float *dxs = FALLOC(m), *z = FALLOC(m), *t = FALLOC(m);
    float ms[GN_MAX_NG], is[GN_MAX_NG], mc[64], ic[64];
    double h1[64], h2[64], s1[64] = {0}, s2[64] = {0}, b1[64], b2[64];
    int same_stats = 1, same_a = 1, same_dz = 1, same_dx = 1, sep = 1;
    for (int n = 0; n < N; n++) {
        for (int ch = 0; ch < C; ch++) {
            memcpy(xs + (long)ch * HW, x + ((long)ch * N + n) * HW, sizeof(float) * HW);
            memcpy(Rs + (long)ch * HW, R + ((long)ch * N + n) * HW, sizeof(float) * HW);
        }
        fill(dxs, m, PREFILL);
        gn_kernels(ms, is, as, dzs, h1, h2, dxs, xs, Rs, gamma, beta, C, 1, HW, G);
        same_stats &= memcmp(ms, mean + n * G, sizeof(float) * G) == 0 &&
                      memcmp(is, invstd + n * G, sizeof(float) * G) == 0;
        for (int ch = 0; ch < C; ch++) {
            const long o = ((long)ch * N + n) * HW;
            same_a &= gn_same(as + (long)ch * HW, a + o, HW);
            same_dz &= gn_same(dzs + (long)ch * HW, dz + o, HW);
            same_dx &= gn_same(dxs + (long)ch * HW, dx + o, HW);
            s1[ch] += h1[ch], s2[ch] += h2[ch];
            mc[ch] = ms[ch / cg], ic[ch] = is[ch / cg];
        }
        bn2d_forward(z, xs, mc, ic, gamma, beta, C, HW);
        gelu_forward(t, z, m);
        sep &= gn_same(t, as, m);
        fill(t, m, 0.0f);
        gelu_backward(t, Rs, z, m);
        sep &= gn_same(t, dzs, m);
        bn2d_backward_stats(b1, b2, dzs, xs, mc, ic, C, HW);
        sep &= memcmp(b1, h1, sizeof(double) * C) == 0 &&
               memcmp(b2, h2, sizeof(double) * C) == 0;
    }
    EXPECT(same_stats && same_a && same_dz && same_dx,
           "%s: an image alone differs in bits from the same image in the batch "
           "(stats %d, a %d, dz %d, dx %d)", tag, same_stats, same_a, same_dz, same_dx);
    for (int ch = 0; ch < C; ch++) {
        EXPECT_CLOSE(s1[ch], g1[ch], 1e-12, 1e-12, "gn g1 = sum over images");
        EXPECT_CLOSE(s2[ch], g2[ch], 1e-12, 1e-12, "gn g2 = sum over images");
    }
    EXPECT(sep, "%s: image alone != bn2d_forward + gelu_forward, gelu_backward, "
           "bn2d_backward_stats with the group statistics (bitwise)", tag);
    gn_isa_check(c, x, R, mean, invstd, gamma, beta, a, dz, tag);
    free(xs), free(Rs), free(as), free(dzs), free(dxs), free(z), free(t);
}

static void test_gn_case(struct gn_case c) {
    const int C = c.C, N = c.N, HW = c.HW, G = c.G;
    const long n = (long)C * N * HW;
    float *x = FALLOC(n), *R = FALLOC(n), *a = FALLOC(n), *dz = FALLOC(n), *dx = FALLOC(n);
    float gamma[64], beta[64], mean[GN_MAX_NG], invstd[GN_MAX_NG], dg[64], db[64];
    double g1[64], g2[64], *ref = DALLOC(n > GN_MAX_NG ? n : GN_MAX_NG);
    struct gn_ref r = {c, DALLOC(n), DALLOC(C), DALLOC(C), R, DALLOC(n), DALLOC(n), {0}, {0}};
    char tag[96], what[160];
    snprintf(tag, sizeof tag, "gn_gelu C%d N%d HW%d G%d", C, N, HW, G);
    EXPECT(C <= 64 && N * G <= GN_MAX_NG && C % G == 0, "%s: bad case", tag);
    for (int ch = 0; ch < C; ch++)
        randn(x + (long)ch * N * HW, (long)N * HW, c.mean * (ch - C / 2),
              c.sd * (1.0f + 0.25f * ch));
    randn(gamma, C, 1.0f, 0.3f), randn(beta, C, 0.0f, 0.5f), randn(R, n, 0.0f, 1.0f);
    for (long i = 0; i < n; i++) r.x[i] = x[i];
    for (int ch = 0; ch < C; ch++) r.gamma[ch] = gamma[ch], r.beta[ch] = beta[ch];
    gn_ref_forward(&r);

    fill(dx, n, PREFILL);
    gn_kernels(mean, invstd, a, dz, g1, g2, dx, x, R, gamma, beta, C, N, HW, G);
    snprintf(what, sizeof what, "%s mean", tag);
    check(what, mean, r.mean, (long)N * G, 1e-7, 1e-6);
    snprintf(what, sizeof what, "%s invstd (biased var, eps inside)", tag);
    check(what, invstd, r.invstd, (long)N * G, 1e-7, 1e-6);
    snprintf(what, sizeof what, "%s forward", tag);
    check(what, a, r.a, n, 1e-6, 1e-5);
    for (long i = 0; i < n; i++) ref[i] = R[i] * gelu_exact_grad(r.z[i]);
    snprintf(what, sizeof what, "%s dz = da * gelu'", tag);
    check(what, dz, ref, n, 1e-6, 1e-5);
    for (int ch = 0; ch < C; ch++) dg[ch] = (float)g2[ch], db[ch] = (float)g1[ch];
    fd_grad_d(ref, gn_ref_forward, &r, r.gamma, C, 1e-5);
    snprintf(what, sizeof what, "%s dgamma = g2", tag);
    check(what, dg, ref, C, 1e-6, 1e-5);
    fd_grad_d(ref, gn_ref_forward, &r, r.beta, C, 1e-5);
    snprintf(what, sizeof what, "%s dbeta = g1", tag);
    check(what, db, ref, C, 1e-6, 1e-5);
    fd_grad_d(ref, gn_ref_forward, &r, r.x, n, 1e-5);
    snprintf(what, sizeof what, "%s dx (added to %g)", tag, PREFILL);
    check_sub(what, dx, PREFILL, ref, n, 2e-6, 2e-5);
    gn_images(&c, x, R, gamma, beta, mean, invstd, a, dz, g1, g2, dx, tag);
    free(x), free(R), free(a), free(dz), free(dx), free(ref);
    free(r.x), free(r.gamma), free(r.beta), free(r.z), free(r.a);
}

static void test_gn(void) {
    /* HW below, at and not a multiple of the 8 sum lanes; G = 1 (one group,
     * LayerNorm-like), G = C (InstanceNorm-like) and between; 7x7 planes. */
    test_gn_case((struct gn_case){4, 2, 5, 2, 0.5f, 1.0f});
    test_gn_case((struct gn_case){3, 2, 13, 1, 0.5f, 1.0f});
    test_gn_case((struct gn_case){3, 3, 9, 3, 0.5f, 1.0f});
    test_gn_case((struct gn_case){6, 2, 16, 3, -0.3f, 0.7f});
    test_gn_case((struct gn_case){4, 1, 49, 4, 1.0f, 1.5f});
    test_gn_case((struct gn_case){8, 2, 11, 2, 0.2f, 1.0f});
    /* Variance about eps: 1/sqrt(var) and 1/sqrt(var + eps) differ by 40 %,
     * so eps must be 1e-5 and inside the square root. */
    test_gn_case((struct gn_case){2, 2, 6, 1, 0.0f, 3e-3f});
}

/* The GN kernels are built three times (DM_VECTOR_CLONES); the loader runs
 * one. Their per-element expression, z = (x - mean) * (gamma * invstd) +
 * beta, a = z * Phi(z), dz = da * (Phi(z) + z * phi(z)), is built here for
 * plain x86-64, AVX2 and AVX-512 and each must give the bits the library
 * gave (their sums go through the fixed lanes of lanes.h, whose order no
 * vector width changes). Catches, e.g., an FMA contracted in one build. */
#if defined(__x86_64__) && defined(__GNUC__)
#define GN_LOOP(name, attr)                                                     \
    attr static void name(float *a, float *dz, const float *x, const float *da,  \
                          float mu, float scale, float b, int n) {              \
        for (int i = 0; i < n; i++) {                                           \
            const float z = (x[i] - mu) * scale + b;                            \
            float cdf, pdf;                                                     \
            normal_cdf_pdf(z, &cdf, &pdf);                                      \
            a[i] = z * cdf;                                                     \
            dz[i] = da[i] * (cdf + z * pdf);                                    \
        }                                                                       \
    }
GN_LOOP(gn_plain, )
GN_LOOP(gn_avx2, __attribute__((target("avx2"))))
GN_LOOP(gn_avx512, __attribute__((target("avx512f"))))

static void gn_isa_check(const struct gn_case *c, const float *x, const float *R,
                         const float *mean, const float *invstd, const float *gamma,
                         const float *beta, const float *a, const float *dz,
                         const char *tag) {
    typedef void (*gn_loop)(float *, float *, const float *, const float *, float, float,
                            float, int);
    const gn_loop loops[3] = {gn_plain, gn_avx2, gn_avx512};
    const char *names[3] = {"plain", "AVX2", "AVX-512"};
    const int ok[3] = {1, __builtin_cpu_supports("avx2"), __builtin_cpu_supports("avx512f")};
    const int N = c->N, HW = c->HW, cg = c->C / c->G;
    float *ta = FALLOC(HW), *tdz = FALLOC(HW);
    for (int v = 0; v < 3; v++) {
        int same = 1;
        for (int ch = 0; ok[v] && ch < c->C; ch++)
            for (int n = 0; n < N; n++) {
                const int k = n * c->G + ch / cg;
                const long o = ((long)ch * N + n) * HW;
                loops[v](ta, tdz, x + o, R + o, mean[k], gamma[ch] * invstd[k], beta[ch], HW);
                same &= memcmp(ta, a + o, sizeof(float) * HW) == 0 &&
                        memcmp(tdz, dz + o, sizeof(float) * HW) == 0;
            }
        EXPECT(same, "%s: the %s build of GN's element math differs from the library",
               tag, names[v]);
    }
    free(ta), free(tdz);
}
#else
static void gn_isa_check(const struct gn_case *c, const float *x, const float *R,
                         const float *mean, const float *invstd, const float *gamma,
                         const float *beta, const float *a, const float *dz,
                         const char *tag) {}
#endif

/* The vectorized normal cdf/pdf over a dense grid against double erfc:
 * libm's erff form is within 6.4e-8 of the exact cdf, ours must be within
 * 2.5e-7 (measured 9.7e-8), and gelu' within 3e-7 (measured 1.6e-7). Non-
 * finite inputs must stay non-finite (the trainer's NaN check relies on it). */
static void test_gelu_accuracy(void) {
    enum { n = 4096 };
    static float x[n], y[n], d[n], one[n];
    double wc = 0.0, wd = 0.0, wg = 0.0;
    float wcx = 0.0f, wdx = 0.0f, wgx = 0.0f;
    for (int k = 0; k < 60; k++) {
        for (int i = 0; i < n; i++) {
            x[i] = -15.0f + 30.0f * (float)(k * n + i) / (60.0f * n);
            one[i] = 1.0f;
            d[i] = 0.0f;
        }
        gelu_forward(y, x, n);
        gelu_backward(d, one, x, n);
        for (int i = 0; i < n; i++) {
            const double xd = x[i], cdf = 0.5 * erfc(-xd / sqrt(2.0));
            const double pdf = exp(-0.5 * xd * xd) / sqrt(2.0 * 3.14159265358979324);
            const double ec = fabs(gelu_cdf(x[i]) - cdf);
            const double ed = fabs(d[i] - (cdf + xd * pdf));
            const double eg = fabs(y[i] - xd * cdf) / (1e-30 + fabs(xd));
            if (ec > wc) wc = ec, wcx = x[i];
            if (ed > wd) wd = ed, wdx = x[i];
            if (eg > wg) wg = eg, wgx = x[i];
        }
    }
    char name[96];
    snprintf(name, sizeof name, "normal cdf error %.3g at x=%g", wc, wcx);
    EXPECT(wc <= 2.5e-7, name);
    snprintf(name, sizeof name, "gelu' error %.3g at x=%g", wd, wdx);
    EXPECT(wd <= 3e-7, name);
    snprintf(name, sizeof name, "gelu(x)/x error %.3g at x=%g", wg, wgx);
    EXPECT(wg <= 2.5e-7, name);
    const float bad[3] = {NAN, INFINITY, -INFINITY};
    for (int i = 0; i < 3; i++) {
        float g, dd = 0.0f, o = 1.0f;
        gelu_forward(&g, &bad[i], 1);
        gelu_backward(&dd, &o, &bad[i], 1);
        EXPECT(!isfinite(g), "gelu of a non-finite input is non-finite");
        EXPECT(!isfinite(dd), "gelu' of a non-finite input is non-finite");
    }
}

enum { POOL_C = 3, POOL_N = 2, POOL_HW = 49 };

static double pool_loss(void *v) {
    struct vec_ctx *g = v;
    avgpool_forward(g->y, g->x, POOL_C, POOL_N, POOL_HW);
    return dot(g->y, g->R, g->n);
}

static void test_avgpool(void) {
    enum { C = POOL_C, N = POOL_N, HW = POOL_HW };
    float in[C * N * HW], out[C * N], R[C * N], din[C * N * HW];
    double ref[C * N * HW];
    randn(in, C * N * HW, 0.3f, 1.0f), randn(R, C * N, 0.0f, 1.0f);
    fill(out, C * N, GARBAGE);
    avgpool_forward(out, in, C, N, HW);
    for (int j = 0; j < C * N; j++) {
        ref[j] = 0.0;
        for (int i = 0; i < HW; i++) ref[j] += in[j * HW + i];
        ref[j] /= HW;
    }
    check("avgpool forward", out, ref, C * N, 1e-6, 1e-5);
    struct vec_ctx g = {in, out, R, C * N};
    fill(din, C * N * HW, PREFILL);
    avgpool_backward(din, R, C, N, HW);
    fd_grad(ref, pool_loss, &g, in, C * N * HW, 1e-2f);
    /* gradients are R/49 ~ 0.02: atol scaled down accordingly */
    check_sub("avgpool din (added)", din, PREFILL, ref, C * N * HW, 1e-4, 1e-2);
    avgpool_backward(NULL, R, C, N, HW);
}

struct lin_ctx {
    float *in, *w, *b, *out;
    const float *R;
    int N, Fi, Fo;
};

static double lin_loss(void *v) {
    struct lin_ctx *l = v;
    linear_forward(l->out, l->in, l->w, l->b, l->N, l->Fi, l->Fo);
    return dot(l->out, l->R, (long)l->N * l->Fo);
}

static void test_linear(void) {
    enum { N = 3, Fi = 5, Fo = 4 };
    float in[N * Fi], w[Fo * Fi], b[Fo], out[N * Fo], R[N * Fo];
    float din[N * Fi], dw[Fo * Fi], db[Fo], dw2[Fo * Fi];
    double ref[N * Fi > Fo * Fi ? N * Fi : Fo * Fi];
    randn(in, N * Fi, 0.0f, 1.0f), randn(w, Fo * Fi, 0.0f, 0.5f);
    randn(b, Fo, 0.0f, 0.5f), randn(R, N * Fo, 0.0f, 1.0f);
    struct lin_ctx l = {in, w, b, out, R, N, Fi, Fo};
    for (int with_b = 0; with_b < 2; with_b++) {
        fill(out, N * Fo, GARBAGE);
        linear_forward(out, in, w, with_b ? b : NULL, N, Fi, Fo);
        for (int n = 0; n < N; n++)
            for (int o = 0; o < Fo; o++) {
                ref[n * Fo + o] = with_b ? b[o] : 0.0;
                for (int i = 0; i < Fi; i++)
                    ref[n * Fo + o] += (double)in[n * Fi + i] * w[o * Fi + i];
            }
        check(with_b ? "linear forward" : "linear forward (no bias)", out, ref,
              N * Fo, 1e-5, 1e-4);
    }
    fill(dw, Fo * Fi, GARBAGE), fill(db, Fo, GARBAGE);
    fill(din, N * Fi, PREFILL);
    linear_backward(din, dw, db, R, in, w, N, Fi, Fo);
    fd_grad(ref, lin_loss, &l, w, Fo * Fi, 1e-2f);
    check("linear dw", dw, ref, Fo * Fi, 1e-3, 1e-2);
    fd_grad(ref, lin_loss, &l, b, Fo, 1e-2f);
    check("linear db", db, ref, Fo, 1e-3, 1e-2);
    fd_grad(ref, lin_loss, &l, in, N * Fi, 1e-2f);
    check_sub("linear din (added)", din, PREFILL, ref, N * Fi, 1e-3, 1e-2);
    fill(dw2, Fo * Fi, GARBAGE);
    linear_backward(NULL, dw2, NULL, R, in, w, N, Fi, Fo);
    EXPECT(memcmp(dw, dw2, sizeof dw) == 0,
           "linear dw differs when din, db are NULL");
}

struct mse_ctx {
    float *y, *dy;
    const float *t;
    long n;
    float scale;
};

static double mse_loss(void *v) {
    struct mse_ctx *m = v;
    return m->scale * mse_forward_backward(m->dy, m->y, m->t, m->n, m->scale);
}

static void test_mse(void) {
    enum { n = 37 };
    float y[n], t[n], dy[n], scratch[n];
    double ref[n], sum = 0.0;
    const float scale = 1.0f / (4 * n); /* as if 4 micro-batches of n */
    randn(y, n, 0.0f, 1.0f), randn(t, n, 0.0f, 1.0f);
    for (int i = 0; i < n; i++)
        sum += ((double)y[i] - t[i]) * ((double)y[i] - t[i]);
    fill(dy, n, GARBAGE);
    EXPECT_CLOSE(mse_forward_backward(dy, y, t, n, scale), sum, 0.0, 1e-6,
                 "mse value");
    for (int i = 0; i < n; i++) ref[i] = 2.0 * ((double)y[i] - t[i]) * scale;
    check("mse dy = 2 (y - t) scale", dy, ref, n, 1e-6, 1e-5);
    struct mse_ctx m = {y, scratch, t, n, scale};
    fd_grad(ref, mse_loss, &m, y, n, 1e-2f);
    check("mse dy vs finite differences", dy, ref, n, 1e-5, 1e-2);
}

struct xent_ctx {
    float *logits, *dl;
    const float *target;
    int K, N;
    float scale;
};

static double xent_loss(void *v) {
    struct xent_ctx *x = v;
    return x->scale * xent_forward_backward(x->dl, NULL, x->logits, x->target, x->K, x->N,
                                            x->scale);
}

/* Softmax cross-entropy: the value against a direct double computation
 * (also with logits near 80, whose exp overflows float), the gradient
 * against softmax - target and against finite differences, for one-hot
 * targets and for class probabilities (PyTorch's soft targets), and the
 * accuracy count (with a tie, broken towards the first class). */
static void test_xent(void) {
    enum { K = 10, N = 7 };
    float logits[K * N], dl[K * N], scratch[K * N], target[N * K];
    const int32_t labels[N] = {3, 0, 9, 9, 5, 1, 3};
    double ref[K * N];
    const float scale = 1.0f / (3 * N);
    for (int soft = 0; soft <= 1; soft++)
        for (int shift = 0; shift <= 80; shift += 80) {
            randn(logits, K * N, (float)shift, 2.0f);
            /* image 1: its label clearly largest; image 2: a tie broken first */
            logits[0 * N + 1] = (float)shift + 20.0f;
            logits[4 * N + 2] = logits[9 * N + 2] = (float)shift + 20.0f;
            for (int n = 0; n < N; n++)
                for (int k = 0; k < K; k++)
                    target[n * K + k] = soft ? (k == labels[n] ? 0.55f : 0.05f)
                                             : (float)(k == labels[n]);
            double sum = 0.0;
            int want = 0;
            for (int n = 0; n < N; n++) {
                double z = 0.0, mx = -1e30, ts = 0.0;
                int arg = 0;
                for (int k = 0; k < K; k++)
                    if (logits[k * N + n] > mx) mx = logits[k * N + n], arg = k;
                for (int k = 0; k < K; k++) z += exp((double)logits[k * N + n] - mx);
                for (int k = 0; k < K; k++) {
                    double lp = (double)logits[k * N + n] - mx - log(z);
                    sum -= target[n * K + k] * lp;
                    ts += target[n * K + k];
                }
                want += arg == labels[n];
                for (int k = 0; k < K; k++)
                    ref[k * N + n] = scale * (exp(logits[k * N + n] - mx) / z * ts -
                                              target[n * K + k]);
            }
            int correct = -1;
            fill(dl, K * N, GARBAGE);
            double got = xent_forward_backward(dl, &correct, logits, target, K, N, scale);
            EXPECT(isfinite(got), "xent finite at logits near %d", shift);
            EXPECT_CLOSE(got, sum, 0.0, 1e-9, soft ? "xent value, soft targets" : "xent value");
            EXPECT(correct == want && correct >= 1, "xent correct %d, expected %d", correct,
                   want);
            check("xent dlogits = scale (softmax - target)", dl, ref, K * N, 1e-7, 1e-5);
            if (shift == 0) {
                struct xent_ctx x = {logits, scratch, target, K, N, scale};
                fd_grad(ref, xent_loss, &x, logits, K * N, 1e-2f);
                check("xent dlogits vs finite differences", dl, ref, K * N, 1e-5, 1e-2);
            }
        }
}

static void test_init(void) {
    enum { n = 10000 };
    static float w[n], w2[n];
    const float bound = 0.25f;
    dm_rng r;
    rng_init(&r, 7, DM_STREAM_INIT, 3, 0);
    init_uniform(w, n, bound, &r);
    rng_init(&r, 7, DM_STREAM_INIT, 3, 0);
    init_uniform(w2, n, bound, &r);
    EXPECT(memcmp(w, w2, sizeof w) == 0, "init_uniform not deterministic");
    double lo = 1e9, hi = -1e9, m = 0.0, v = 0.0;
    int in_range = 1;
    for (int i = 0; i < n; i++) {
        in_range &= w[i] >= -bound && w[i] < bound;
        lo = w[i] < lo ? w[i] : lo, hi = w[i] > hi ? w[i] : hi;
        m += w[i], v += (double)w[i] * w[i];
    }
    m /= n, v = v / n - m * m;
    EXPECT(in_range, "init_uniform: value outside [-bound, bound)");
    EXPECT(lo < -0.99 * bound && hi > 0.99 * bound,
           "init_uniform range [%g, %g]", lo, hi);
    EXPECT(fabs(m) < 0.01, "init_uniform mean %g (sd of the mean 1.4e-3)", m);
    EXPECT_CLOSE(v, bound * bound / 3.0, 0.0, 0.05, "init_uniform variance");
}

int main(void) {
    rng_init(&trng, 20240601, DM_STREAM_EVAL, 99, 0);
    test_conv();
#ifdef DM_HAVE_ONEDNN
    /* the convolutions again with their products on oneDNN (fp32) */
    EXPECT(gemm_setup(DM_ENGINE_ONEDNN, DM_PREC_FP32, 1) == DM_OK, "oneDNN fp32 engine");
    test_conv();
    gemm_teardown();
    /* bf16 where the CPU runs it (test_gemm checks the refusal elsewhere) */
    if (gemm_setup(DM_ENGINE_ONEDNN, DM_PREC_BF16, 1) == DM_OK) {
        test_conv_case_bf16((struct conv_case){3, 5, 7, 6, 6, 3, 1, 1, 0});
        test_conv_case_bf16((struct conv_case){3, 5, 7, 7, 6, 3, 2, 1, 0});
        test_conv_case_bf16((struct conv_case){2, 6, 3, 4, 5, 4, 2, 1, 1});
        test_conv_case_bf16((struct conv_case){2, 6, 1, 1, 4, 7, 7, 0, 1});
        long keep = conv_group_floats;
        conv_group_floats = 1; /* one image per group: strided operands */
        test_conv_case_bf16((struct conv_case){3, 5, 7, 6, 6, 3, 1, 1, 0});
        test_conv_case_bf16((struct conv_case){2, 6, 3, 4, 5, 4, 2, 1, 1});
        conv_group_floats = keep;
    } else {
        printf("bf16 convolutions not tested: no bf16 units here\n");
    }
    gemm_teardown();
#endif
    /* both im2col paths for the 'same' convolutions: plane and per row */
    for (int plane = 1; plane >= 0; plane--) {
        im2col_plane_copy = plane;
        test_im2col_naive(2, 3, 7, 6, 3, 1, 1);
        test_im2col_naive(2, 2, 5, 6, 5, 1, 2);
        test_im2col_naive(3, 2, 2, 2, 3, 1, 1);
        test_im2col_naive(2, 2, 1, 1, 3, 1, 1);
        test_im2col_naive(2, 2, 6, 5, 3, 1, 0);
        test_im2col_naive(2, 2, 7, 7, 3, 2, 1);
        test_im2col_naive(1, 2, 4, 3, 3, 1, 2);
    }
    im2col_plane_copy = -1;
    test_im2col_adjoint(2, 3, 7, 6, 3, 1, 1);
    test_im2col_adjoint(2, 3, 7, 7, 3, 2, 1);
    test_im2col_adjoint(1, 2, 14, 14, 4, 2, 1);
    test_im2col_adjoint(2, 2, 7, 7, 7, 7, 0);
    test_bn();
    test_bn_gelu_fused();
    test_bn_running();
    test_gn();
    test_gelu();
    test_gelu_accuracy();
    test_cdf_isa();
    test_avgpool();
    test_linear();
    test_mse();
    test_xent();
    test_init();
    return test_finish("test_layers");
}
