/* linear.c: torch.nn.Linear on row-major [N][features] activations (the
 * embedding MLPs), as sgemm calls. */
#include "diffmpi/layers.h"

#include "diffmpi/gemm.h"

/* in [N][Fin], w [Fout][Fin], b [Fout] or NULL; out [N][Fout] OVERWRITTEN. */
void linear_forward(float *out, const float *in, const float *w, const float *b,
                    int N, int Fin, int Fout) {
    for (int n = 0; n < N; n++)
        for (int o = 0; o < Fout; o++)
            out[(long)n * Fout + o] = b ? b[o] : 0.0f;
    /* out += in x w^T. A = in (N x Fin), NoTrans; B must be Fin x Fout but w
     * is stored Fout x Fin, hence Trans; C = out (N x Fout), beta = 1 to keep
     * the bias rows written above. */
    dm_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, Fout, Fin, 1.0f, in,
                Fin, w, Fin, 1.0f, out, Fout);
}

/* dout [N][Fout]; in, w as in forward. dw [Fout][Fin], db [Fout] (or NULL)
 * OVERWRITTEN; din [N][Fin] ADDED (or NULL). */
void linear_backward(float *din, float *dw, float *db, const float *dout,
                     const float *in, const float *w, int N, int Fin,
                     int Fout) {
    /* dw = dout^T x in. A must be Fout x N but dout is stored N x Fout, hence
     * Trans; B = in (N x Fin), NoTrans; C = dw (Fout x Fin), beta = 0. */
    dm_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, Fout, Fin, N, 1.0f,
                dout, Fout, in, Fin, 0.0f, dw, Fin);
    for (int o = 0; db && o < Fout; o++) {
        double acc = 0.0;
        for (int n = 0; n < N; n++) acc += dout[(long)n * Fout + o];
        db[o] = (float)acc;
    }
    if (!din) return;
    /* din += dout x w. A = dout (N x Fout), NoTrans; B = w (Fout x Fin),
     * NoTrans; C = din (N x Fin), beta = 1 because input gradients
     * accumulate. */
    dm_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, Fin, Fout, 1.0f,
                dout, Fout, w, Fin, 1.0f, din, Fin);
}
