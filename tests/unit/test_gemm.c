/* test_gemm.c: the engine table of gemm.h.
 *
 *  - every engine that runs fp32 here (openblas; onednn where built) gives
 *    op(A) op(B) for all four transpose pairs, beta 0 and 1, leading
 *    dimensions wider than the matrix, to fp32 accuracy against a double
 *    reference, and bitwise the same result when called again;
 *  - bf16 (where the CPU has the units): the result is the product of the
 *    bf16-rounded operands accumulated in fp32 (within fp32 rounding of that
 *    exact product), and it does differ from the fp32 product, so the
 *    operands really were rounded;
 *  - dm_bf16_bits rounds to nearest even and keeps NaN and infinity;
 *  - bf16 is refused with one line naming the reason: always on OpenBLAS,
 *    and on a CPU without AVX512-BF16/AMX (CTest runs this program a second
 *    time with ONEDNN_MAX_CPU_ISA=AVX512_CORE and DM_TEST_EXPECT_NO_BF16=1,
 *    so the refusal is checked on every CPU). */
#include "diffmpi/gemm.h"

#include <stdlib.h>
#include <string.h>

#include "diffmpi/rng.h"
#include "test_util.h"

static char errpath[64];
static dm_rng trng;

static float bf16_value(float f) {
    unsigned u = (unsigned)dm_bf16_bits(f) << 16;
    float v;
    memcpy(&v, &u, sizeof v);
    return v;
}

static void test_bf16_bits(void) {
    EXPECT(dm_bf16_bits(1.0f) == 0x3f80, "1.0");
    EXPECT(dm_bf16_bits(-2.0f) == 0xc000, "-2.0");
    /* 1 + 2^-8 lies halfway between 1 and 1 + 2^-7: ties go to even (1). */
    EXPECT(dm_bf16_bits(1.0f + 0x1p-8f) == 0x3f80, "tie to even, down");
    /* 1 + 3*2^-8 is halfway between 1+2^-7 (odd) and 1+2^-6: up. */
    EXPECT(dm_bf16_bits(1.0f + 3 * 0x1p-8f) == 0x3f82, "tie to even, up");
    EXPECT(dm_bf16_bits(1.0f + 0x1p-8f + 0x1p-20f) == 0x3f81, "above half rounds up");
    EXPECT(dm_bf16_bits(INFINITY) == 0x7f80 && dm_bf16_bits(-INFINITY) == 0xff80, "inf");
    EXPECT(dm_bf16_bits(3.4e38f) == 0x7f80, "overflow rounds to inf");
    unsigned short nan = dm_bf16_bits(NAN);
    EXPECT((nan & 0x7f80) == 0x7f80 && (nan & 0x7f) != 0, "NaN stays NaN: %#x", nan);
    /* a NaN whose payload lives only in the low half must not become inf */
    unsigned u = 0x7f800001u;
    float f;
    memcpy(&f, &u, sizeof f);
    nan = dm_bf16_bits(f);
    EXPECT((nan & 0x7f) != 0, "low-payload NaN stays NaN: %#x", nan);
}

/* C (M x N, ldc) = op(A) op(B) [+ C0] in double, operands optionally
 * rounded to bf16 first; also sum |a||b| per element (error bound). */
static void reference(double *ref, double *mag, const float *A, int lda, const float *B,
                      int ldb, const float *C0, int ldc, int M, int N, int K, int ta,
                      int tb, int beta, int round) {
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double s = beta ? C0[(long)i * ldc + j] : 0.0, m = fabs(s);
            for (int k = 0; k < K; k++) {
                float a = ta ? A[(long)k * lda + i] : A[(long)i * lda + k];
                float b = tb ? B[(long)j * ldb + k] : B[(long)k * ldb + j];
                if (round) a = bf16_value(a), b = bf16_value(b);
                s += (double)a * b;
                m += fabs((double)a * b);
            }
            ref[(long)i * N + j] = s;
            mag[(long)i * N + j] = m;
        }
}

/* One product on the current engine; returns the largest error relative
 * to the magnitude bound against the reference (round: bf16 operands). */
static void check_case(const char *engine, int M, int N, int K, int ta, int tb, int beta,
                       int pad, int bf16) {
    int lda = (ta ? M : K) + pad, ldb = (tb ? K : N) + pad, ldc = N + pad;
    long na = (long)(ta ? K : M) * lda, nb = (long)(tb ? N : K) * ldb, nc = (long)M * ldc;
    float *A = malloc(sizeof(float) * na), *B = malloc(sizeof(float) * nb);
    float *C = malloc(sizeof(float) * nc), *C0 = malloc(sizeof(float) * nc);
    float *C2 = malloc(sizeof(float) * nc);
    double *ref = malloc(sizeof(double) * M * N), *mag = malloc(sizeof(double) * M * N);
    for (long i = 0; i < na; i++) A[i] = rng_normal(&trng);
    for (long i = 0; i < nb; i++) B[i] = rng_normal(&trng);
    for (long i = 0; i < nc; i++) C0[i] = rng_normal(&trng);
    memcpy(C, C0, sizeof(float) * nc);
    memcpy(C2, C0, sizeof(float) * nc);
    enum CBLAS_TRANSPOSE TA = ta ? CblasTrans : CblasNoTrans, TB = tb ? CblasTrans : CblasNoTrans;
    dm_gemm(TA, TB, M, N, K, A, lda, B, ldb, beta ? 1.0f : 0.0f, C, ldc);
    dm_gemm(TA, TB, M, N, K, A, lda, B, ldb, beta ? 1.0f : 0.0f, C2, ldc);
    char what[160];
    snprintf(what, sizeof what, "%s %s M%d N%d K%d t%d%d beta%d pad%d", engine,
             bf16 ? "bf16" : "fp32", M, N, K, ta, tb, beta, pad);
    EXPECT(memcmp(C, C2, sizeof(float) * nc) == 0, "%s: second call differs", what);
    reference(ref, mag, A, lda, B, ldb, C0, ldc, M, N, K, ta, tb, beta, bf16);
    double worst = 0;
    int pad_ok = 1;
    for (int i = 0; i < M; i++) {
        for (int j = 0; j < N; j++) {
            double e = fabs(C[(long)i * ldc + j] - ref[(long)i * N + j]) / (mag[(long)i * N + j] + 1e-30);
            if (e > worst) worst = e;
        }
        for (int j = N; j < ldc; j++)
            if (memcmp(&C[(long)i * ldc + j], &C0[(long)i * ldc + j], sizeof(float))) pad_ok = 0;
    }
    /* fp32 accumulation over K terms: a few K * 2^-24 of sum |a b|. */
    EXPECT(worst < 1e-6 * (K + 8), "%s: error %.3g of sum|ab|", what, worst);
    EXPECT(pad_ok, "%s: wrote outside the N columns of C", what);
    if (bf16) {
        /* Against the unrounded operands the error is that of bf16 (2^-9
         * relative per operand), far above fp32's: the rounding happened. */
        reference(ref, mag, A, lda, B, ldb, C0, ldc, M, N, K, ta, tb, beta, 0);
        double big = 0;
        for (int i = 0; i < M; i++)
            for (int j = 0; j < N; j++) {
                double e = fabs(C[(long)i * ldc + j] - ref[(long)i * N + j]) /
                           (mag[(long)i * N + j] + 1e-30);
                if (e > big) big = e;
            }
        EXPECT(big > 1e-4 && big < 2e-2, "%s: error %.3g against fp32 operands", what, big);
        /* B handed over already in bf16 (as im2col writes it) gives the
         * same bits as B rounded by the engine. */
        unsigned short *B16 = malloc(sizeof *B16 * (size_t)nb);
        for (long i = 0; i < nb; i++) B16[i] = dm_bf16_bits(B[i]);
        memcpy(C2, C0, sizeof(float) * nc);
        dm_gemm_typed(TA, TB, M, N, K, A, DM_T_F32, lda, B16, DM_T_BF16, ldb,
                      beta ? 1.0f : 0.0f, C2, ldc);
        EXPECT(memcmp(C, C2, sizeof(float) * nc) == 0, "%s: bf16 B operand differs", what);
        free(B16);
    }
    free(A), free(B), free(C), free(C0), free(C2), free(ref), free(mag);
}

/* check_case for all four transpose pairs and both betas. */
static void check_all_ops(const char *engine, int M, int N, int K, int pad, int bf16) {
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++)
            for (int beta = 0; beta < 2; beta++)
                check_case(engine, M, N, K, ta, tb, beta, pad, bf16);
}

static void check_engine(const char *engine, int bf16) {
    static const int shapes[][3] = {{5, 7, 9}, {64, 100, 300}, {1, 33, 17}, {130, 3, 70}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        check_all_ops(engine, shapes[s][0], shapes[s][1], shapes[s][2], (int)s % 2 ? 3 : 0, bf16);
}

/* In bf16 an fp32 operand larger than DM_BF16_ROUND_MAX is rounded and
 * multiplied in slices (of C's rows for A, of its columns for B): the
 * result must still be the product, with every transpose and beta. */
static void check_sliced(void) {
    const int K = 1000, big = (int)(DM_BF16_ROUND_MAX / K) + 77;
    check_all_ops("onednn", big, 3, K, 2, 1);
    check_all_ops("onednn", 5, big, K, 2, 1);
}

static dm_status setup_quiet(dm_engine e, dm_precision p, char *msg, size_t size) {
    test_capture_begin(errpath);
    dm_status st = gemm_setup(e, p, 1);
    test_capture_end(errpath, msg, size);
    return st;
}

int main(void) {
    rng_init(&trng, 20261202, DM_STREAM_EVAL, 7, 0);
    snprintf(errpath, sizeof errpath, "/tmp/test_gemm.%d.err", (int)getpid());
    test_bf16_bits();
    char msg[512];

    EXPECT(setup_quiet(DM_ENGINE_OPENBLAS, DM_PREC_FP32, msg, sizeof msg) == DM_OK, "openblas fp32");
    EXPECT(gemm_engine_now() == DM_ENGINE_OPENBLAS && strncmp(gemm_describe(), "openblas fp32", 13) == 0,
           "describe: %s", gemm_describe());
    check_engine("openblas", 0);

    EXPECT(setup_quiet(DM_ENGINE_OPENBLAS, DM_PREC_BF16, msg, sizeof msg) == DM_EUSAGE &&
               strstr(msg, "engine = onednn") && strchr(msg, '\n') == strrchr(msg, '\n'),
           "bf16 on openblas refused in one line: '%s'", msg);

#ifdef DM_HAVE_ONEDNN
    EXPECT(setup_quiet(DM_ENGINE_AUTO, DM_PREC_FP32, msg, sizeof msg) == DM_OK &&
               gemm_engine_now() == DM_ENGINE_ONEDNN,
           "auto is onednn in a oneDNN build");
    check_engine("onednn", 0);
    const char *expect_none = getenv("DM_TEST_EXPECT_NO_BF16");
    dm_status st = setup_quiet(DM_ENGINE_ONEDNN, DM_PREC_BF16, msg, sizeof msg);
    if (expect_none && strcmp(expect_none, "1") == 0)
        EXPECT(st == DM_EUSAGE, "bf16 must be refused under ONEDNN_MAX_CPU_ISA=AVX512_CORE");
    if (st == DM_OK) {
        printf("bf16 runs here: %s\n", gemm_describe());
        EXPECT(gemm_precision_now() == DM_PREC_BF16, "precision now bf16");
        check_engine("onednn", 1);
        check_sliced();
    } else {
        printf("bf16 refused here: %s", msg);
        EXPECT(st == DM_EUSAGE && strstr(msg, "AVX512-BF16") && strstr(msg, "precision = fp32") &&
                   strchr(msg, '\n') == strrchr(msg, '\n'),
               "bf16 refusal names the missing units in one line: '%s'", msg);
    }
#else
    EXPECT(setup_quiet(DM_ENGINE_ONEDNN, DM_PREC_FP32, msg, sizeof msg) == DM_EUSAGE &&
               strstr(msg, "libdnnl-dev"),
           "onednn refused in a build without it: '%s'", msg);
#endif
    gemm_teardown();
    unlink(errpath);
    return test_finish("test_gemm");
}
