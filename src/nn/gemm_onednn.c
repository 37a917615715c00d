/* gemm_onednn.c: the oneDNN row of the engine table (gemm.h).
 *
 * Each product runs oneDNN's matmul primitive. Creating a primitive costs
 * far more than a small product, so primitives are kept in a table keyed by
 * shape, transposes, leading dimensions and beta; a UNet step uses a few
 * dozen shapes, all met in the first step, which is the only one that
 * creates primitives or grows the bf16 scratch.
 *
 * bf16: both operands are rounded to bfloat16 (nearest even) into dense
 * scratch matrices, then multiplied with fp32 accumulation into the fp32
 * result. beta == 1 is oneDNN's sum post-op (C += A B). An fp32 operand of
 * more than ROUND_MAX elements (gemm.h) is rounded and multiplied in slices
 * of C's rows (A) or columns (B), never of K, so that the scratch stays at
 * 2 MiB: at D=128 the 256 x 12544 weights of the 1x1 -> 7x7 transposed
 * convolution, whose products have only 32 columns, would take 6.1 MiB.
 *
 * Threads: Debian's oneDNN runs on OpenMP, whose team gemm_setup sizes to
 * the run's `threads` (par_set_threads; one per rank by default), so two
 * ranks on two cores do not each start a thread per core. */
#include "gemm_engine.h"

#include "diffmpi/par.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef DM_HAVE_ONEDNN
#include <omp.h>
#include <oneapi/dnnl/dnnl.h>

#define CACHE_SLOTS 1024 /* a power of two */
#define ROUND_MAX DM_BF16_ROUND_MAX

typedef struct {
    int used;
    int key[10];
    dnnl_primitive_t prim;
    dnnl_memory_t a, b, c, pad;
    size_t pad_bytes;
} mm_entry;

/* What one thread of the rank uses: the rank's threads run products at the
 * same time (each on its own micro-batches), and a oneDNN stream and the
 * memory objects a product is executed with serve one thread at a time. */
typedef struct {
    dnnl_stream_t stream;
    mm_entry cache[CACHE_SLOTS];
    int entries;
    unsigned short *bfa, *bfb; /* bf16 operands, grown in the first step */
    size_t bfa_n, bfb_n;
    void *pad;                 /* scratchpad of the products (user mode) */
    size_t pad_n;
} thread_state;

static struct {
    int up;
    dm_precision prec;
    dnnl_engine_t eng;
    int nthreads;
    thread_state *th; /* [nthreads], by par_thread() */
} st;

#define DNNL_OK(call)                                                              \
    do {                                                                           \
        dnnl_status_t s_ = (call);                                                 \
        DM_CHECK(s_ == dnnl_success, "oneDNN: %s failed (status %d)", #call, (int)s_); \
    } while (0)

/* Does this CPU have bf16 units oneDNN will use (AVX512-BF16, AMX)? */
static int has_bf16_units(void) {
    unsigned isa = (unsigned)dnnl_get_effective_cpu_isa();
    return (isa & (unsigned)dnnl_cpu_isa_avx512_core_bf16) ==
           (unsigned)dnnl_cpu_isa_avx512_core_bf16;
}

static const char *onednn_isa(void) {
    switch (dnnl_get_effective_cpu_isa()) {
    case dnnl_cpu_isa_sse41: return "sse41";
    case dnnl_cpu_isa_avx: return "avx";
    case dnnl_cpu_isa_avx2: return "avx2";
    case dnnl_cpu_isa_avx2_vnni: return "avx2_vnni";
    case dnnl_cpu_isa_avx512_core: return "avx512_core";
    case dnnl_cpu_isa_avx512_core_vnni: return "avx512_core_vnni";
    case dnnl_cpu_isa_avx512_core_bf16: return "avx512_core_bf16";
    case dnnl_cpu_isa_avx512_core_amx: return "avx512_core_amx";
    default: return "other";
    }
}

static int onednn_supports(dm_precision p, char *why, size_t size) {
    if (p == DM_PREC_FP32 || has_bf16_units()) return 1;
    if (why)
        snprintf(why, size,
                 "precision = bf16 needs a CPU with AVX512-BF16 or AMX, and oneDNN "
                 "finds only %s here; use precision = fp32",
                 onednn_isa());
    return 0;
}

static dm_status onednn_setup(dm_precision p, int threads) {
    DNNL_OK(dnnl_engine_create(&st.eng, dnnl_cpu, 0));
    st.nthreads = threads;
    st.th = dm_calloc((size_t)threads, sizeof *st.th);
    for (int i = 0; i < threads; i++)
        DNNL_OK(dnnl_stream_create(&st.th[i].stream, st.eng, dnnl_stream_default_flags));
    st.prec = p;
    st.up = 1;
    return DM_OK;
}

static void onednn_use(dm_precision p) { st.prec = p; }

static void onednn_teardown(void) {
    if (!st.up) return;
    for (int t = 0; t < st.nthreads; t++) {
        thread_state *x = &st.th[t];
        for (int i = 0; i < CACHE_SLOTS; i++) {
            mm_entry *e = &x->cache[i];
            if (!e->used) continue;
            dnnl_primitive_destroy(e->prim);
            dnnl_memory_destroy(e->a);
            dnnl_memory_destroy(e->b);
            dnnl_memory_destroy(e->c);
            dnnl_memory_destroy(e->pad);
        }
        dnnl_stream_destroy(x->stream);
        free(x->bfa), free(x->bfb), free(x->pad);
    }
    dnnl_engine_destroy(st.eng);
    free(st.th);
    memset(&st, 0, sizeof st);
}

/* A rows x cols matrix (op applied: trans means it is stored cols x rows)
 * with leading dimension ld. */
static void matrix_md(dnnl_memory_desc_t *md, int rows, int cols, int trans, int ld,
                      dnnl_data_type_t dt) {
    dnnl_dims_t dims = {rows, cols};
    dnnl_dims_t strides = {trans ? 1 : ld, trans ? ld : 1};
    DNNL_OK(dnnl_memory_desc_init_by_strides(md, 2, dims, dt, strides));
}

static mm_entry *lookup(thread_state *x, const int key[10]) {
    unsigned h = 2166136261u;
    for (int i = 0; i < 10; i++) h = (h ^ (unsigned)key[i]) * 16777619u;
    for (int probe = 0; probe < CACHE_SLOTS; probe++) {
        mm_entry *e = &x->cache[(h + (unsigned)probe) & (CACHE_SLOTS - 1)];
        if (e->used && memcmp(e->key, key, sizeof e->key) == 0) return e;
        if (!e->used) {
            DM_CHECK(x->entries < CACHE_SLOTS * 3 / 4, "oneDNN: more than %d product shapes",
                     CACHE_SLOTS * 3 / 4);
            memcpy(e->key, key, sizeof e->key);
            return e;
        }
    }
    DM_CHECK(0, "oneDNN: primitive table full");
}

/* A product of one thread: created (and run) with one OpenMP thread, so
 * that oneDNN never cuts it over threads (it may cut K, and the sums would
 * then depend on the thread count), and with the scratchpad in our hands
 * (user mode), so that no library scratchpad ties it to the thread that
 * created it. */
static void create(thread_state *x, mm_entry *e, int M, int N, int K, int ta, int tb, int lda,
                   int ldb, int ldc, int acc) {
    dnnl_data_type_t dt = st.prec == DM_PREC_BF16 ? dnnl_bf16 : dnnl_f32;
    dnnl_memory_desc_t a, b, c;
    matrix_md(&a, M, K, ta, lda, dt);
    matrix_md(&b, K, N, tb, ldb, dt);
    matrix_md(&c, M, N, 0, ldc, dnnl_f32);
    dnnl_matmul_desc_t desc;
    DNNL_OK(dnnl_matmul_desc_init(&desc, &a, &b, NULL, &c));
    dnnl_primitive_attr_t attr;
    DNNL_OK(dnnl_primitive_attr_create(&attr));
    DNNL_OK(dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user));
    if (acc) {
        dnnl_post_ops_t po;
        DNNL_OK(dnnl_post_ops_create(&po));
        DNNL_OK(dnnl_post_ops_append_sum(po, 1.0f));
        DNNL_OK(dnnl_primitive_attr_set_post_ops(attr, po));
        dnnl_post_ops_destroy(po);
    }
    dnnl_primitive_desc_t pd;
    DNNL_OK(dnnl_primitive_desc_create(&pd, &desc, attr, st.eng, NULL));
    DNNL_OK(dnnl_primitive_create(&e->prim, pd));
    const dnnl_memory_desc_t *pmd = dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
    e->pad_bytes = pmd ? dnnl_memory_desc_get_size(pmd) : 0;
    DNNL_OK(dnnl_memory_create(&e->pad, pmd, st.eng, DNNL_MEMORY_NONE));
    dnnl_primitive_desc_destroy(pd);
    dnnl_primitive_attr_destroy(attr);
    DNNL_OK(dnnl_memory_create(&e->a, &a, st.eng, DNNL_MEMORY_NONE));
    DNNL_OK(dnnl_memory_create(&e->b, &b, st.eng, DNNL_MEMORY_NONE));
    DNNL_OK(dnnl_memory_create(&e->c, &c, st.eng, DNNL_MEMORY_NONE));
    e->used = 1;
    x->entries++;
}

/* rows x cols of src (leading dimension ld) into dense bf16 dst; blocks of
 * rows over the rank's threads (elementwise: any cut gives the same bits). */
static void round_bf16(unsigned short *dst, const float *src, int rows, int cols, int ld) {
    if (ld == cols) {
        const long n = (long)rows * cols;
        PAR_FOR(n, n) dm_round_bf16(dst + PAR_LO, src + PAR_LO, PAR_HI - PAR_LO);
        return;
    }
    PAR_FOR(rows, (long)rows * cols) {
        const int r1 = (int)PAR_HI;
        for (int r = (int)PAR_LO; r < r1; r++)
            dm_round_bf16(dst + (long)r * cols, src + (long)r * ld, cols);
    }
}

static unsigned short *grow(unsigned short **buf, size_t *have, size_t need) {
    if (need > *have) {
        free(*buf);
        *buf = dm_malloc(need * sizeof **buf);
        *have = need;
    }
    return *buf;
}

static void onednn_gemm(enum CBLAS_TRANSPOSE ta_, enum CBLAS_TRANSPOSE tb_, int M, int N,
                        int K, const void *A, dm_dtype at, int lda, const void *B, dm_dtype bt,
                        int ldb, float beta, float *C, int ldc) {
    const int ta = ta_ == CblasTrans, tb = tb_ == CblasTrans;
    const void *a = A, *b = B;
    if (st.prec == DM_PREC_BF16 && at == DM_T_F32 && (long)M * K > ROUND_MAX && M > 1) {
        /* Rows [m0, m0 + mc) of C need rows m0.. of op(A): columns of A if ta. */
        long parts = ((long)M * K + ROUND_MAX - 1) / ROUND_MAX;
        int mc = (int)((M + parts - 1) / parts);
        for (int m0 = 0; m0 < M; m0 += mc)
            onednn_gemm(ta_, tb_, M - m0 < mc ? M - m0 : mc, N, K,
                        (const float *)A + (ta ? m0 : (long)m0 * lda), at, lda, B, bt, ldb,
                        beta, C + (long)m0 * ldc, ldc);
        return;
    }
    if (st.prec == DM_PREC_BF16 && bt == DM_T_F32 && (long)K * N > ROUND_MAX && N > 1) {
        /* Columns [n0, n0 + nc) of C need columns n0.. of op(B): rows of B if tb. */
        long parts = ((long)K * N + ROUND_MAX - 1) / ROUND_MAX;
        int nc = (int)((N + parts - 1) / parts);
        for (int n0 = 0; n0 < N; n0 += nc)
            onednn_gemm(ta_, tb_, M, N - n0 < nc ? N - n0 : nc, K, A, at, lda,
                        (const float *)B + (tb ? (long)n0 * ldb : n0), bt, ldb, beta, C + n0,
                        ldc);
        return;
    }
    thread_state *x = &st.th[par_thread()];
    DM_CHECK(par_thread() < st.nthreads, "oneDNN: thread %d of %d", par_thread(), st.nthreads);
    if (st.prec == DM_PREC_BF16 && (at == DM_T_F32 || bt == DM_T_F32)) {
        double t0 = prof_start();
        /* Stored shapes: A is M x K (K x M if ta), B K x N (N x K if tb). */
        int ar = ta ? K : M, ac = ta ? M : K, br = tb ? N : K, bc = tb ? K : N;
        if (at == DM_T_F32) {
            unsigned short *h = grow(&x->bfa, &x->bfa_n, (size_t)ar * ac);
            round_bf16(h, A, ar, ac, lda);
            a = h, lda = ac;
        }
        if (bt == DM_T_F32) {
            unsigned short *h = grow(&x->bfb, &x->bfb_n, (size_t)br * bc);
            round_bf16(h, B, br, bc, ldb);
            b = h, ldb = bc;
        }
        prof_add(PROF_CAST, t0);
    }
    double t0 = prof_start();
    const int team = omp_get_max_threads();
    omp_set_num_threads(1); /* this task's setting only; see create */
    int key[10] = {M, N, K, ta, tb, lda, ldb, ldc, beta != 0.0f, (int)st.prec};
    mm_entry *e = lookup(x, key);
    if (!e->used) create(x, e, M, N, K, ta, tb, lda, ldb, ldc, beta != 0.0f);
    if (e->pad_bytes > x->pad_n) {
        free(x->pad);
        x->pad = dm_malloc(e->pad_bytes);
        x->pad_n = e->pad_bytes;
    }
    DNNL_OK(dnnl_memory_set_data_handle(e->a, (void *)a));
    DNNL_OK(dnnl_memory_set_data_handle(e->b, (void *)b));
    DNNL_OK(dnnl_memory_set_data_handle(e->c, C));
    DNNL_OK(dnnl_memory_set_data_handle(e->pad, x->pad));
    dnnl_exec_arg_t args[4] = {{DNNL_ARG_SRC, e->a},
                               {DNNL_ARG_WEIGHTS, e->b},
                               {DNNL_ARG_DST, e->c},
                               {DNNL_ARG_SCRATCHPAD, e->pad}};
    DNNL_OK(dnnl_primitive_execute(e->prim, x->stream, 4, args));
    DNNL_OK(dnnl_stream_wait(x->stream));
    omp_set_num_threads(team);
    prof_add(PROF_GEMM, t0);
}

#else /* !DM_HAVE_ONEDNN */

static int onednn_supports(dm_precision p, char *why, size_t size) {
    (void)p;
    if (why)
        snprintf(why, size, "engine = onednn and precision = bf16 need a diffmpi built "
                            "with oneDNN (libdnnl-dev); this build has only OpenBLAS");
    return 0;
}
static dm_status onednn_setup(dm_precision p, int threads) {
    (void)p, (void)threads;
    return DM_EUSAGE;
}
static void onednn_teardown(void) {}
static void onednn_use(dm_precision p) { (void)p; }
static void onednn_gemm(enum CBLAS_TRANSPOSE ta, enum CBLAS_TRANSPOSE tb, int M, int N,
                        int K, const void *A, dm_dtype at, int lda, const void *B, dm_dtype bt,
                        int ldb, float beta, float *C, int ldc) {
    DM_CHECK(0, "oneDNN is not in this build");
}
static const char *onednn_isa(void) { return "none"; }

#endif

const gemm_engine_ops gemm_onednn_ops = {
    "onednn", onednn_supports, onednn_setup, onednn_teardown, onednn_gemm, onednn_isa,
    onednn_use,
};
