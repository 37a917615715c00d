/* gemm.c: the engine table behind dm_gemm (see gemm.h).
 *
 * A row is an engine: which precisions it can run here (and, if not, the
 * line that says why), its setup and teardown, the product itself, and the
 * kernel family it runs for gemm_describe. OpenBLAS is the row below;
 * oneDNN's is in gemm_onednn.c. */
#include "diffmpi/gemm.h"

#include <stdio.h>
#include <string.h>

#include "diffmpi/layers.h" /* DM_VECTOR_CLONES */
#include "gemm_engine.h"

/* ---- OpenBLAS ---------------------------------------------------------- */

static int openblas_supports(dm_precision p, char *why, size_t size) {
    if (p == DM_FP32) return 1;
    snprintf(why, size, "precision = bf16 needs engine = onednn (OpenBLAS runs fp32 only)");
    return 0;
}

static dm_status openblas_setup(dm_precision p, int threads) {
    (void)p;
    openblas_set_num_threads(threads);
    return DM_OK;
}

static void openblas_teardown(void) {}

static void openblas_gemm(enum CBLAS_TRANSPOSE ta, enum CBLAS_TRANSPOSE tb, int M, int N,
                          int K, const void *A, dm_dtype at, int lda, const void *B,
                          dm_dtype bt, int ldb, float beta, float *C, int ldc) {
    DM_CHECK(at == DM_T_F32 && bt == DM_T_F32, "openblas: bf16 operand");
    double t0 = prof_start();
    cblas_sgemm(CblasRowMajor, ta, tb, M, N, K, 1.0f, A, lda, B, ldb, beta, C, ldc);
    prof_add(PROF_GEMM, t0);
}

static const char *openblas_isa(void) { return openblas_get_corename(); }

static const gemm_engine_ops openblas_ops = {
    "openblas", openblas_supports, openblas_setup, openblas_teardown, openblas_gemm,
    openblas_isa, NULL,
};

/* ---- the table ----------------------------------------------------------- */

/* auto: oneDNN where this build has it (and always for bf16, so that the
 * refusal names what is missing), else OpenBLAS. */
static const gemm_engine_ops *engine_row(dm_engine e, dm_precision p) {
    if (e == DM_ENGINE_OPENBLAS) return &openblas_ops;
    if (e == DM_ENGINE_ONEDNN || p == DM_BF16) return &gemm_onednn_ops;
    return gemm_onednn_ops.supports(DM_FP32, NULL, 0) ? &gemm_onednn_ops : &openblas_ops;
}

static struct {
    const gemm_engine_ops *ops;
    dm_engine engine;
    dm_precision prec;
    char text[96];
} now = {&openblas_ops, DM_ENGINE_OPENBLAS, DM_FP32, ""};

const char *gemm_precision_name(int p) {
    static const char *const names[] = {"fp32", "bf16", "auto"};
    return p >= 0 && p < 3 ? names[p] : NULL;
}

dm_precision gemm_resolve_precision(dm_engine e, dm_precision p) {
    if (p != DM_PREC_AUTO) return p;
    const gemm_engine_ops *ops = engine_row(e, DM_BF16);
    return ops->supports(DM_BF16, NULL, 0) ? DM_BF16 : DM_FP32;
}

const char *gemm_engine_name(int e) {
    static const char *const names[] = {"auto", "openblas", "onednn"};
    return e >= 0 && e < 3 ? names[e] : NULL;
}

dm_status gemm_setup(dm_engine e, dm_precision p, int threads) {
    p = gemm_resolve_precision(e, p);
    const gemm_engine_ops *ops = engine_row(e, p);
    char why[256] = "";
    if (!ops->supports(p, why, sizeof why)) {
        dm_error("%s", why);
        return DM_EUSAGE;
    }
    gemm_teardown();
    DM_TRY(ops->setup(p, threads > 0 ? threads : 1));
    now.ops = ops;
    now.engine = ops == &openblas_ops ? DM_ENGINE_OPENBLAS : DM_ENGINE_ONEDNN;
    now.prec = p;
    snprintf(now.text, sizeof now.text, "%s %s (%s)", ops->name, gemm_precision_name(p),
             ops->isa());
    return DM_OK;
}

void gemm_teardown(void) {
    if (now.ops) now.ops->teardown();
    now.ops = &openblas_ops;
    now.engine = DM_ENGINE_OPENBLAS;
    now.prec = DM_FP32;
    now.text[0] = '\0';
}

const char *gemm_describe(void) {
    if (!now.text[0])
        snprintf(now.text, sizeof now.text, "openblas fp32 (%s)", openblas_isa());
    return now.text;
}

dm_precision gemm_use_precision(dm_precision p) {
    dm_precision old = now.prec;
    if (p == old) return old;
    DM_CHECK(p == DM_FP32 || now.ops->supports(p, NULL, 0),
             "gemm_use_precision: %s cannot run %s", now.ops->name, gemm_precision_name(p));
    now.prec = p;
    if (now.ops->use) now.ops->use(p);
    return old;
}

dm_engine gemm_engine_now(void) { return now.engine; }
dm_precision gemm_precision_now(void) { return now.prec; }

DM_VECTOR_CLONES
void dm_round_bf16(unsigned short *restrict dst, const float *restrict src, long n) {
    for (long i = 0; i < n; i++) dst[i] = dm_bf16_bits(src[i]);
}

dm_dtype gemm_operand_type(void) { return now.prec == DM_BF16 ? DM_T_BF16 : DM_T_F32; }

void dm_gemm_typed(enum CBLAS_TRANSPOSE ta, enum CBLAS_TRANSPOSE tb, int M, int N, int K,
                   const void *A, dm_dtype at, int lda, const void *B, dm_dtype bt, int ldb,
                   float beta, float *C, int ldc) {
    DM_CHECK(beta == 0.0f || beta == 1.0f, "dm_gemm: beta %g is neither 0 nor 1", beta);
    DM_CHECK(now.prec == DM_BF16 || (at == DM_T_F32 && bt == DM_T_F32),
             "dm_gemm: bf16 operand in fp32 precision");
    now.ops->gemm(ta, tb, M, N, K, A, at, lda, B, bt, ldb, beta, C, ldc);
}

void dm_gemm(enum CBLAS_TRANSPOSE ta, enum CBLAS_TRANSPOSE tb, int M, int N, int K,
             const float *A, int lda, const float *B, int ldb, float beta, float *C,
             int ldc) {
    dm_gemm_typed(ta, tb, M, N, K, A, DM_T_F32, lda, B, DM_T_F32, ldb, beta, C, ldc);
}
