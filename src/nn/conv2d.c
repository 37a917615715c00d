/* conv2d.c: Conv2d as im2col + sgemm, and the im2col/col2im pair that
 * ConvTranspose2d reuses (see convt2d.c).
 *
 * Column matrix layout for the CNHW activation layout: row (c, ki, kj) of
 * col holds, for every output position (n, oh, ow), the input pixel
 * im[c][n][oh*s - p + ki][ow*s - p + kj] (0 where that falls in the
 * padding). col is [C*k*k][N*Ho*Wo], so conv = W[Cout][C*k*k] x col.
 *
 * The layers build col for a group of images at a time (conv_group):
 * about 4 MiB of column matrix, which stays in the last-level cache
 * between im2col writing it and the GEMM reading it, instead of a whole
 * micro-batch's (115 MB for a 3x3 D=128 layer at 28x28 and 32 images)
 * going out to memory and back. The groups depend only on the layer and
 * the micro-batch size, never on the rank count. */
#include "diffmpi/layers.h"

#include "diffmpi/par.h"

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

long conv_group_floats = 1L << 20;

int conv_group(int N, long floats_per_image) {
    long g = conv_group_floats / (floats_per_image > 0 ? floats_per_image : 1);
    if (g < 1) g = 1;
    return g < N ? (int)g : N;
}

/* GCC turns the short copy and zeroing loops below into memcpy/memset
 * calls; for rows of 7-28 floats the calls cost more than the copies
 * (measured: docs/performance-log.md). */
#if defined(__GNUC__) && !defined(__clang__)
#define DM_PLAIN_LOOPS __attribute__((optimize("no-tree-loop-distribute-patterns")))
#else
#define DM_PLAIN_LOOPS
#endif

int im2col_plane_copy = -1;

/* Is the plane copy above the faster one on this CPU? */
static int plane_copy_pays(void) {
    if (im2col_plane_copy >= 0) return im2col_plane_copy;
#if defined(__x86_64__) && defined(__GNUC__)
    return __builtin_cpu_supports("avx512f");
#else
    return 0;
#endif
}

/* f32_channel and bf16_channel: the column rows of one channel. */
#define IM2COL_T float
#define IM2COL_NAME(n) f32_##n
#include "im2col_impl.h"

#define IM2COL_T unsigned short
#define IM2COL_NAME(n) bf16_##n
#include "im2col_impl.h"

/* Images [n0, n1) of im [C][N][H][W] -> col [C*k*k][(n1-n0)*Ho*Wo] of
 * element type t (overwritten); bf16 rounds each channel's planes into its
 * part of stage first. Channels over the rank's threads (par.h). */
static void im2col_copy(void *col, dm_dtype t, unsigned short *stage, const float *im, int N,
                        int n0, int n1, int C, int H, int W, int k, int s, int p) {
    const int g = n1 - n0;
    const long rows = (long)k * k * g * conv_out(H, k, s, p) * conv_out(W, k, s, p);
    const long plane = (long)H * W;
    PAR_FOR(C, C * rows) {
        const int hi = (int)PAR_HI;
        for (int c = (int)PAR_LO; c < hi; c++) {
            const float *im_c = im + ((long)c * N + n0) * plane;
            if (t == DM_T_BF16) {
                unsigned short *st = stage + (long)c * g * plane;
                dm_round_bf16(st, im_c, g * plane);
                bf16_channel((unsigned short *)col + c * rows, st, g, H, W, k, s, p);
            } else {
                f32_channel((float *)col + c * rows, im_c, g, H, W, k, s, p);
            }
        }
    }
}

/* The adjoint of im2col_copy (float columns): col [C*k*k][(n1-n0)*Ho*Wo] is ADDED into
 * images [n0, n1) of im [C][N][H][W];
 * taps that fall in the padding are dropped. Channels over the rank's
 * threads: each channel's sums stay in its own planes. */
static void col2im_add(float *im, const float *col, int N, int n0, int n1,
                       int C, int H, int W, int k, int s, int p) {
    const int Ho = conv_out(H, k, s, p), Wo = conv_out(W, k, s, p);
    const long P = (long)(n1 - n0) * Ho * Wo;
    PAR_FOR(C, C * k * k * P)
    for (int c = (int)PAR_LO; c < (int)PAR_HI; c++)
        for (int ki = 0; ki < k; ki++)
            for (int kj = 0; kj < k; kj++) {
                const float *row = col + ((long)(c * k + ki) * k + kj) * P;
                int lo, hi;
                valid_cols(&lo, &hi, W, Wo, kj, s, p);
                for (int n = n0; n < n1; n++)
                    for (int oh = 0; oh < Ho; oh++) {
                        const int ih = oh * s - p + ki;
                        if (ih < 0 || ih >= H) continue;
                        const float *src = row + ((long)(n - n0) * Ho + oh) * Wo;
                        float *dst = im + (((long)c * N + n) * H + ih) * W;
                        for (int ow = lo; ow < hi; ow++)
                            dst[ow * s - p + kj] += src[ow];
                    }
            }
}

/* Public entry points, timed as the im2col phase by `diffmpi bench`. */
void im2col_part_typed(void *col, dm_dtype t, unsigned short *stage, const float *im, int N,
                       int n0, int n1, int C, int H, int W, int k, int s, int p) {
    double t0 = prof_start();
    im2col_copy(col, t, stage, im, N, n0, n1, C, H, W, k, s, p);
    prof_add(PROF_IM2COL, t0);
}

void im2col_part(float *col, const float *im, int N, int n0, int n1, int C,
                 int H, int W, int k, int s, int p) {
    im2col_part_typed(col, DM_T_F32, NULL, im, N, n0, n1, C, H, W, k, s, p);
}

long im2col_stage_floats(int C, int g, int H, int W) {
    return ((long)C * g * H * W + 1) / 2;
}

void col2im_part(float *im, const float *col, int N, int n0, int n1, int C,
                 int H, int W, int k, int s, int p) {
    double t0 = prof_start();
    col2im_add(im, col, N, n0, n1, C, H, W, k, s, p);
    prof_add(PROF_IM2COL, t0);
}

void im2col(float *col, const float *im, int N, int C, int H, int W, int k,
            int s, int p) {
    im2col_part(col, im, N, 0, N, C, H, W, k, s, p);
}

void col2im(float *im, const float *col, int N, int C, int H, int W, int k,
            int s, int p) {
    col2im_part(im, col, N, 0, N, C, H, W, k, s, p);
}

/* Can the input gradient be computed as a convolution (see below)? */
static int din_as_conv(int k, int s, int p) {
    return s == 1 && p <= k - 1;
}

/* The scratch: [column matrices (and the flipped weights of the input
 * gradient)][bf16 staging of the group's planes]; stage_at is where the
 * staging starts. */
static long stage_at(int N, int Cin, int H, int W, int Cout, int k, int s, int p) {
    const long K = (long)Cin * k * k, HWo = (long)conv_out(H, k, s, p) * conv_out(W, k, s, p);
    long need = K * conv_group(N, K * HWo) * HWo;
    if (din_as_conv(k, s, p)) {
        const long Kd = (long)Cout * k * k, HW = (long)H * W;
        long alt = Kd * conv_group(N, Kd * HW) * HW + (long)Cin * Cout * k * k;
        if (alt > need) need = alt;
    }
    return need;
}

long conv2d_scratch_floats(int N, int Cin, int H, int W, int Cout, int k,
                           int s, int p) {
    const int Ho = conv_out(H, k, s, p), Wo = conv_out(W, k, s, p);
    long stage = im2col_stage_floats(Cin, conv_group(N, (long)Cin * k * k * Ho * Wo), H, W);
    if (din_as_conv(k, s, p)) {
        long d = im2col_stage_floats(Cout, conv_group(N, (long)Cout * k * k * H * W), Ho, Wo);
        if (d > stage) stage = d;
    }
    return stage_at(N, Cin, H, W, Cout, k, s, p) + stage;
}

/* in [Cin][N][H][W], w [Cout][Cin][k][k], b [Cout] or NULL,
 * out [Cout][N][Ho][Wo] (overwritten), col scratch (conv2d_scratch_floats). */
void conv2d_forward(float *out, const float *in, const float *w, const float *b,
                    float *col, int N, int Cin, int H, int W, int Cout, int k,
                    int s, int p) {
    const int K = Cin * k * k, HWo = conv_out(H, k, s, p) * conv_out(W, k, s, p);
    const long P = (long)N * HWo;
    const int g = conv_group(N, (long)K * HWo);
    const dm_dtype ct = gemm_operand_type(); /* col in what the product takes */
    unsigned short *stage = (unsigned short *)(col + stage_at(N, Cin, H, W, Cout, k, s, p));
    for (int n0 = 0; n0 < N; n0 += g) {
        const int n1 = N - n0 < g ? N : n0 + g, Pc = (n1 - n0) * HWo;
        im2col_part_typed(col, ct, stage, in, N, n0, n1, Cin, H, W, k, s, p);
        /* A = w (Cout x K), B = col (K x Pc), C = the group's columns of out
         * (Cout x Pc, row stride P). No transposes: w's [Cout][Cin][k][k] is
         * already Cout x K row-major. beta = 0 overwrites out. */
        dm_gemm_typed(CblasNoTrans, CblasNoTrans, Cout, Pc, K, w, DM_T_F32, K, col, ct, Pc,
                      0.0f, out + (long)n0 * HWo, (int)P);
    }
    if (b) conv_bias_add(out, b, Cout, P);
}

void conv_bias_add(float *out, const float *b, int C, long plane) {
    PAR_FOR(C, C * plane)
    for (int c = (int)PAR_LO; c < (int)PAR_HI; c++)
        for (long i = 0; i < plane; i++) out[(long)c * plane + i] += b[c];
}

void conv_bias_grad(float *db, const float *dout, int C, long plane) {
    PAR_FOR(C, C * plane)
    for (int c = (int)PAR_LO; c < (int)PAR_HI; c++) {
        double acc = 0.0;
        for (long i = 0; i < plane; i++) acc += dout[(long)c * plane + i];
        db[c] = (float)acc;
    }
}

/* dout [Cout][N][Ho][Wo]; in, w as in forward.
 * dw [Cout][Cin][k][k], db [Cout] (or NULL) OVERWRITTEN; din [Cin][N][H][W]
 * ADDED (or NULL). col (conv2d_scratch_floats) first holds im2col(in), then
 * the input gradient's operands. */
void conv2d_backward(float *din, float *dw, float *db, const float *dout,
                     const float *in, const float *w, float *col, int N,
                     int Cin, int H, int W, int Cout, int k, int s, int p) {
    const int Ho = conv_out(H, k, s, p), Wo = conv_out(W, k, s, p);
    const int K = Cin * k * k, HWo = Ho * Wo, HW = H * W;
    const long P = (long)N * HWo, Pin = (long)N * HW;
    const int g = conv_group(N, (long)K * HWo);
    const dm_dtype ct = gemm_operand_type();
    unsigned short *stage = (unsigned short *)(col + stage_at(N, Cin, H, W, Cout, k, s, p));
    for (int n0 = 0; n0 < N; n0 += g) {
        const int n1 = N - n0 < g ? N : n0 + g, Pc = (n1 - n0) * HWo;
        im2col_part_typed(col, ct, stage, in, N, n0, n1, Cin, H, W, k, s, p);
        /* dw (+)= dout x col^T over the group. A = the group's columns of
         * dout (Cout x Pc, row stride P), NoTrans; B must be Pc x K but col
         * is stored K x Pc, hence Trans; C = dw (Cout x K); beta = 0 for the
         * first group, then 1. */
        dm_gemm_typed(CblasNoTrans, CblasTrans, Cout, K, Pc, dout + (long)n0 * HWo, DM_T_F32,
                      (int)P, col, ct, Pc, n0 ? 1.0f : 0.0f, dw, K);
    }
    if (db) conv_bias_grad(db, dout, Cout, P);
    if (!din) return;
    if (din_as_conv(k, s, p)) {
        /* With stride 1 the input gradient is itself a convolution: dout
         * padded by k-1-p, correlated with w flipped in both spatial axes
         * and transposed to [Cin][Cout][k][k]. That is im2col(dout) and one
         * GEMM with inner dimension Cout*k*k accumulating into din, instead
         * of a GEMM with inner dimension Cout writing a Cin*k*k-row column
         * matrix and a col2im scatter-add of it. */
        const int Kd = Cout * k * k, gd = conv_group(N, (long)Kd * HW);
        float *wf = col + (long)Kd * gd * HW;
        for (int ci = 0; ci < Cin; ci++)
            for (int co = 0; co < Cout; co++)
                for (int a = 0; a < k * k; a++)
                    wf[((long)ci * Cout + co) * k * k + a] =
                        w[((long)co * Cin + ci) * k * k + (k * k - 1 - a)];
        for (int n0 = 0; n0 < N; n0 += gd) {
            const int n1 = N - n0 < gd ? N : n0 + gd, Pc = (n1 - n0) * HW;
            im2col_part_typed(col, ct, stage, dout, N, n0, n1, Cout, Ho, Wo, k, 1, k - 1 - p);
            /* din += wf x col: A = wf (Cin x Kd), B = col (Kd x Pc), C = the
             * group's columns of din (row stride Pin), beta = 1 because
             * input gradients accumulate. */
            dm_gemm_typed(CblasNoTrans, CblasNoTrans, Cin, Pc, Kd, wf, DM_T_F32, Kd, col, ct, Pc,
                          1.0f, din + (long)n0 * HW, (int)Pin);
        }
        return;
    }
    for (int n0 = 0; n0 < N; n0 += g) {
        const int n1 = N - n0 < g ? N : n0 + g, Pc = (n1 - n0) * HWo;
        /* dcol = w^T x dout over the group. A must be K x Cout but w is
         * stored Cout x K, hence Trans; B = the group's columns of dout
         * (Cout x Pc, row stride P); C = col (K x Pc), beta = 0. */
        dm_gemm(CblasTrans, CblasNoTrans, K, Pc, Cout, w, K, dout + (long)n0 * HWo, (int)P,
                0.0f, col, Pc);
        col2im_part(din, col, N, n0, n1, Cin, H, W, k, s, p);
    }
}
