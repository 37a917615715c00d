/* conv2d.c: Conv2d as im2col + one sgemm over the whole micro-batch, and the
 * im2col/col2im pair that ConvTranspose2d reuses (see convt2d.c).
 *
 * Column matrix layout for the CNHW activation layout: row (c, ki, kj) of
 * col holds, for every output position (n, oh, ow), the input pixel
 * im[c][n][oh*s - p + ki][ow*s - p + kj] (0 where that falls in the
 * padding). col is [C*k*k][N*Ho*Wo], so conv = W[Cout][C*k*k] x col. */
#include "diffmpi/layers.h"

#include "diffmpi/gemm.h"

static int conv_out(int n, int k, int s, int p) {
    return (n + 2 * p - k) / s + 1;
}

/* ceil(a / s) for the range computations below; 0 when a <= 0. */
static int ceil_pos(int a, int s) {
    return a <= 0 ? 0 : (a + s - 1) / s;
}

/* Output columns [*lo, *hi) whose input column ow*s - p + kj lies in
 * [0, W); outside that range the tap reads padding. */
static void valid_cols(int *lo, int *hi, int W, int Wo, int kj, int s, int p) {
    *lo = ceil_pos(p - kj, s);
    *hi = ceil_pos(W + p - kj, s);
    if (*lo > Wo) *lo = Wo;
    if (*hi > Wo) *hi = Wo;
    if (*hi < *lo) *hi = *lo;
}

long conv2d_col_floats(int N, int Cin, int H, int W, int k, int s, int p) {
    return (long)Cin * k * k * N * conv_out(H, k, s, p) * conv_out(W, k, s, p);
}

/* GCC turns the short copy and zeroing loops below into memcpy/memset
 * calls; for rows of 7-28 floats the calls cost more than the copies
 * (im2col of a 3x3 D=128 layer at 28x28, micro-batch 32: 9.0 ms with the
 * calls, 5.9 ms with plain loops). */
#if defined(__GNUC__) && !defined(__clang__)
#define DM_PLAIN_LOOPS __attribute__((optimize("no-tree-loop-distribute-patterns")))
#else
#define DM_PLAIN_LOOPS
#endif

/* im [C][N][H][W] -> col [C*k*k][N*Ho*Wo] (overwritten). */
DM_PLAIN_LOOPS
static void im2col_copy(float *restrict col, const float *restrict im, int N,
                        int C, int H, int W, int k, int s, int p) {
    const int Ho = conv_out(H, k, s, p), Wo = conv_out(W, k, s, p);
    const long P = (long)N * Ho * Wo;
    for (int c = 0; c < C; c++)
        for (int ki = 0; ki < k; ki++)
            for (int kj = 0; kj < k; kj++) {
                float *row = col + ((long)(c * k + ki) * k + kj) * P;
                int lo, hi;
                valid_cols(&lo, &hi, W, Wo, kj, s, p);
                for (int n = 0; n < N; n++)
                    for (int oh = 0; oh < Ho; oh++) {
                        float *restrict dst = row + ((long)n * Ho + oh) * Wo;
                        const int ih = oh * s - p + ki;
                        if (ih < 0 || ih >= H) {
                            for (int ow = 0; ow < Wo; ow++) dst[ow] = 0.0f;
                            continue;
                        }
                        /* src[ow * s + off] is the tap of output column ow. */
                        const float *restrict src =
                            im + (((long)c * N + n) * H + ih) * W;
                        const int off = kj - p;
                        for (int ow = 0; ow < lo; ow++) dst[ow] = 0.0f;
                        if (s == 1)
                            for (int ow = lo; ow < hi; ow++) dst[ow] = src[ow + off];
                        else
                            for (int ow = lo; ow < hi; ow++) dst[ow] = src[ow * s + off];
                        for (int ow = hi; ow < Wo; ow++) dst[ow] = 0.0f;
                    }
            }
}

/* The adjoint of im2col: col [C*k*k][N*Ho*Wo] is ADDED into im [C][N][H][W];
 * taps that fall in the padding are dropped. */
static void col2im_add(float *im, const float *col, int N, int C, int H,
                       int W, int k, int s, int p) {
    const int Ho = conv_out(H, k, s, p), Wo = conv_out(W, k, s, p);
    const long P = (long)N * Ho * Wo;
    for (int c = 0; c < C; c++)
        for (int ki = 0; ki < k; ki++)
            for (int kj = 0; kj < k; kj++) {
                const float *row = col + ((long)(c * k + ki) * k + kj) * P;
                int lo, hi;
                valid_cols(&lo, &hi, W, Wo, kj, s, p);
                for (int n = 0; n < N; n++)
                    for (int oh = 0; oh < Ho; oh++) {
                        const int ih = oh * s - p + ki;
                        if (ih < 0 || ih >= H) continue;
                        const float *src = row + ((long)n * Ho + oh) * Wo;
                        float *dst = im + (((long)c * N + n) * H + ih) * W;
                        for (int ow = lo; ow < hi; ow++)
                            dst[ow * s - p + kj] += src[ow];
                    }
            }
}

/* Public entry points, timed as the im2col phase by `diffmpi bench`. */
void im2col(float *col, const float *im, int N, int C, int H, int W, int k,
            int s, int p) {
    double t0 = prof_start();
    im2col_copy(col, im, N, C, H, W, k, s, p);
    prof_add(PROF_IM2COL, t0);
}

void col2im(float *im, const float *col, int N, int C, int H, int W, int k,
            int s, int p) {
    double t0 = prof_start();
    col2im_add(im, col, N, C, H, W, k, s, p);
    prof_add(PROF_IM2COL, t0);
}

/* in [Cin][N][H][W], w [Cout][Cin][k][k], b [Cout] or NULL,
 * out [Cout][N][Ho][Wo] (overwritten), col scratch [Cin*k*k][N*Ho*Wo]. */
void conv2d_forward(float *out, const float *in, const float *w, const float *b,
                    float *col, int N, int Cin, int H, int W, int Cout, int k,
                    int s, int p) {
    const int K = Cin * k * k;
    const int P = N * conv_out(H, k, s, p) * conv_out(W, k, s, p);
    im2col(col, in, N, Cin, H, W, k, s, p);
    /* A = w (Cout x K), B = col (K x P), C = out (Cout x P). No transposes:
     * w's [Cout][Cin][k][k] is already Cout x K row-major and col is built
     * K x P. beta = 0 overwrites out. */
    dm_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Cout, P, K, 1.0f, w,
                K, col, P, 0.0f, out, P);
    if (!b) return;
    for (int co = 0; co < Cout; co++)
        for (long i = 0; i < P; i++) out[(long)co * P + i] += b[co];
}

/* Can the input gradient be computed as a convolution (see below)? */
static int din_as_conv(int k, int s, int p) {
    return s == 1 && p <= k - 1;
}

long conv2d_scratch_floats(int N, int Cin, int H, int W, int Cout, int k,
                           int s, int p) {
    long need = conv2d_col_floats(N, Cin, H, W, k, s, p);
    if (din_as_conv(k, s, p)) {
        long alt = (long)Cout * k * k * N * H * W + (long)Cin * Cout * k * k;
        if (alt > need) need = alt;
    }
    return need;
}

/* dout [Cout][N][Ho][Wo]; in, w as in forward.
 * dw [Cout][Cin][k][k], db [Cout] (or NULL) OVERWRITTEN; din [Cin][N][H][W]
 * ADDED (or NULL). col (conv2d_scratch_floats) first holds im2col(in), then
 * the input gradient's operands. */
void conv2d_backward(float *din, float *dw, float *db, const float *dout,
                     const float *in, const float *w, float *col, int N,
                     int Cin, int H, int W, int Cout, int k, int s, int p) {
    const int Ho = conv_out(H, k, s, p), Wo = conv_out(W, k, s, p);
    const int K = Cin * k * k;
    const int P = N * Ho * Wo;
    im2col(col, in, N, Cin, H, W, k, s, p);
    /* dw = dout x col^T. A = dout (Cout x P), NoTrans; B must be P x K but
     * col is stored K x P, hence Trans; C = dw (Cout x K), beta = 0. */
    dm_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Cout, K, P, 1.0f, dout,
                P, col, P, 0.0f, dw, K);
    for (int co = 0; db && co < Cout; co++) {
        double acc = 0.0;
        for (long i = 0; i < P; i++) acc += dout[(long)co * P + i];
        db[co] = (float)acc;
    }
    if (!din) return;
    if (din_as_conv(k, s, p)) {
        /* With stride 1 the input gradient is itself a convolution: dout
         * padded by k-1-p, correlated with w flipped in both spatial axes
         * and transposed to [Cin][Cout][k][k]. That is im2col(dout) and one
         * GEMM with inner dimension Cout*k*k accumulating into din, instead
         * of a GEMM with inner dimension Cout writing a Cin*k*k-row column
         * matrix and a col2im scatter-add of it. */
        const int Kd = Cout * k * k, Pin = N * H * W;
        float *wf = col + (long)Kd * Pin;
        for (int ci = 0; ci < Cin; ci++)
            for (int co = 0; co < Cout; co++)
                for (int a = 0; a < k * k; a++)
                    wf[((long)ci * Cout + co) * k * k + a] =
                        w[((long)co * Cin + ci) * k * k + (k * k - 1 - a)];
        im2col(col, dout, N, Cout, Ho, Wo, k, 1, k - 1 - p);
        /* din += wf x col: A = wf (Cin x Kd), B = col (Kd x Pin), beta = 1
         * because input gradients accumulate. */
        dm_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Cin, Pin, Kd, 1.0f,
                 wf, Kd, col, Pin, 1.0f, din, Pin);
        return;
    }
    /* dcol = w^T x dout. A must be K x Cout but w is stored Cout x K, hence
     * Trans; B = dout (Cout x P), NoTrans; C = col (K x P), beta = 0: the
     * im2col data is no longer needed. */
    dm_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, K, P, Cout, 1.0f, w, K,
                dout, P, 0.0f, col, P);
    col2im(din, col, N, Cin, H, W, k, s, p);
}
