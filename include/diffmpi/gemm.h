/* gemm.h: the one entry point to cblas_sgemm (row-major), timed as the
 * GEMM phase when `diffmpi bench` profiles a run (see prof.h). */
#ifndef DIFFMPI_GEMM_H
#define DIFFMPI_GEMM_H

#include <cblas.h>
#include "diffmpi/prof.h"

static inline void dm_sgemm(enum CBLAS_ORDER order, enum CBLAS_TRANSPOSE ta,
                            enum CBLAS_TRANSPOSE tb, int M, int N, int K,
                            float alpha, const float *A, int lda, const float *B,
                            int ldb, float beta, float *C, int ldc) {
    double t0 = prof_start();
    cblas_sgemm(order, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    prof_add(PROF_GEMM, t0);
}

#endif
