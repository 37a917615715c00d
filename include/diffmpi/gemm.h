/* gemm.h: the matrix products of the network.
 *
 * The convolutions' products go through dm_gemm, which runs them on the
 * kernel engine and in the precision chosen once per process with
 * gemm_setup (config keys `engine` and `precision`). Each engine is a row of
 * the table in gemm.c:
 *
 *   openblas  cblas_sgemm; fp32 only.
 *   onednn    oneDNN's matmul primitive (the library PyTorch runs on CPUs),
 *             which picks its kernels from what the CPU has (AVX2, AVX-512,
 *             AVX512-BF16, AMX) whatever OPENBLAS_CORETYPE says. In bf16
 *             the two operands are rounded to bfloat16 and the products
 *             accumulate in fp32 into an fp32 result.
 *
 * Both are single-threaded per rank unless `threads` says otherwise, and
 * a product of a given shape always runs the same kernel, so results are
 * deterministic and independent of the rank count.
 *
 * The small Linear layers of the embeddings use dm_sgemm: fp32 OpenBLAS
 * whatever the engine (they are a fraction of a percent of the work).
 *
 * Both are timed as the GEMM phase of `diffmpi bench` (prof.h); rounding
 * operands to bf16 is its own phase.
 */
#ifndef DIFFMPI_GEMM_H
#define DIFFMPI_GEMM_H

#include <cblas.h>
#include <stddef.h>

#include "diffmpi/common.h"
#include "diffmpi/engine.h"
#include "diffmpi/prof.h"

/* Choose the engine and precision of this process (auto: oneDNN where the
 * build has it, else OpenBLAS). Refuses with one line on stderr and
 * DM_EUSAGE what cannot run here: bf16 on a CPU without AVX512-BF16 or AMX,
 * or on OpenBLAS; onednn in a build without it. Calling it again replaces
 * the choice. threads: OpenBLAS's and oneDNN's threads per rank. */
dm_status gemm_setup(dm_engine e, dm_precision p, int threads);
/* Release the engine's primitives and scratch (gemm_setup may follow). */
void gemm_teardown(void);
/* What runs, for progress lines and bench: e.g. "onednn bf16
 * (avx512_core_bf16)" or "openblas fp32 (SkylakeX)". */
const char *gemm_describe(void);
dm_engine gemm_engine_now(void);
dm_precision gemm_precision_now(void);
/* Switch the precision of the engine set up (fp32 always; bf16 where the
 * engine can) and return the one before: a bf16 run's judge runs in fp32,
 * so that its scores are those `diffmpi score` gives. */
dm_precision gemm_use_precision(dm_precision p);
/* precision = auto: bf16 where engine e can run it on this CPU (AVX512-BF16
 * or AMX through oneDNN) and a bf16 product measured here is at least 1.1x
 * as fast as an fp32 one, else fp32; other values unchanged. The first
 * call with auto runs that measurement (0.1-0.5 s; it tears down the
 * engine set up, so gemm_setup must follow) and keeps the answer for the
 * process: several ranks decide on one and broadcast. gemm_setup resolves
 * auto itself; the trainer resolves it first, so that its outputs record
 * what ran. */
dm_precision gemm_resolve_precision(dm_engine e, dm_precision p);
/* What the measurement found ("precision = auto chose fp32: a bf16 product
 * ran 0.71x as fast as fp32 on avx512_core_bf16"), NULL before it ran. */
const char *gemm_auto_note(void);
/* Can engine e run precision p on this CPU (auto: always)? */
int gemm_can_run(dm_engine e, dm_precision p);

/* Row-major C (M x N, row stride ldc) = op(A) op(B) for beta == 0, or
 * C += op(A) op(B) for beta == 1 (no other beta); op(A) is M x K, op(B)
 * K x N, ta/tb CblasTrans where the operand is stored transposed. */
void dm_gemm(enum CBLAS_TRANSPOSE ta, enum CBLAS_TRANSPOSE tb, int M, int N, int K,
             const float *A, int lda, const float *B, int ldb, float beta, float *C,
             int ldc);

/* The type a layer should build a large operand in (a column matrix) so
 * that the engine need not convert it: DM_T_BF16 in bf16 precision. */
dm_dtype gemm_operand_type(void);
/* dm_gemm with operands of either type (at, bt); a float operand is rounded
 * to bf16 in bf16 precision, a bf16 operand needs bf16 precision. */
void dm_gemm_typed(enum CBLAS_TRANSPOSE ta, enum CBLAS_TRANSPOSE tb, int M, int N, int K,
                   const void *A, dm_dtype at, int lda, const void *B, dm_dtype bt, int ldb,
                   float beta, float *C, int ldc);

/* In bf16, an fp32 operand of more elements than this is rounded (into
 * scratch of 2 bytes per element) and multiplied in slices along M (for A)
 * or N (for B), never along K, so that the scratch stays small. */
#define DM_BF16_ROUND_MAX (1L << 20)

/* bfloat16 bits of f, rounded to nearest even (NaN stays NaN). */
static inline unsigned short dm_bf16_bits(float f) {
    union { float f; unsigned u; } v = {f};
    if ((v.u & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((v.u >> 16) | 0x40u);
    v.u += 0x7fffu + ((v.u >> 16) & 1u);
    return (unsigned short)(v.u >> 16);
}

/* dst[i] = dm_bf16_bits(src[i]) for n elements (vectorised). */
void dm_round_bf16(unsigned short *dst, const float *src, long n);

/* fp32 cblas_sgemm, for the Linear layers. */
static inline void dm_sgemm(enum CBLAS_ORDER order, enum CBLAS_TRANSPOSE ta,
                            enum CBLAS_TRANSPOSE tb, int M, int N, int K,
                            float alpha, const float *A, int lda, const float *B,
                            int ldb, float beta, float *C, int ldc) {
    double t0 = prof_start();
    cblas_sgemm(order, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    prof_add(PROF_GEMM, t0);
}

#endif
