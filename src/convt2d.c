/* convt2d.c: ConvTranspose2d as the mirror of conv2d: one sgemm producing
 * a column matrix over the whole micro-batch, then col2im onto the output.
 *
 * A transposed convolution with (k, s, p) is the adjoint of the conv with the
 * same (k, s, p) that maps the OUTPUT geometry Ho x Wo back to H x W: indeed
 * (Ho + 2p - k)/s + 1 = H exactly for Ho = (H-1)*s - 2p + k. So its forward
 * is that conv's input gradient, and its backward uses that conv's im2col. */
#include "diffmpi/layers.h"

#include "diffmpi/gemm.h"

long convt2d_col_floats(int N, int Cout, int H, int W, int k) {
    return (long)Cout * k * k * N * H * W;
}

/* in [Cin][N][H][W], w [Cin][Cout][k][k], b [Cout] or NULL,
 * out [Cout][N][Ho][Wo] (overwritten), col scratch [Cout*k*k][N*H*W]. */
void convt2d_forward(float *out, const float *in, const float *w,
                     const float *b, float *col, int N, int Cin, int H, int W,
                     int Cout, int k, int s, int p) {
    const int Ho = (H - 1) * s - 2 * p + k, Wo = (W - 1) * s - 2 * p + k;
    const int K = Cout * k * k, P = N * H * W;
    const long plane = (long)N * Ho * Wo;
    /* col = w^T x in. A must be K x Cin but w [Cin][Cout][k][k] is stored
     * Cin x K, hence Trans; B = in (Cin x P), NoTrans; C = col (K x P),
     * beta = 0. */
    dm_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, K, P, Cin, 1.0f, w, K,
                in, P, 0.0f, col, P);
    for (int co = 0; co < Cout; co++) {
        const float bias = b ? b[co] : 0.0f;
        for (long i = 0; i < plane; i++) out[co * plane + i] = bias;
    }
    col2im(out, col, N, Cout, Ho, Wo, k, s, p);
}

/* dout [Cout][N][Ho][Wo]; in, w as in forward.
 * dw [Cin][Cout][k][k], db [Cout] (or NULL) OVERWRITTEN; din [Cin][N][H][W]
 * ADDED (or NULL). col holds im2col(dout), [Cout*k*k][N*H*W]. */
void convt2d_backward(float *din, float *dw, float *db, const float *dout,
                      const float *in, const float *w, float *col, int N,
                      int Cin, int H, int W, int Cout, int k, int s, int p) {
    const int Ho = (H - 1) * s - 2 * p + k, Wo = (W - 1) * s - 2 * p + k;
    const int K = Cout * k * k, P = N * H * W;
    const long plane = (long)N * Ho * Wo;
    im2col(col, dout, N, Cout, Ho, Wo, k, s, p);
    /* dw = in x dcol^T. A = in (Cin x P), NoTrans; B must be P x K but dcol
     * is stored K x P, hence Trans; C = dw (Cin x K), beta = 0. */
    dm_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Cin, K, P, 1.0f, in, P,
                col, P, 0.0f, dw, K);
    for (int co = 0; db && co < Cout; co++) {
        double acc = 0.0;
        for (long i = 0; i < plane; i++) acc += dout[co * plane + i];
        db[co] = (float)acc;
    }
    if (!din) return;
    /* din += w x dcol. A = w (Cin x K), NoTrans; B = dcol (K x P), NoTrans;
     * C = din (Cin x P), beta = 1 because input gradients accumulate. */
    dm_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Cin, P, K, 1.0f, w,
                K, col, P, 1.0f, din, P);
}
