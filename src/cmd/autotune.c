/* autotune.c: precision = auto and conv_algo = auto at a job's start
 * (autotune.h). */
#include "diffmpi/autotune.h"

#include <cblas.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "diffmpi/ckpt.h"
#include "diffmpi/diffusion.h"
#include "diffmpi/gemm.h"
#include "diffmpi/unet.h"

/* The configuration of the checkpoint a resumed run starts from, into k;
 * 0 if there is none (a fresh run, or no checkpoint yet: the run's own
 * errors say so later). */
static int resumed_config(const char *out, const char *resume, dm_config *k) {
    char path[4096] = "";
    if (!resume || !out) return 0;
    dm_set_quiet(1);
    dm_status st = ckpt_resume_path(out, resume, path, sizeof path);
    if (st == DM_OK) st = ckpt_read_config(path, k);
    dm_set_quiet(0);
    return st == DM_OK;
}

/* precision = auto on rank 0. A resumed run keeps the precision its
 * checkpoint ran in where this CPU can run it, so that it stays bitwise on
 * course; otherwise the engine measures which is faster here
 * (gemm_resolve_precision), and *measured says so. note: the line that
 * says which, for the log. */
static dm_precision auto_precision(const dm_config *c, const char *out, const char *resume,
                                   char *note, size_t size, int *measured) {
    note[0] = '\0';
    *measured = 0;
    if (c->precision != DM_PREC_AUTO) return c->precision;
    dm_config k;
    if (resumed_config(out, resume, &k) && k.precision != DM_PREC_AUTO &&
        gemm_can_run(c->engine, k.precision)) {
        snprintf(note, size, "precision = auto: %s, as the checkpoint ran",
                 gemm_precision_name(k.precision));
        return k.precision;
    }
    dm_precision p = gemm_resolve_precision(c->engine, DM_PREC_AUTO);
    if (gemm_auto_note()) {
        snprintf(note, size, "%s", gemm_auto_note());
        *measured = 1;
    }
    return p;
}

/* The conv_algo = auto test hook: "W:R,..." stands in for the measured
 * im2col / Winograd F(2x2) time ratio R at image width W (and rules F(4x4)
 * out there), "W:R2:R4" for both forms' ratios. */
static void conv_hook(const int *width, double ratio[][2], int nw) {
    const char *h = getenv("DIFFMPI_TEST_WINOGRAD_SPEEDUP");
    while (h && *h) {
        int w = 0;
        double r2 = 0, r4 = 0;
        if (sscanf(h, "%d:%lf:%lf", &w, &r2, &r4) >= 2)
            for (int i = 0; i < nw; i++)
                if (width[i] == w) ratio[i][0] = r2, ratio[i][1] = r4;
        h = strchr(h, ',');
        if (h) h++;
    }
}

/* The row (0 im2col, 1 F(2x2), 2 F(4x4)) a 3x3 stride-1 layer of this
 * image width runs with Winograd from widths w2 and w4 (0: F(4x4) nowhere),
 * as unet.c's winograd_unit decides. */
static int plan_row(int width, int winograd, int w2, int w4) {
    if (!winograd) return 0;
    if (w4 > 0 && width >= w4) return 2;
    return width >= w2 ? 1 : 0;
}

/* conv_algo = auto on every rank, after the engine is set up: sets k's
 * conv_algo, winograd_min_width and winograd4_min_width to what runs. A
 * resumed run keeps its checkpoint's choice (so that it stays bitwise on
 * course); in bf16 im2col (Winograd needs fp32); otherwise every 3x3
 * stride-1 layer is timed by im2col and by both Winograd forms here on one
 * micro-batch (unet_conv_timings), and from the widest image width down,
 * F(4x4) runs while it is at least 1.05x as fast as im2col and as F(2x2),
 * then F(2x2) while it is at least 1.05x as fast as im2col, then im2col.
 * note: the line that says which, for the log.
 *
 * weigh: precision = auto's product probe chose bf16 (the engine runs
 * bf16 now), and conv_algo is auto or winograd. That probe times one
 * im2col-shaped product, but fp32 can run the 3x3 convolutions (about 80 %
 * of the FLOPs) by Winograd with 2.25-4x fewer multiplies, which bf16
 * cannot: on a Zen 5 the probe favoured bf16 while the bf16 run was
 * slower than fp32 with Winograd (docs/performance-log.md). So here the precision is decided again from
 * the same timings: the 3x3 layers are also timed by im2col in bf16, and a
 * step's products are estimated in each precision, those layers by the rows
 * each would run and every other product (strided and transposed
 * convolutions, linear layers) at the 3x3 layers' im2col rate in that
 * precision; the elementwise work, the same in both, is left out. bf16
 * stays where its estimate is at least BF16_AUTO_MARGIN times as fast,
 * else fp32 runs with the Winograd plan; k->precision says which and pnote
 * (precision = auto's line) why.
 *
 * Every rank times the layers at the same time and each time is the
 * slowest rank's: a training step runs all ranks at once, and they share
 * the last-level cache and the memory bus. Timed on rank 0 alone (the
 * others waiting), the memory-bound Winograd transforms ran faster than
 * they do in the step, and bf16's estimate came out below the measured
 * ratio (docs/performance-log.md). Every rank
 * then makes the same choice from the same figures; rank 0's k is the one
 * the caller broadcasts, and only rank 0 reads the checkpoint. */
#define CONV_AUTO_MARGIN 1.05
#define BF16_AUTO_MARGIN 1.1
static void auto_conv_algo(const dm_config *c, const char *out, const char *resume, int weigh,
                           int rank, dm_config *k, char *pnote, size_t psize, char *note,
                           size_t size) {
    note[0] = '\0';
    if (c->conv_algo == CONV_ALGO_IM2COL || (c->conv_algo == CONV_ALGO_WINOGRAD && !weigh)) return;
    dm_config ck;
    if (c->conv_algo == CONV_ALGO_AUTO) k->conv_algo = CONV_ALGO_IM2COL;
    const int kept = dm_from_rank0(rank == 0 && c->conv_algo == CONV_ALGO_AUTO &&
                                   resumed_config(out, resume, &ck) &&
                                   ck.conv_algo != CONV_ALGO_AUTO);
    if (kept) {
        if (rank != 0) return;
        k->conv_algo = ck.conv_algo;
        k->winograd_min_width = ck.winograd_min_width;
        k->winograd4_min_width = ck.winograd4_min_width;
        snprintf(note, size, "conv_algo = auto: %s, as the checkpoint ran",
                 ck.conv_algo == CONV_ALGO_WINOGRAD ? "winograd" : "im2col");
        return;
    }
    if (gemm_precision_now() != DM_PREC_FP32 && !weigh) {
        snprintf(note, size, "conv_algo = auto: im2col, as the products run in bf16");
        return;
    }
    unet_shape sh = diffusion_shape(c, c->micro_batch, 0, 0);
    unet shapes;
    unet_init(&shapes, &sh);
    enum { MAXW = 8 };
    int width[MAXW], width16[MAXW];
    double secs[UNET_CONV_TIMED * MAXW], secs16[UNET_CONV_TIMED * MAXW], ratio[MAXW][2];
    /* a whole micro-batch, as the weights' transforms are per micro-batch */
    if (rank == 0) {
        printf("conv_algo = auto: timing the 3x3 stride-1 convolutions by im2col and by "
               "Winograd F(2x2,3x3) and F(4x4,3x3)%s (one micro-batch per layer on every "
               "rank at once, best of 2; about %s s at D=128)\n",
               weigh ? ", and by im2col in bf16 for precision = auto" : "",
               weigh ? "15-20" : "10-15");
        fflush(stdout);
    }
    if (weigh) gemm_use_precision(DM_PREC_FP32);
    int nw = unet_conv_timings(&shapes, c->micro_batch, 2, UNET_CONV_TIMED, width, secs, MAXW);
    MPI_Allreduce(MPI_IN_PLACE, secs, UNET_CONV_TIMED * nw, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    if (weigh) {
        gemm_use_precision(DM_PREC_BF16);
        unet_conv_timings(&shapes, c->micro_batch, 2, 1, width16, secs16, MAXW);
        MPI_Allreduce(MPI_IN_PLACE, secs16, UNET_CONV_TIMED * nw, MPI_DOUBLE, MPI_MAX,
                      MPI_COMM_WORLD);
        /* the test suite's stand-in for the bf16/fp32 ratio (as the probe's) */
        const char *hook = getenv("DIFFMPI_TEST_BF16_SPEEDUP");
        for (int i = 0; i < nw; i++)
            if (hook && *hook && atof(hook) > 0)
                secs16[UNET_CONV_TIMED * i] = secs[UNET_CONV_TIMED * i] / atof(hook);
    }
    const double share = unet_conv3x3_train_flops(&shapes) / unet_train_flops(&shapes);
    unet_free(&shapes);
    for (int i = 0; i < nw; i++)
        for (int q = 0; q < 2; q++) {
            const double w = secs[UNET_CONV_TIMED * i + 1 + q];
            ratio[i][q] = w > 0 ? secs[UNET_CONV_TIMED * i] / w : 0;
        }
    conv_hook(width, ratio, nw);
    /* from the widest down */
    int order[MAXW];
    for (int i = 0; i < nw; i++) {
        int q = i;
        for (; q > 0 && width[order[q - 1]] < width[i]; q--) order[q] = order[q - 1];
        order[q] = i;
    }
    int w4 = 0, w2 = 0, form = 4;
    char list[160] = "";
    for (int r = 0; r < nw; r++) {
        const int i = order[r];
        const double r2 = ratio[i][0], r4 = ratio[i][1];
        size_t len = strlen(list);
        snprintf(list + len, sizeof list - len, "%s%dx%d %.2fx/%.2fx", r ? ", " : "", width[i],
                 width[i], r2, r4);
        if (form == 4 && r4 >= CONV_AUTO_MARGIN && r4 >= CONV_AUTO_MARGIN * r2)
            w4 = width[i];
        else if (form && (form = 2) && r2 >= CONV_AUTO_MARGIN)
            w2 = width[i];
        else
            form = 0;
    }
    if (c->conv_algo == CONV_ALGO_WINOGRAD) /* weighing the user's plan */
        w2 = c->winograd_min_width, w4 = c->winograd4_min_width;
    if (weigh && nw > 0 && share > 0) {
        /* a step's products in each precision, in units of the fp32 im2col
         * time of the 3x3 layers; the rows' times from the ratios, so that
         * the test hooks reach them */
        double i32 = 0, plan = 0, i16 = 0;
        char bl[160] = "";
        const int win = c->conv_algo == CONV_ALGO_WINOGRAD || w2 || w4;
        for (int r = 0; r < nw; r++) {
            const int i = order[r];
            const double s = secs[UNET_CONV_TIMED * i], s16 = secs16[UNET_CONV_TIMED * i];
            const int row = plan_row(width[i], win, w2 ? w2 : w4, w4);
            i32 += s;
            i16 += s16;
            plan += row ? (ratio[i][row - 1] > 0 ? s / ratio[i][row - 1] : s) : s;
            size_t len = strlen(bl);
            snprintf(bl + len, sizeof bl - len, "%s%dx%d %.2fx", r ? ", " : "", width[i],
                     width[i], s16 > 0 ? s / s16 : 0);
        }
        const double other = (1 - share) / share * i32; /* fp32 im2col rate */
        const double t32 = plan + other, t16 = i16 / i32 * (i32 + other);
        const double speed = t16 > 0 ? t32 / t16 : 0;
        const int bf16 = speed >= BF16_AUTO_MARGIN;
        char how[96] = " by im2col";
        if (win && w4 > 0 && (w2 ? w2 : w4) < w4)
            snprintf(how, sizeof how, " by Winograd F(4x4) from %d wide, F(2x2) from %d wide",
                     w4, w2 ? w2 : w4);
        else if (win && w4 > 0)
            snprintf(how, sizeof how, " by Winograd F(4x4) from %d wide", w4);
        else if (win)
            snprintf(how, sizeof how, " by Winograd F(2x2) from %d wide", w2);
        snprintf(pnote, psize, "precision = auto chose %s: bf16 (im2col) would run a step's "
                 "products %.2fx as fast as fp32%s, estimated from the 3x3 stride-1 "
                 "convolutions timed in both (bf16 im2col %s as fast as fp32 im2col; the other "
                 "%.0f %% of the FLOPs at that rate)", bf16 ? "bf16" : "fp32", speed, how, bl,
                 100 * (1 - share));
        if (bf16) {
            k->precision = DM_PREC_BF16;
            if (c->conv_algo == CONV_ALGO_AUTO)
                snprintf(note, size, "conv_algo = auto: im2col, as the products run in bf16");
            return;
        }
        k->precision = DM_PREC_FP32;
        gemm_use_precision(DM_PREC_FP32);
    }
    if (c->conv_algo != CONV_ALGO_AUTO) return;
    if (!nw) {
        snprintf(note, size, "conv_algo = auto: im2col, as no convolution is 3x3 stride 1");
        return;
    }
    if (!w4 && !w2) {
        snprintf(note, size, "conv_algo = auto chose im2col: Winograd F(2x2)/F(4x4) ran %s as "
                 "fast", list);
        return;
    }
    k->conv_algo = CONV_ALGO_WINOGRAD;
    k->winograd_min_width = w2 ? w2 : w4;
    k->winograd4_min_width = w4;
    char f4[64] = "", f2[64] = "";
    if (w4) snprintf(f4, sizeof f4, "F(4x4,3x3) for images at least %d wide", w4);
    if (w2) snprintf(f2, sizeof f2, "F(2x2,3x3) for images at least %d wide", w2);
    snprintf(note, size, "conv_algo = auto chose winograd %s%s%s: F(2x2)/F(4x4) ran %s as fast "
             "as im2col", f4, w4 && w2 ? ", " : "", f2, list);
}

dm_status autotune_engine(dm_engine engine, dm_precision want, int threads, int rank,
                          dm_precision *runs) {
    *runs = (dm_precision)dm_from_rank0(rank == 0 ? (int)gemm_resolve_precision(engine, want)
                                                  : 0);
    const int quiet = dm_quiet(); /* the caller's, restored */
    dm_set_quiet(quiet || rank != 0);
    dm_status st = dm_agree(gemm_setup(engine, *runs, threads));
    dm_set_quiet(quiet);
    return st;
}

dm_status autotune_setup(dm_config *c, const char *out, const char *resume, int rank,
                         char *pnote, size_t psize, char *cnote, size_t csize) {
    /* precision = auto: rank 0 decides for the job (a rank that cannot
     * follow fails the set-up) */
    int measured = 0;
    const dm_precision want = (dm_precision)dm_from_rank0(
        rank == 0 ? (int)auto_precision(c, out, resume, pnote, psize, &measured) : 0);
    DM_TRY(autotune_engine(c->engine, want, c->threads, rank, &c->precision));
    /* conv_algo = auto likewise, once the engine runs: 0 im2col, else
     * Winograd from that image width */
    dm_config k = *c;
    const int weigh = dm_from_rank0(measured) && c->precision == DM_PREC_BF16;
    auto_conv_algo(c, out, resume, weigh, rank, &k, pnote, psize, cnote, csize);
    /* weighing Winograd may have turned precision = auto's bf16 into fp32 */
    const dm_precision was = c->precision;
    c->precision = (dm_precision)dm_from_rank0((int)k.precision);
    if (c->precision != was) DM_TRY(autotune_engine(c->engine, c->precision, c->threads, rank,
                                                    &c->precision));
    c->conv_algo = (dm_conv_algo)dm_from_rank0((int)k.conv_algo);
    c->winograd_min_width = dm_from_rank0(k.winograd_min_width);
    c->winograd4_min_width = dm_from_rank0(k.winograd4_min_width);
    return DM_OK;
}

/* OPENBLAS_CORETYPE overrides OpenBLAS's own choice of kernels; an AVX2
 * kernel set on a CPU with AVX-512 can cost half the GEMM speed
 * (docs/performance-log.md), and a CPU OpenBLAS does not know runs kernels
 * without AVX. Returns 1 and a one-line note in buf when that is the case,
 * else 0. */
static int blas_core_note(char *buf, size_t size) {
    static const char *const avx512_cores[] = {"SkylakeX", "Cooperlake", "SapphireRapids"};
    /* Cores without AVX: what OpenBLAS 0.3.21 falls back to on a CPU it
     * does not know (an Intel Xeon of family 6 model 207 ran as Prescott,
     * at a quarter of oneDNN's fp32 speed). */
    static const char *const old_cores[] = {"Prescott", "Core2", "Penryn", "Dunnington",
                                            "Nehalem", "Atom", "Katmai", "Northwood"};
    const char *forced = getenv("OPENBLAS_CORETYPE"), *core = openblas_get_corename();
    if (gemm_engine_now() != DM_ENGINE_OPENBLAS) return 0;
    if (!forced && __builtin_cpu_supports("avx2")) {
        for (size_t i = 0; i < sizeof old_cores / sizeof old_cores[0]; i++)
            if (strcasecmp(core, old_cores[i]) == 0) {
                snprintf(buf, size,
                         "note: OpenBLAS does not know this CPU and runs its %s kernels, "
                         "without AVX; engine = onednn (the default where built) or "
                         "OPENBLAS_CORETYPE=%s is several times faster (docs/performance-log.md)",
                         core, __builtin_cpu_supports("avx512f") ? "SkylakeX" : "Haswell");
                return 1;
            }
        return 0;
    }
    if (!forced || !__builtin_cpu_supports("avx512f")) return 0;
    for (size_t i = 0; i < sizeof avx512_cores / sizeof avx512_cores[0]; i++)
        if (strcasecmp(core, avx512_cores[i]) == 0) return 0;
    snprintf(buf, size, "note: OPENBLAS_CORETYPE=%s makes OpenBLAS run its %s kernels, "
             "without AVX-512, on this AVX-512 CPU, which can halve the GEMM speed "
             "(docs/performance-log.md): compare diffmpi bench with it unset", forced, core);
    return 1;
}

void autotune_print(const dm_config *c, const char *pnote, const char *cnote) {
    printf("convolution products: %s\n", gemm_describe());
    const char *conv_note = diffusion_conv_note(c);
    if (*conv_note) printf("%s\n", conv_note);
    if (pnote[0]) printf("%s\n", pnote);
    if (cnote[0]) printf("%s\n", cnote);
    char note[512];
    if (blas_core_note(note, sizeof note)) printf("%s\n", note);
}
