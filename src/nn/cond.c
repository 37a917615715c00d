/* cond.c: FCBlock and the broadcast time/class modulation (see cond.h). */
#include "diffmpi/cond.h"

#include <string.h>

#include "diffmpi/layers.h"

#include "diffmpi/par.h"

void fcblock_forward(float *e, float *h, float *g, const float *in,
                     const float *w1, const float *b1, const float *w2,
                     const float *b2, int N, int Fin, int Fout) {
    linear_forward(h, in, w1, b1, N, Fin, Fout);
    gelu_forward(g, h, (long)N * Fout);
    linear_forward(e, g, w2, b2, N, Fout, Fout);
}

void fcblock_backward(float *dw1, float *db1, float *dw2, float *db2,
                      float *dg, float *dh, const float *de, const float *in,
                      const float *h, const float *g, const float *w2, int N,
                      int Fin, int Fout) {
    memset(dg, 0, sizeof(float) * (size_t)N * (size_t)Fout);
    memset(dh, 0, sizeof(float) * (size_t)N * (size_t)Fout);
    linear_backward(dg, dw2, db2, de, g, w2, N, Fout, Fout);
    gelu_backward(dh, dg, h, (long)N * Fout);
    linear_backward(NULL, dw1, db1, dh, in, NULL, N, Fin, Fout);
}

void cond_forward(float *y, const float *u, const float *et, const float *ec,
                  cond_mix mode, int C, int N, int HW) {
    PAR_FOR(C, (long)C * N * HW)
    for (int c = (int)PAR_LO; c < (int)PAR_HI; c++)
        for (int n = 0; n < N; n++) {
            const float *src = u + ((long)c * N + n) * HW;
            float *dst = y + ((long)c * N + n) * HW;
            float t = et[(long)n * C + c];
            float s = mode == COND_MIX_FILM ? ec[(long)n * C + c] : 1.0f;
            if (mode == COND_MIX_MUL)
                for (int p = 0; p < HW; p++) dst[p] = src[p] * t;
            else
                for (int p = 0; p < HW; p++) dst[p] = s * src[p] + t;
        }
}

void cond_backward(float *du, float *det, float *dec, const float *dy,
                   const float *u, const float *et, const float *ec,
                   cond_mix mode, int C, int N, int HW) {
    PAR_FOR(C, (long)C * N * HW)
    for (int c = (int)PAR_LO; c < (int)PAR_HI; c++)
        for (int n = 0; n < N; n++) {
            const float *g = dy + ((long)c * N + n) * HW;
            const float *x = u + ((long)c * N + n) * HW;
            /* dy/du is the multiplier; dy/det is 1 (ADD, FILM) or u (MUL);
             * dy/dec is u (FILM). */
            float mul = mode == COND_MIX_MUL ? et[(long)n * C + c]
                        : mode == COND_MIX_FILM ? ec[(long)n * C + c] : 1.0f;
            double sg = 0, sgx = 0;
            for (int p = 0; p < HW; p++) {
                sg += g[p];
                sgx += (double)g[p] * x[p];
            }
            if (du) {
                float *d = du + ((long)c * N + n) * HW;
                for (int p = 0; p < HW; p++) d[p] += mul * g[p];
            }
            det[(long)n * C + c] = (float)(mode == COND_MIX_MUL ? sgx : sg);
            if (mode == COND_MIX_FILM) dec[(long)n * C + c] = (float)sgx;
        }
}

const char *cond_mix_name(int m) {
    static const char *const names[] = {"none", "add", "mul", "film"};
    return m >= 0 && m < 4 ? names[m] : NULL;
}
