/* gemm_engine.h (private to src/nn): one row of the engine table of
 * gemm.c. supports() says whether precision p can run here; when it cannot
 * and why != NULL it writes the one line that says why. */
#ifndef DIFFMPI_GEMM_ENGINE_H
#define DIFFMPI_GEMM_ENGINE_H

#include "diffmpi/gemm.h"

typedef struct {
    const char *name;
    int (*supports)(dm_precision p, char *why, size_t size);
    dm_status (*setup)(dm_precision p, int threads);
    void (*teardown)(void);
    void (*gemm)(enum CBLAS_TRANSPOSE ta, enum CBLAS_TRANSPOSE tb, int M, int N, int K,
                 const void *A, dm_dtype at, int lda, const void *B, dm_dtype bt, int ldb,
                 float beta, float *C, int ldc);
    const char *(*isa)(void); /* the kernel family it runs on this CPU */
    void (*use)(dm_precision p); /* switch the precision after setup (NULL:
                                    fp32 only, nothing to switch) */
} gemm_engine_ops;

extern const gemm_engine_ops gemm_onednn_ops;

#endif
