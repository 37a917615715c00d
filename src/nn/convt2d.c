/* convt2d.c: ConvTranspose2d as the mirror of conv2d: an sgemm producing
 * a column matrix for a group of images (conv_group), then col2im onto the
 * output.
 *
 * A transposed convolution with (k, s, p) is the adjoint of the conv with the
 * same (k, s, p) that maps the OUTPUT geometry Ho x Wo back to H x W: indeed
 * (Ho + 2p - k)/s + 1 = H exactly for Ho = (H-1)*s - 2p + k. So its forward
 * is that conv's input gradient, and its backward uses that conv's im2col. */
#include "diffmpi/layers.h"

#include "diffmpi/gemm.h"

/* The scratch: [column matrix of a group][bf16 staging of the
 * group's planes of dout for im2col]. */
static long stage_at(int N, int Cout, int H, int W, int k) {
    const long K = (long)Cout * k * k, HW = (long)H * W;
    return K * conv_group(N, K * HW) * HW;
}

long convt2d_col_floats(int N, int Cout, int H, int W, int k, int s, int p) {
    const long K = (long)Cout * k * k, HW = (long)H * W;
    const int Ho = (H - 1) * s - 2 * p + k, Wo = (W - 1) * s - 2 * p + k;
    return stage_at(N, Cout, H, W, k) + im2col_stage_floats(Cout, conv_group(N, K * HW), Ho, Wo);
}

/* in [Cin][N][H][W], w [Cin][Cout][k][k], b [Cout] or NULL,
 * out [Cout][N][Ho][Wo] (overwritten), col scratch (convt2d_col_floats):
 * [Cout*k*k][g*H*W] for a group of g images at a time. */
void convt2d_forward(float *out, const float *in, const float *w,
                     const float *b, float *col, int N, int Cin, int H, int W,
                     int Cout, int k, int s, int p) {
    const int Ho = (H - 1) * s - 2 * p + k, Wo = (W - 1) * s - 2 * p + k;
    const int K = Cout * k * k, HW = H * W;
    const long P = (long)N * HW, plane = (long)N * Ho * Wo;
    for (int co = 0; co < Cout; co++) {
        const float bias = b ? b[co] : 0.0f;
        for (long i = 0; i < plane; i++) out[co * plane + i] = bias;
    }
    const int g = conv_group(N, (long)K * HW);
    for (int n0 = 0; n0 < N; n0 += g) {
        const int n1 = N - n0 < g ? N : n0 + g, Pc = (n1 - n0) * HW;
        /* col = w^T x in over the group. A must be K x Cin but w
         * [Cin][Cout][k][k] is stored Cin x K, hence Trans; B = the group's
         * columns of in (Cin x Pc, row stride P); C = col (K x Pc), beta 0. */
        dm_gemm(CblasTrans, CblasNoTrans, K, Pc, Cin, w, K, in + (long)n0 * HW, (int)P, 0.0f,
                col, Pc);
        col2im_part(out, col, N, n0, n1, Cout, Ho, Wo, k, s, p);
    }
}

/* dout [Cout][N][Ho][Wo]; in, w as in forward.
 * dw [Cin][Cout][k][k], db [Cout] (or NULL) OVERWRITTEN; din [Cin][N][H][W]
 * ADDED (or NULL). col holds im2col(dout) of a group of images. */
void convt2d_backward(float *din, float *dw, float *db, const float *dout,
                      const float *in, const float *w, float *col, int N,
                      int Cin, int H, int W, int Cout, int k, int s, int p) {
    const int Ho = (H - 1) * s - 2 * p + k, Wo = (W - 1) * s - 2 * p + k;
    const int K = Cout * k * k, HW = H * W;
    const long P = (long)N * HW, plane = (long)N * Ho * Wo;
    const int g = conv_group(N, (long)K * HW);
    const dm_dtype ct = gemm_operand_type(); /* dcol in what the products take */
    unsigned short *stage = (unsigned short *)(col + stage_at(N, Cout, H, W, k));
    for (int n0 = 0; n0 < N; n0 += g) {
        const int n1 = N - n0 < g ? N : n0 + g, Pc = (n1 - n0) * HW;
        im2col_part_typed(col, ct, stage, dout, N, n0, n1, Cout, Ho, Wo, k, s, p);
        /* dw (+)= in x dcol^T. A = the group's columns of in (Cin x Pc, row
         * stride P), NoTrans; B must be Pc x K but dcol is stored K x Pc,
         * hence Trans; C = dw (Cin x K); beta 0 for the first group. */
        dm_gemm_typed(CblasNoTrans, CblasTrans, Cin, K, Pc, in + (long)n0 * HW, DM_T_F32, (int)P,
                      col, ct, Pc, n0 ? 1.0f : 0.0f, dw, K);
        /* din += w x dcol. A = w (Cin x K), NoTrans; B = dcol (K x Pc);
         * C = the group's columns of din, beta = 1 (gradients accumulate). */
        if (din)
            dm_gemm_typed(CblasNoTrans, CblasNoTrans, Cin, Pc, K, w, DM_T_F32, K, col, ct, Pc,
                          1.0f, din + (long)n0 * HW, (int)P);
    }
    if (db) conv_bias_grad(db, dout, Cout, plane);
}
