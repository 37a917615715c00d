/* gemm.c: the engine table behind dm_gemm (see gemm.h).
 *
 * A row is an engine: which precisions it can run here (and, if not, the
 * line that says why), its setup and teardown, the product itself, and the
 * kernel family it runs for gemm_describe. OpenBLAS is the row below;
 * oneDNN's is in gemm_onednn.c. */
#include "diffmpi/gemm.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "diffmpi/layers.h" /* DM_VECTOR_CLONES */
#include "diffmpi/par.h"
#include "gemm_engine.h"

/* ---- OpenBLAS ---------------------------------------------------------- */

static int openblas_supports(dm_precision p, char *why, size_t size) {
    if (p == DM_PREC_FP32) return 1;
    snprintf(why, size, "precision = bf16 needs engine = onednn (OpenBLAS runs fp32 only)");
    return 0;
}

/* OpenBLAS runs each product on one thread whatever `threads` says: its
 * sums depend on how a product is cut (checked here with OpenBLAS 0.3.21's
 * Haswell kernels: an sgemm computed as column or row strips differs from
 * the whole in the last bits of 3-30 % of its elements), so no cut over
 * threads, OpenBLAS's own or ours, would keep the bits. The rank's other
 * work still runs on its threads (par.h); engine = onednn threads the
 * products too. */
static dm_status openblas_setup(dm_precision p, int threads) {
    (void)p, (void)threads;
    openblas_set_num_threads(1);
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
    if (e == DM_ENGINE_ONEDNN || p == DM_PREC_BF16) return &gemm_onednn_ops;
    return gemm_onednn_ops.supports(DM_PREC_FP32, NULL, 0) ? &gemm_onednn_ops : &openblas_ops;
}

static struct {
    const gemm_engine_ops *ops;
    dm_engine engine;
    dm_precision prec;
    char text[96];
} now = {&openblas_ops, DM_ENGINE_OPENBLAS, DM_PREC_FP32, ""};

const char *gemm_precision_name(int p) {
    static const char *const names[] = {"fp32", "bf16", "auto"};
    return p >= 0 && p < 3 ? names[p] : NULL;
}

/* precision = auto: having bf16 units is not enough. On some CPUs bf16
 * products run faster than fp32 ones, on others (an Intel Xeon with
 * AVX512-BF16 and no AMX, absent or not passed through by the hypervisor)
 * slower, so bf16 there only costs (figures per CPU: docs/performance.md).
 * So the choice is measured: the network's most common product (a 3x3 convolution
 * 128 -> 128 at 28x28 over one image, as the convolutions run it: M = 128,
 * N = 784, K = 1152, fp32 weights that the engine rounds, bf16 columns as
 * im2col writes them) is timed in both precisions, alternating, best of
 * PROBE_ROUNDS; bf16 is chosen when its product takes at most
 * 1/PROBE_MARGIN of the fp32 one's time. The gaps seen so far are far from
 * the margin, so the answer does not flip with noise; callers running several ranks decide on rank 0 and broadcast.
 * The result is kept for the process. */
#define PROBE_M 128
#define PROBE_N 784
#define PROBE_K 1152
#define PROBE_ROUNDS 5
#define PROBE_REPS 4
#define PROBE_MARGIN 1.1

static struct {
    int done;
    dm_precision prec;
    double ratio; /* fp32 product time / bf16 product time */
    char note[160];
} probe;

static double probe_time(const gemm_engine_ops *ops, dm_precision p, const float *A,
                         const float *B, const unsigned short *Bh, float *C) {
    ops->use(p);
    double t0 = dm_now();
    for (int r = 0; r < PROBE_REPS; r++)
        ops->gemm(CblasNoTrans, CblasNoTrans, PROBE_M, PROBE_N, PROBE_K, A, DM_T_F32,
                  PROBE_K, p == DM_PREC_BF16 ? (const void *)Bh : (const void *)B,
                  p == DM_PREC_BF16 ? DM_T_BF16 : DM_T_F32, PROBE_N, 0.0f, C, PROBE_N);
    return dm_now() - t0;
}

static void probe_bf16(const gemm_engine_ops *ops) {
    long na = (long)PROBE_M * PROBE_K, nb = (long)PROBE_K * PROBE_N;
    float *A = dm_malloc(sizeof(float) * (size_t)na), *B = dm_malloc(sizeof(float) * (size_t)nb);
    float *C = dm_malloc(sizeof(float) * (size_t)PROBE_M * PROBE_N);
    unsigned short *Bh = dm_malloc(sizeof(unsigned short) * (size_t)nb);
    for (long i = 0; i < na; i++) A[i] = (float)((i * 7919) % 251) / 251.0f - 0.5f;
    for (long i = 0; i < nb; i++) B[i] = (float)((i * 104729) % 257) / 257.0f - 0.5f;
    dm_round_bf16(Bh, B, nb);
    double best[2] = {1e30, 1e30};
    int prof = prof_on;
    prof_enable(0);
    if (ops->setup(DM_PREC_BF16, 1) == DM_OK) {
        probe_time(ops, DM_PREC_FP32, A, B, Bh, C); /* primitives, caches */
        probe_time(ops, DM_PREC_BF16, A, B, Bh, C);
        for (int r = 0; r < PROBE_ROUNDS; r++)
            for (int q = 0; q < 2; q++) {
                double s = probe_time(ops, q ? DM_PREC_BF16 : DM_PREC_FP32, A, B, Bh, C);
                if (s < best[q]) best[q] = s;
            }
        ops->teardown();
    }
    prof_enable(prof);
    free(A), free(B), free(C), free(Bh);
    probe.ratio = best[1] > 0 ? best[0] / best[1] : 0;
    /* The test suite's stand-in for a CPU of the other kind. */
    const char *hook = getenv("DIFFMPI_TEST_BF16_SPEEDUP");
    if (hook && *hook) probe.ratio = atof(hook);
    probe.prec = probe.ratio >= PROBE_MARGIN ? DM_PREC_BF16 : DM_PREC_FP32;
    snprintf(probe.note, sizeof probe.note,
             "precision = auto chose %s: a bf16 product ran %.2fx as fast as fp32 on %s",
             gemm_precision_name(probe.prec), probe.ratio, ops->isa());
}

dm_precision gemm_resolve_precision(dm_engine e, dm_precision p) {
    if (p != DM_PREC_AUTO) return p;
    const gemm_engine_ops *ops = engine_row(e, DM_PREC_BF16);
    if (!ops->supports(DM_PREC_BF16, NULL, 0)) return DM_PREC_FP32;
    if (!probe.done) {
        gemm_teardown(); /* the probe sets the engine up on its own */
        probe_bf16(ops);
        probe.done = 1;
    }
    return probe.prec;
}

const char *gemm_auto_note(void) { return probe.done ? probe.note : NULL; }

int gemm_can_run(dm_engine e, dm_precision p) {
    return p == DM_PREC_AUTO || engine_row(e, p)->supports(p, NULL, 0);
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
    par_set_threads(threads > 0 ? threads : 1);
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
    now.prec = DM_PREC_FP32;
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
    DM_CHECK(p == DM_PREC_FP32 || now.ops->supports(p, NULL, 0),
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

dm_dtype gemm_operand_type(void) { return now.prec == DM_PREC_BF16 ? DM_T_BF16 : DM_T_F32; }

void dm_gemm_typed(enum CBLAS_TRANSPOSE ta, enum CBLAS_TRANSPOSE tb, int M, int N, int K,
                   const void *A, dm_dtype at, int lda, const void *B, dm_dtype bt, int ldb,
                   float beta, float *C, int ldc) {
    DM_CHECK(beta == 0.0f || beta == 1.0f, "dm_gemm: beta %g is neither 0 nor 1", beta);
    DM_CHECK(now.prec == DM_PREC_BF16 || (at == DM_T_F32 && bt == DM_T_F32),
             "dm_gemm: bf16 operand in fp32 precision");
    now.ops->gemm(ta, tb, M, N, K, A, at, lda, B, bt, ldb, beta, C, ldc);
}

void dm_gemm(enum CBLAS_TRANSPOSE ta, enum CBLAS_TRANSPOSE tb, int M, int N, int K,
             const float *A, int lda, const float *B, int ldb, float beta, float *C,
             int ldc) {
    dm_gemm_typed(ta, tb, M, N, K, A, DM_T_F32, lda, B, DM_T_F32, ldb, beta, C, ldc);
}
