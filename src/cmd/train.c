/* train.c: the training loop: data order, micro-batches, fixed-order
 * reductions, Adam, checkpoints, log, evaluation and signals. */
/* pthread_sigmask, sigtimedwait: POSIX beside C11. */
#define _POSIX_C_SOURCE 200809L
#include "diffmpi/train.h"

#include <cblas.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "diffmpi/adam.h"
#include "diffmpi/ckpt.h"
#include "diffmpi/data.h"
#include "diffmpi/diffusion.h"
#include "diffmpi/fault.h"
#include "diffmpi/figures.h"
#include "diffmpi/gemm.h"
#include "diffmpi/dist.h"
#include "diffmpi/h5log.h"
#include "diffmpi/h5util.h"
#include "diffmpi/layers.h"
#include "diffmpi/par.h"
#include "diffmpi/prof.h"
#include "diffmpi/rng.h"
#include "diffmpi/sampler.h"
#include "diffmpi/samples.h"
#include "diffmpi/unet.h"
#include "diffmpi/watchdog.h"

#define EVAL_SIGMA dm_sigmas[DM_SIGMA_EVAL]
/* The judge's samples draw their noise with seed + SCORE_SEED, a stream
 * apart from the figure's 40 (seed). */
#define SCORE_SEED 0x9E3779B97F4A7C15ull

/* SIGTERM/SIGUSR1 ask for a checkpoint and an exit at the next step
 * boundary. They are blocked in the thread that computes (and so in every
 * thread it starts: OpenMP's, the watchdog's) and collected at the step
 * boundary with sigtimedwait, because no signal may be taken by a thread
 * inside a product: oneDNN 2.6's JIT sgemm (the no-copy kernel its matmul
 * picks for some shapes) points rsp into a heap workspace while it runs,
 * and the kernel writes the signal frame below rsp, over other heap memory.
 * At D=128 one USR1 forwarded by mpirun corrupted the heap in 4 of 9 tries
 * ("double free or corruption"; oneDNN issue 4845, fixed upstream in 2026,
 * after the 2.6.3 that Debian 12 ships; docs/design.md, "Signals").
 * Threads that MPI_Init started before the block (Open MPI's, which only
 * wait in poll) can still take a signal sent to the process: there the
 * handler records it. */
static volatile sig_atomic_t stop_signal = 0;
static sigset_t stop_signals;
static void on_signal(int sig) { stop_signal = sig; }

static void catch_stop_signals(void) {
    sigemptyset(&stop_signals);
    sigaddset(&stop_signals, SIGTERM);
    sigaddset(&stop_signals, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &stop_signals, NULL);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGUSR1, &sa, NULL);
}

/* The stop signal that arrived since the run began (pending for this
 * thread or the process, or taken by another thread), or 0. */
static int stop_signal_seen(void) {
    const struct timespec now = {0, 0};
    int sig = sigtimedwait(&stop_signals, NULL, &now);
    if (sig > 0 && !stop_signal) stop_signal = sig;
    return stop_signal;
}

/* Ends a read that every rank does of the same files (data, checkpoint),
 * begun with dm_set_quiet(rank != 0): their messages would be identical, so
 * only rank 0's is printed. If rank 0 read `what` where another rank could
 * not, rank 0 says so instead; either way the job prints one line. */
static dm_status agree_read(const dm_trainer *t, dm_status st, const char *what) {
    dm_set_quiet(0);
    int bad = st != DM_OK ? t->rank : t->size, first = t->size;
    MPI_Allreduce(&bad, &first, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    dm_status all = dm_agree(st);
    if (t->rank == 0 && st == DM_OK && all != DM_OK)
        dm_error("%s: readable on rank 0 but not on rank %d (is it on a file system "
                 "that every node sees?)", what, first);
    return all;
}



static void load_permutation(dm_trainer *t, int64_t epoch) {
    dm_rng r;
    rng_init(&r, t->cfg.seed, DM_STREAM_SHUFFLE, (uint64_t)epoch, 0);
    rng_permutation(&r, t->perm, t->train.n);
}

/* ---- one optimizer step -------------------------------------------------- */

/* Test hook: DIFFMPI_TEST_NAN_GRAD=k poisons one gradient entry at step k. */
static int64_t test_nan_step = -1;

static int all_finite(const float *x, long n) {
    /* A sum of x*0 is NaN iff some x is Inf or NaN; one vectorizable pass. */
    float acc = 0.0f;
    for (long i = 0; i < n; i++) acc += x[i] * 0.0f;
    return acc == 0.0f;
}

double train_batch(unet *net, dm_dist *dist, const dm_objective_def *o, float *grads,
                   double *sse, const float *target, int nloc, const int *n, int B,
                   long bn_n, float bn_momentum) {
    unet_zero_grad(net, nloc);
    unet_forward(net, 1, nloc, n, bn_n, dist_combine, dist, bn_momentum);
    fault_point("forward");
    const unet_buf *out = &net->act[net->out_buf];
    float scale = 1.0f / ((float)B * o->loss_per_image);
    double t0 = prof_start();
    for (int j = 0; j < nloc; j++) {
        int correct;
        sse[j] = o->loss(out->grad + (long)j * out->mb_stride, &correct,
                         unet_slot(net, net->out_buf, j),
                         target + (long)j * net->m * o->target_floats, n[j], scale);
    }
    prof_add(PROF_ELEM, t0);
    unet_backward(net, nloc, n, bn_n, dist_combine, dist, dist_leaf_dst, dist_leaf_merge,
                  dist_segment_done);
    fault_point("backward");
    dist_reduce_grads(dist, grads);
    double total = 0;
    dist_sum_mb(dist, &total, sse, 1, 0);
    return total / ((double)B * o->loss_per_image);
}

/* Global batch number `batch` of the epoch's permutation into this rank's
 * micro-batch slots (inputs, conditioning, targets), its noise, times and
 * dropped labels drawn under `key` (the step; bn_recalibrate's batches use
 * keys past every step). Returns the batch size B; *nloc and *bn_n: this
 * rank's micro-batches and the images BatchNorm's statistics count. */
static int load_batch(dm_trainer *t, long batch, int64_t key, int *nloc, long *bn_n) {
    const dm_config *c = &t->cfg;
    const dm_objective_def *o = objective_get(c->objective);
    int m = c->micro_batch;
    long start = batch * (long)c->batch;
    int B = (int)(t->train.n - start < c->batch ? t->train.n - start : c->batch);
    dist_set_batch(&t->dist, (B + m - 1) / m);
    int lo = t->dist.lo, local_images = 0;
    *nloc = t->dist.hi - t->dist.lo;
    for (int j = 0; j < *nloc; j++) {
        int first = (lo + j) * m;
        t->n[j] = B - first < m ? B - first : m;
        local_images += t->n[j];
        float *z = unet_slot(&t->net, t->net.in_buf, j);
        for (int i = 0; i < t->n[j]; i++) {
            int pos = first + i;
            int idx = t->perm[start + pos], label;
            float tin;
            diffusion_example(c, &t->sched, z + (long)i * DM_PIX,
                              t->target + ((long)j * m + i) * o->target_floats, &tin,
                              &label, t->train.images + (long)idx * DM_PIX,
                              t->train.labels[idx], key, pos);
            if (t->net.nemb) unet_set_cond(&t->net, j, i, tin, label);
        }
    }
    *bn_n = c->bn_sync == BN_RANK ? local_images : B;
    return B;
}

dm_status trainer_step(dm_trainer *t, double *loss_out, int *bsize) {
    const dm_config *c = &t->cfg;
    const dm_objective_def *o = objective_get(c->objective);
    fault_step = t->st.step;
    fault_point("step");
    watchdog_beat(t->st.step, "train");
    int nloc;
    long bn_n;
    int B = load_batch(t, t->st.batch_in_epoch, t->st.step, &nloc, &bn_n);
    double loss = train_batch(&t->net, &t->dist, o, t->grads, t->sse, t->target, nloc,
                              t->n, B, bn_n, NORM_BN_MOMENTUM);
    *loss_out = loss;
    *bsize = B;
    if (test_nan_step >= 0 && t->st.step == test_nan_step) t->grads[t->net.nparams / 2] = NAN;
    /* Every rank holds the same loss and gradient, so all decide alike. A
     * non-finite gradient with a finite loss would poison the weights, and
     * the next checkpoint with them. */
    const char *what = !isfinite(loss) ? "loss" : all_finite(t->grads, t->net.nparams)
                                                      ? NULL : "gradient";
    if (what) {
        if (t->rank == 0)
            dm_error("non-finite %s at step %lld (epoch %lld); stopping%s%s%s", what,
                     (long long)t->st.step + 1, (long long)t->st.epoch + 1,
                     t->out ? ", the last checkpoint in " : "", t->out ? t->out : "",
                     t->out ? "/checkpoints is kept" : "");
        return DM_ENUM;
    }
    fault_point("adam");
    t->st.adam_t++;
    double t0 = prof_start();
    adam_step(t->net.p, t->grads, t->m, t->v, t->net.nparams, t->st.lr, t->st.adam_t);
    if (t->ema.p) {
        double d = ema_decay_at(c->ema_decay, (long)t->st.adam_t);
        ema_update(t->ema.p, t->net.p, t->net.nparams, d);
        ema_update(t->ema.bufs, t->net.bufs, t->net.nbuffers, d);
    }
    prof_add(PROF_OPTIM, t0);
    fault_point("after_step");
    t->st.step++;
    t->st.batch_in_epoch++;
    fault_step = t->st.step;
    return DM_OK;
}

/* ---- evaluation ------------------------------------------------------------ */

/* Test-set loss (and accuracy, for classifiers), spread over ranks in
 * micro-batch chunks and summed in chunk order (identical on every rank and
 * rank count). Denoisers: MSE against the clean image at `sigma`. Diffusion
 * models: the training objective with a fixed time per test image (a
 * low-discrepancy sequence) and the true label. Classifiers: the
 * cross-entropy and the share of test images classified right. */
static double train_test_loss(dm_trainer *t, double sigma, int sigma_idx, double *acc) {
    const dm_config *c = &t->cfg;
    const dm_objective_def *o = objective_get(c->objective);
    int m = c->micro_batch, n = t->test.n;
    int nch = (n + m - 1) / m, lo, hi;
    dist_range(nch, t->size, t->rank, &lo, &hi);
    fault_point("eval");
    unet *net = &t->net;
    unet_eval_ready(net);
    double last = dm_now();
    /* Chunks over the rank's threads, each with a slot, target and scratch
     * copy of its own (unet_forward_one): the same numbers on any thread. */
    const int nr = net->nscratch;
#pragma omp parallel for num_threads(nr) schedule(static) if (nr > 1 && hi - lo > 1)
    for (int ch = lo; ch < hi; ch++) {
        const int r = par_thread();
        int k = n - ch * m < m ? n - ch * m : m;
        if (r == 0) {
            watchdog_beat(t->st.step, "evaluation");
            if (t->rank == 0 && dm_now() - last >= c->log_every) {
                /* Rank 0's first thread stands for all: equal shares. */
                last = dm_now();
                char at[32] = "";
                if (o->denoiser) snprintf(at, sizeof at, " at sigma %.1f", sigma);
                printf("evaluating on %d test images%s: %d%%\n", n, at,
                       (int)(100.0 * (ch - lo) * nr / (hi - lo)));
                fflush(stdout);
            }
        }
        float *z = unet_slot(net, net->in_buf, r), *target = t->target + (long)r * m * o->target_floats;
        for (int i = 0; i < k; i++) {
            int img = ch * m + i, label = t->test.labels[img];
            const float *x = t->test.images + (long)img * DM_PIX;
            float *tg = target + (long)i * o->target_floats, tin = 0;
            if (o->denoiser) {
                diffusion_noisy_at(c, z + (long)i * DM_PIX, x, sigma, (uint64_t)sigma_idx, img);
                memcpy(tg, x, sizeof(float) * DM_PIX);
            } else {
                double tq = fmod(0.5 + 0.6180339887498949 * img, 1.0);
                diffusion_example_at(c, &t->sched, z + (long)i * DM_PIX, tg, &tin, x, label,
                                     tq, 1000, img);
            }
            if (net->nemb)
                unet_set_cond(net, r, i, tin, c->conditioning == CONDITIONING_CLASS ? label : -1);
        }
        unet_forward_one(net, r, k, r);
        int correct = 0;
        /* The output gradient slot is free outside a step: the loss's
         * gradient lands there unused. */
        const unet_buf *ob = &net->act[net->out_buf];
        t->sse[ch - lo] = o->loss(ob->grad + (long)r * ob->mb_stride, &correct,
                                  unet_slot(net, net->out_buf, r), target, k, 0.0f);
        t->correct[ch - lo] = correct;
    }
    dist_gather_items(&t->dist, t->items, t->sse, nch);
    double total = 0;
    for (int ch = 0; ch < nch; ch++) total += t->items[ch];
    dist_gather_items(&t->dist, t->items, t->correct, nch);
    double right = 0;
    for (int ch = 0; ch < nch; ch++) right += t->items[ch];
    if (acc) *acc = right / n;
    return total / ((double)n * o->loss_per_image);
}

/* ---- checkpoints ----------------------------------------------------------- */

static dm_status save(dm_trainer *t) {
    dm_status st = DM_OK;
    if (t->rank == 0) {
        st = log_flush(&t->log);
        if (st == DM_OK)
            st = ckpt_write(t->out, &t->net, t->m, t->v, t->ema.p ? &t->ema : NULL, &t->st,
                            &t->cfg, t->cfg.keep);
        /* At an epoch's end (the next step is an epoch's first). */
        int epoch = (int)t->st.epoch;
        if (st == DM_OK && t->st.batch_in_epoch == 0 && epoch >= 1 &&
            config_keep_epoch(&t->cfg, epoch)) {
            char name[64];
            snprintf(name, sizeof name, "epoch-%d.h5", epoch);
            st = ckpt_keep_as(t->out, (long)t->st.step, name);
            if (st == DM_OK) {
                printf("epoch %d/%d: checkpoint kept as checkpoints/%s\n", epoch,
                       t->cfg.epochs, name);
                fflush(stdout);
            }
        }
    }
    return dm_agree(st);
}

/* ---- progress ---------------------------------------------------------------- */

static void progress(dm_trainer *t, double loss, double ips, double *last,
                     int64_t first_step, int force) {
    int tty = t->tty;
    double now = dm_now();
    if (!force && !tty && now - *last < t->cfg.log_every) return;
    *last = now;
    long done = (long)t->st.step, left = t->total_steps - done;
    /* ETA from the steps this process has run (evaluation time included). */
    double rate = (double)(done - first_step) / (now - t->t_start + 1e-9);
    double eta = rate > 0 ? (double)left / rate : 0;
    int64_t epoch = t->st.batch_in_epoch == 0 ? t->st.epoch : t->st.epoch + 1;
    char score[64] = "";
    if (!isnan(t->score_acc))
        snprintf(score, sizeof score, " acc %.3f fd %.2f", t->score_acc, t->score_fd);
    else if (!isnan(t->score_fd))
        snprintf(score, sizeof score, " fd %.2f", t->score_fd);
    printf("%sepoch %lld/%d step %ld/%ld loss %.6f lr %.3g img/s %.1f%s eta %dh%02dm%s",
           tty ? "\r" : "", (long long)epoch, t->cfg.epochs, done, t->total_steps,
           loss, t->st.lr, ips, score, (int)(eta / 3600), (int)(fmod(eta, 3600) / 60),
           tty ? "   " : "\n");
    fflush(stdout);
}

/* ---- set-up -------------------------------------------------------------------- */

static dm_status prepare_out(dm_trainer *t, const char *resume) {
    dm_status st = DM_OK;
    if (t->rank == 0) {
        st = fs_mkdirs(t->out);
        if (st == DM_OK) {
            char probe[4300];
            snprintf(probe, sizeof probe, "%s/.write-test", t->out);
            FILE *f = fopen(probe, "w");
            if (!f || fclose(f) != 0 || unlink(probe) != 0) {
                dm_error("%s: output directory is not writable: %s", t->out,
                         strerror(errno));
                st = DM_EIO;
            }
        }
        if (st == DM_OK) ckpt_remove_stale(t->out);
        if (st == DM_OK && !resume && ckpt_any(t->out)) {
            dm_error("%s already holds checkpoints of a run; resume it with "
                     "--resume auto or choose a new --out", t->out);
            st = DM_EUSAGE;
        }
    }
    return dm_agree(st);
}

/* The checkpoint --resume names: "auto" is out's latest, anything else a
 * path. One rank's view (resolve_resume makes it the job's). */
static dm_status resume_path(const char *out, const char *resume, char *path, size_t size) {
    if (strcmp(resume, "auto") == 0) return ckpt_find_latest(out, path, size);
    snprintf(path, size, "%s", resume);
    return DM_OK;
}

/* Rank 0 resolves the checkpoint path and broadcasts it. */
static dm_status resolve_resume(dm_trainer *t, const char *resume, char *path,
                                size_t size) {
    dm_status st = t->rank == 0 ? resume_path(t->out, resume, path, size) : DM_OK;
    st = dm_agree(st);
    MPI_Bcast(path, (int)size, MPI_CHAR, 0, MPI_COMM_WORLD);
    return st;
}

/* The stored model must be the model of this run. */
/* The settings that define the network a checkpoint holds, as text. */
static void model_text(const dm_config *c, char *buf, size_t size) {
    int n = snprintf(buf, size, "hidden=%d objective=%s conditioning=%s norm=%s", c->hidden,
                     config_objective_name(c->objective),
                     config_conditioning_name(c->conditioning), norm_name((int)c->norm));
    if (c->norm == NORM_GROUP && n >= 0 && (size_t)n < size)
        snprintf(buf + n, size - (size_t)n, " norm_groups=%d", c->norm_groups);
}

static dm_status check_compatible(const dm_config *c, const char *path) {
    dm_config k;
    dm_status st = ckpt_read_config(path, &k);
    if (st != DM_OK) return st;
    /* The same network: what diffusion_shape builds from each, and the
     * objective its output means. */
    unet_shape a = diffusion_shape(&k, 1, 0, 1), b = diffusion_shape(c, 1, 0, 1);
    if (k.objective != c->objective || a.D != b.D || a.mix != b.mix || a.norm != b.norm ||
        (a.norm == NORM_GROUP && a.groups != b.groups)) {
        char stored[160], mine[160];
        model_text(&k, stored, sizeof stored);
        model_text(c, mine, sizeof mine);
        dm_error("%s: checkpoint is a different model (%s; this run: %s)", path, stored, mine);
        return DM_EIO;
    }
    if (k.batch != c->batch || k.micro_batch != c->micro_batch || k.seed != c->seed ||
        k.sigma != c->sigma || k.train_limit != c->train_limit ||
        k.bn_sync != c->bn_sync || k.epochs != c->epochs || k.lr != c->lr ||
        k.lr_decay != c->lr_decay || k.precision != c->precision || k.engine != c->engine)
        dm_error("warning: %s was trained with other settings (batch, micro_batch, "
                 "seed, sigma, lr, epochs, precision, engine, ...); the resumed run will "
                 "not match an uninterrupted one", path);
    return DM_OK;
}

/* Benchmark data: uniform pixels and labels, identical on every rank. */
static void synthetic_data(dm_dataset *d, int n, uint64_t seed) {
    dm_rng r;
    rng_init(&r, seed, DM_STREAM_EVAL, 777, 0);
    d->n = n;
    d->images = dm_malloc(sizeof(float) * (size_t)n * DM_PIX);
    d->labels = dm_malloc((size_t)n);
    for (long i = 0; i < (long)n * DM_PIX; i++) d->images[i] = rng_uniform(&r);
    for (int i = 0; i < n; i++) d->labels[i] = (uint8_t)rng_below(&r, 10);
}

int blas_core_note(char *buf, size_t size) {
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

/* The configuration of the checkpoint a resumed run starts from, into k;
 * 0 if there is none (a fresh run, or no checkpoint yet: the run's own
 * errors say so later). */
static int resumed_config(const char *out, const char *resume, dm_config *k) {
    char path[4096] = "";
    if (!resume || !out) return 0;
    dm_set_quiet(1);
    dm_status st = resume_path(out, resume, path, sizeof path);
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
 * cannot: on a Zen 5 the probe said 1.85x and the bf16 run was 0.84x as
 * fast as fp32 with Winograd. So here the precision is decided again from
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
 * ratio (1.08x against 1.15x on a Zen 5; docs/performance-log.md). Every rank
 * then makes the same choice from the same figures; rank 0's k is the one
 * the caller broadcasts, and only rank 0 reads the checkpoint. */
#define CONV_AUTO_MARGIN 1.05
#define BF16_AUTO_MARGIN 1.1
static void auto_conv_algo(const dm_config *c, const char *out, const char *resume, int weigh,
                           int rank, dm_config *k, char *pnote, size_t psize, char *note,
                           size_t size) {
    note[0] = '\0';
    if (c->conv_algo == CONV_IM2COL || (c->conv_algo == CONV_WINOGRAD && !weigh)) return;
    dm_config ck;
    if (c->conv_algo == CONV_AUTO) k->conv_algo = CONV_IM2COL;
    const int kept = dm_from_rank0(rank == 0 && c->conv_algo == CONV_AUTO &&
                                   resumed_config(out, resume, &ck) &&
                                   ck.conv_algo != CONV_AUTO);
    if (kept) {
        if (rank != 0) return;
        k->conv_algo = ck.conv_algo;
        k->winograd_min_width = ck.winograd_min_width;
        k->winograd4_min_width = ck.winograd4_min_width;
        snprintf(note, size, "conv_algo = auto: %s, as the checkpoint ran",
                 ck.conv_algo == CONV_WINOGRAD ? "winograd" : "im2col");
        return;
    }
    if (gemm_precision_now() != DM_FP32 && !weigh) {
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
    if (weigh) gemm_use_precision(DM_FP32);
    int nw = unet_conv_timings(&shapes, c->micro_batch, 2, UNET_CONV_TIMED, width, secs, MAXW);
    MPI_Allreduce(MPI_IN_PLACE, secs, UNET_CONV_TIMED * nw, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    if (weigh) {
        gemm_use_precision(DM_BF16);
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
    if (c->conv_algo == CONV_WINOGRAD) /* weighing the user's plan */
        w2 = c->winograd_min_width, w4 = c->winograd4_min_width;
    if (weigh && nw > 0 && share > 0) {
        /* a step's products in each precision, in units of the fp32 im2col
         * time of the 3x3 layers; the rows' times from the ratios, so that
         * the test hooks reach them */
        double i32 = 0, plan = 0, i16 = 0;
        char bl[160] = "";
        const int win = c->conv_algo == CONV_WINOGRAD || w2 || w4;
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
            k->precision = DM_BF16;
            if (c->conv_algo == CONV_AUTO)
                snprintf(note, size, "conv_algo = auto: im2col, as the products run in bf16");
            return;
        }
        k->precision = DM_FP32;
        gemm_use_precision(DM_FP32);
    }
    if (c->conv_algo != CONV_AUTO) return;
    if (!nw) {
        snprintf(note, size, "conv_algo = auto: im2col, as no convolution is 3x3 stride 1");
        return;
    }
    if (!w4 && !w2) {
        snprintf(note, size, "conv_algo = auto chose im2col: Winograd F(2x2)/F(4x4) ran %s as "
                 "fast", list);
        return;
    }
    k->conv_algo = CONV_WINOGRAD;
    k->winograd_min_width = w2 ? w2 : w4;
    k->winograd4_min_width = w4;
    char f4[64] = "", f2[64] = "";
    if (w4) snprintf(f4, sizeof f4, "F(4x4,3x3) for images at least %d wide", w4);
    if (w2) snprintf(f2, sizeof f2, "F(2x2,3x3) for images at least %d wide", w2);
    snprintf(note, size, "conv_algo = auto chose winograd %s%s%s: F(2x2)/F(4x4) ran %s as fast "
             "as im2col", f4, w4 && w2 ? ", " : "", f2, list);
}

/* judge = PATH: the judge and its reference statistics, the whole MNIST
 * test set (whatever eval_limit says, so that the distance is the one
 * `diffmpi score` reports). */
static dm_status open_judge(dm_trainer *t) {
    const dm_config *c = &t->cfg;
    dm_status st = judge_open(&t->judge, c->judge, CKPT_WEIGHTS_AUTO);
    if (st != DM_OK) return st;
    /* eval_limit = 0: the run already holds the whole test set. */
    dm_dataset ref = {0}, *all = &t->test;
    if (c->eval_limit != 0) {
        dm_set_quiet(t->rank != 0);
        st = agree_read(t, data_load(&ref, c->data_dir, "t10k", 0), c->data_dir);
        if (st != DM_OK) return st;
        all = &ref;
    }
    double t0 = dm_now();
    dm_set_quiet(t->rank != 0);
    st = dm_agree(judge_reference(&t->judge, "the MNIST test set", all->images, all->n));
    dm_set_quiet(0);
    if (all == &ref) data_free(&ref);
    if (st == DM_OK && t->rank == 0) {
        printf("judge: %s (crc32 %08x, %d features; reference: %d MNIST test images, "
               "%.1f s); %d samples scored per sampling epoch\n", c->judge,
               (unsigned)t->judge.crc, t->judge.F, t->judge.ref_n, dm_now() - t0, c->score_n);
        fflush(stdout);
    }
    return st;
}

dm_status trainer_setup(dm_trainer *t, const dm_config *cfg, const char *out_dir,
                        const char *resume) {
    memset(t, 0, sizeof *t);
    t->cfg = *cfg;
    t->out = out_dir;
    t->score_acc = t->score_fd = NAN;
    t->t_start = dm_now();
    MPI_Comm_rank(MPI_COMM_WORLD, &t->rank);
    MPI_Comm_size(MPI_COMM_WORLD, &t->size);
    /* Under mpirun a rank's stdout is a pty even when the job's output goes
     * to a file, so only a run without mpirun redraws one line. */
    t->tty = isatty(STDOUT_FILENO) && !getenv("OMPI_COMM_WORLD_SIZE");
    const dm_config *c = &t->cfg;
    /* precision = auto becomes what runs, in every output: rank 0 decides
     * for the job (a rank that cannot follow fails setup). */
    int measured = 0;
    t->cfg.precision = (dm_precision)dm_from_rank0(
        t->rank == 0 ? (int)auto_precision(c, out_dir, resume, t->auto_note,
                                           sizeof t->auto_note, &measured)
                     : 0);
    dm_set_quiet(t->rank != 0);
    dm_status gst = dm_agree(gemm_setup(c->engine, c->precision, c->threads));
    dm_set_quiet(0);
    if (gst != DM_OK) return gst;
    /* conv_algo = auto likewise, once the engine runs: 0 im2col, else
     * Winograd from that image width */
    dm_config k = t->cfg;
    const int weigh = dm_from_rank0(measured) && t->cfg.precision == DM_BF16;
    auto_conv_algo(c, out_dir, resume, weigh, t->rank, &k, t->auto_note, sizeof t->auto_note,
                   t->conv_note, sizeof t->conv_note);
    /* weighing Winograd may have turned precision = auto's bf16 into fp32 */
    const dm_precision was = t->cfg.precision;
    t->cfg.precision = (dm_precision)dm_from_rank0((int)k.precision);
    if (t->cfg.precision != was) {
        dm_set_quiet(t->rank != 0);
        gst = dm_agree(gemm_setup(c->engine, c->precision, c->threads));
        dm_set_quiet(0);
        if (gst != DM_OK) return gst;
    }
    t->cfg.conv_algo = (dm_conv_algo)dm_from_rank0((int)k.conv_algo);
    t->cfg.winograd_min_width = dm_from_rank0(k.winograd_min_width);
    t->cfg.winograd4_min_width = dm_from_rank0(k.winograd4_min_width);
    int synthetic = out_dir == NULL;
    int m = c->micro_batch;
    t->nmb_full = (c->batch + m - 1) / m;
    /* Every worker (rank x thread) needs a micro-batch of its own. */
    const int workers = t->size * c->threads;
    if (t->nmb_full < workers) {
        if (t->rank == 0)
            dm_error("batch=%d with micro_batch=%d gives %d micro-batches, work for at most "
                     "%d workers, but %d rank(s) x %d thread(s) are %d: use ranks x threads "
                     "<= %d, or a smaller micro_batch (which changes the numerics)",
                     c->batch, m, t->nmb_full, t->nmb_full, t->size, c->threads, workers,
                     t->nmb_full);
        return DM_EUSAGE;
    }
    dm_status st = synthetic ? DM_OK : prepare_out(t, resume);
    if (st != DM_OK) return st;
    if (synthetic) {
        synthetic_data(&t->train, c->batch * 4, c->seed);
        synthetic_data(&t->test, m, c->seed + 1);
    } else {
        dm_set_quiet(t->rank != 0);
        st = data_load(&t->train, c->data_dir, "train", c->train_limit);
        if (st == DM_OK) st = data_load(&t->test, c->data_dir, "t10k", c->eval_limit);
        st = agree_read(t, st, c->data_dir);
        if (st != DM_OK) return st;
    }
    t->steps_per_epoch = (t->train.n + c->batch - 1) / c->batch;
    t->total_steps = t->steps_per_epoch * c->epochs;
    int max_mb = dist_max_local(t->nmb_full, t->size);
    ddpm_schedule_init(&t->sched);
    unet_shape sh = diffusion_shape(c, m, max_mb, 0);
    unet_init(&t->net, &sh);
    unet_init_params(&t->net, c->seed);
    if (objective_get(c->objective)->diffusion) {
        unet_shape ss = diffusion_shape(c, sampler_model_rows(c), sampler_model_slots(c), 1);
        unet_init(&t->sampler, &ss);
    }
    int maxc = 0;
    for (int u = 0; u < t->net.nunits; u++)
        if (t->net.units[u].cout > maxc) maxc = t->net.units[u].cout;
    dist_init(&t->dist, MPI_COMM_WORLD, t->net.nparams, t->nmb_full, 2 * maxc,
              c->bn_sync == BN_RANK, c->reduction == REDUCTION_NODE);
    dist_set_threads(&t->dist, t->net.nthreads);
    long seg_off[UNET_MAX_SEGMENTS], seg_len[UNET_MAX_SEGMENTS];
    int nseg = unet_grad_segments(&t->net, seg_off, seg_len);
    dist_set_segments(&t->dist, nseg, seg_off, seg_len);
    t->grads = dm_calloc((size_t)t->net.nparams, sizeof(float));
    t->m = dm_calloc((size_t)t->net.nparams, sizeof(float));
    t->v = dm_calloc((size_t)t->net.nparams, sizeof(float));
    t->perm = dm_calloc((size_t)t->train.n, sizeof(int32_t));
    t->target = dm_calloc((size_t)max_mb * m * DM_PIX, sizeof(float));
    int nch = (t->test.n + m - 1) / m;
    t->sse = dm_calloc((size_t)(nch > max_mb ? nch : max_mb), sizeof(double));
    t->correct = dm_calloc((size_t)nch, sizeof(double));
    t->items = dm_calloc((size_t)nch, sizeof(double));
    t->n = dm_calloc((size_t)max_mb, sizeof(int));
    t->st.lr = c->lr;
    if (c->ema_decay > 0) {
        t->ema.p = dm_malloc(sizeof(float) * (size_t)t->net.nparams);
        t->ema.bufs = dm_malloc(sizeof(float) * (size_t)t->net.nbuffers + 1);
    }
    int has_ema = 0;
    if (resume) {
        char path[4096] = "";
        st = resolve_resume(t, resume, path, sizeof path);
        if (st != DM_OK) return st;
        dm_set_quiet(t->rank != 0);
        st = check_compatible(c, path);
        if (st == DM_OK)
            st = ckpt_read_train(path, &t->net, t->m, t->v, t->ema.p ? &t->ema : NULL,
                                 &has_ema, &t->st);
        st = agree_read(t, st, path);
        if (st != DM_OK) return st;
        if (t->ema.p && !has_ema && t->rank == 0)
            dm_error("warning: %s holds no weight average (/ema); ema_decay = %g starts "
                     "one from its weights", path, c->ema_decay);
        if (t->rank == 0)
            printf("resuming from %s (step %lld, epoch %lld)\n", path,
                   (long long)t->st.step, (long long)t->st.epoch + 1);
    }
    if (!synthetic && c->judge[0]) {
        st = open_judge(t);
        if (st != DM_OK) return st;
    }
    if (t->ema.p && !has_ema) {
        memcpy(t->ema.p, t->net.p, sizeof(float) * (size_t)t->net.nparams);
        memcpy(t->ema.bufs, t->net.bufs, sizeof(float) * (size_t)t->net.nbuffers);
    }
    if (t->rank == 0 && !synthetic)
        st = log_open(&t->log, t->out, c, EVAL_SIGMA, resume ? t->st.step : -1);
    st = dm_agree(st);
    if (st == DM_OK && !synthetic)
        st = dm_agree(watchdog_start(t->out, t->rank, t->size, c->watchdog));
    return st;
}

void trainer_teardown(dm_trainer *t) {
    watchdog_stop();
    /* After train_run closed it (checked) this is a no-op; after a failure
     * its result changes nothing. */
    if (t->rank == 0 && t->out) (void)log_close(&t->log);
    unet_free(&t->net);
    if (t->sampler.arena) unet_free(&t->sampler);
    judge_close(&t->judge);
    dist_free(&t->dist);
    data_free(&t->train);
    data_free(&t->test);
    free(t->grads), free(t->m), free(t->v), free(t->perm), free(t->target);
    free(t->ema.p), free(t->ema.bufs);
    free(t->sse), free(t->correct), free(t->items), free(t->n);
    gemm_teardown();
}

/* ---- the loop -------------------------------------------------------------------- */

/* judge = PATH: score_n fresh samples (class models: equal runs of each
 * digit), their noise a stream of its own (not the figure's 40), judged;
 * the figures go to the eval row and the progress line. Collective. */
static dm_status score_epoch(dm_trainer *t, int epoch, dm_eval_row *row) {
    const dm_config *c = &t->cfg;
    int n = c->score_n, cls = c->conditioning == CONDITIONING_CLASS;
    int32_t *labels = dm_malloc(sizeof(int32_t) * (size_t)n);
    float *img = dm_malloc(sizeof(float) * (size_t)n * DM_PIX);
    for (int i = 0; i < n; i++) labels[i] = cls ? (int32_t)((long)i * 10 / n) : -1;
    char what[96];
    snprintf(what, sizeof what, "epoch %d: sampling %d images for the judge", epoch, n);
    sampler_request q;
    sampler_request_init(&q, c);
    q.n = n;
    q.labels = labels;
    q.seed = c->seed + SCORE_SEED;
    q.progress = what;
    double t0 = dm_now();
    sampler_run(&t->sampler, c, &q, img, NULL, NULL);
    MPI_Bcast(img, n * DM_PIX, MPI_FLOAT, 0, MPI_COMM_WORLD);
    dm_score s;
    snprintf(what, sizeof what, "epoch %d samples", epoch);
    dm_set_quiet(t->rank != 0);
    dm_status st = dm_agree(judge_score(&t->judge, what, img, labels, n, &s));
    dm_set_quiet(0);
    if (st != DM_OK) {
        /* Samples the judge cannot score (a non-finite pixel) say something
         * about the model, not the run: the scores stay NaN, training goes
         * on. */
        if (t->rank == 0)
            dm_error("warning: epoch %d: samples not scored (above); training goes on", epoch);
        row->sample_acc = row->sample_fd = NAN;
        st = DM_OK;
    } else {
        row->sample_acc = t->score_acc = s.acc;
        row->sample_fd = t->score_fd = s.fd;
        if (t->rank == 0) {
            printf("epoch %d/%d samples: ", epoch, c->epochs);
            if (cls) printf("judge accuracy %.4f (confidence %.3f), ", s.acc, s.conf);
            printf("Frechet distance %.3f, digit entropy %.3f, over %d images (%.0f s)\n",
                   s.fd, s.entropy, n, dm_now() - t0);
            fflush(stdout);
        }
    }
    free(labels);
    free(img);
    return st;
}

/* ---- BatchNorm recalibration ---------------------------------------------------- */

/* bn_recalibrate = K: at an epoch end the running statistics become the
 * plain average of the batch statistics of K training batches under the
 * epoch's final weights (train-mode forwards without backward, momentum
 * 1/(k+1): a cumulative average, what PyTorch's momentum = None keeps),
 * instead of an exponential average over weights that kept moving
 * ("precise BN"). The batches are the first K of the epoch's order, their
 * noise, times and dropped labels drawn under keys past every training
 * step, so the statistics are the same for any rank count and on resume.
 * With ema_decay the weight average gets its own statistics the same way.
 * Collective; the weights and Adam's state are not touched. */
#define BNCAL_KEY ((int64_t)1 << 62)

static void recalibrate_pass(dm_trainer *t, int K) {
    for (int k = 0; k < K; k++) {
        watchdog_beat(t->st.step, "BatchNorm recalibration");
        int nloc;
        long bn_n;
        load_batch(t, k % t->steps_per_epoch, BNCAL_KEY + t->st.epoch * (int64_t)K + k, &nloc,
                   &bn_n);
        unet_forward(&t->net, 1, nloc, t->n, bn_n, dist_combine, &t->dist,
                     1.0f / (float)(k + 1));
    }
}

static void swap_floats(float *a, float *b, long n) {
    for (long i = 0; i < n; i++) {
        float x = a[i];
        a[i] = b[i];
        b[i] = x;
    }
}

static void bn_recalibrate(dm_trainer *t, int epoch) {
    int K = t->cfg.bn_recalibrate;
    if (K == 0 || t->cfg.norm != NORM_BATCH) return;
    double t0 = dm_now();
    recalibrate_pass(t, K);
    if (t->ema.p) {
        /* The average's weights and statistics into the model and back. */
        swap_floats(t->net.p, t->ema.p, t->net.nparams);
        swap_floats(t->net.bufs, t->ema.bufs, t->net.nbuffers);
        recalibrate_pass(t, K);
        swap_floats(t->net.p, t->ema.p, t->net.nparams);
        swap_floats(t->net.bufs, t->ema.bufs, t->net.nbuffers);
    }
    if (t->rank == 0) {
        printf("epoch %d/%d: BatchNorm statistics recomputed over %d training batch%s%s "
               "(%.1f s)\n", epoch, t->cfg.epochs, K, K == 1 ? "" : "es",
               t->ema.p ? " for the weights and their average" : "", dm_now() - t0);
        fflush(stdout);
    }
}

/* ---- figures: computed by figures.h, written by samples.h (rank 0) ------------ */

static dm_status noising_figure(dm_trainer *t) {
    float *img = dm_malloc(sizeof(float) * DM_NSIGMAS * SAMPLES_K * DM_PIX);
    figures_noising(&t->cfg, &t->test, img);
    dm_status st = samples_write_noising(t->out, &t->cfg, img);
    free(img);
    return st;
}

static dm_status denoise_figures(dm_trainer *t, int epoch) {
    if (t->rank != 0) return DM_OK;
    float *img = dm_malloc(sizeof(float) * 3 * SAMPLES_K * DM_PIX);
    figures_denoise(&t->net, &t->cfg, &t->test, img);
    dm_status st = samples_write_denoise(t->out, &t->cfg, epoch, img);
    free(img);
    return st;
}

static dm_status ood_figures(dm_trainer *t, const double *mses) {
    if (t->rank != 0) return DM_OK;
    float *img = dm_malloc(sizeof(float) * 2 * DM_NSIGMAS * DM_PIX);
    figures_ood(&t->net, &t->cfg, &t->test, img);
    dm_status st = samples_write_ood(t->out, &t->cfg, img, mses);
    free(img);
    return st;
}

/* Collective: the samples spread over the ranks, rank 0 writes. */
static dm_status diffusion_figures(dm_trainer *t, int epoch) {
    figures_diffusion f;
    figures_diffusion_run(&f, &t->net, &t->sampler, &t->cfg, &t->sched, &t->train, epoch,
                          t->rank);
    dm_status st = t->rank == 0 ? samples_write_diffusion(t->out, &t->cfg, &f.data) : DM_OK;
    figures_diffusion_free(&f);
    return st;
}

static dm_status epoch_end(dm_trainer *t) {
    const dm_config *c = &t->cfg;
    const dm_objective_def *o = objective_get(c->objective);
    int epoch = (int)t->st.epoch + 1; /* 1-based, just finished */
    fault_point("epoch_end");
    bn_recalibrate(t, epoch);
    double acc = NAN, loss = train_test_loss(t, EVAL_SIGMA, DM_SIGMA_EVAL, &acc);
    dm_eval_row row = {.step = t->st.step, .epoch = epoch, .test_loss = loss,
                       .test_mse = o->loss_per_image == DM_PIX ? loss : NAN,
                       .test_acc = o->classes ? acc : NAN, .sample_acc = NAN,
                       .sample_fd = NAN};
    if (t->rank == 0) {
        if (o->classes)
            printf("epoch %d/%d done: test loss = %.6f, test accuracy = %.2f%%\n", epoch,
                   c->epochs, loss, 100.0 * acc);
        else if (o->diffusion)
            printf("epoch %d/%d done: test loss = %.6f\n", epoch, c->epochs, loss);
        else
            printf("epoch %d/%d done: test MSE at sigma %.1f = %.6f\n", epoch, c->epochs,
                   EVAL_SIGMA, loss);
        fflush(stdout);
    }
    dm_status st = DM_OK;
    if (o->diffusion && config_sample_epoch(c, epoch)) {
        trainer_sync_sampler(t);
        st = diffusion_figures(t, epoch);
    }
    st = dm_agree(st);
    if (st == DM_OK && t->judge.ref_n && config_sample_epoch(c, epoch))
        st = score_epoch(t, epoch, &row);
    if (st == DM_OK && o->denoiser && (epoch == 1 || epoch == c->epochs))
        st = denoise_figures(t, epoch);
    if (st == DM_OK && o->denoiser && epoch == c->epochs) {
        double mses[DM_NSIGMAS];
        for (int s = 0; s < DM_NSIGMAS; s++) /* the epoch's own figure is mses[DM_SIGMA_EVAL] */
            mses[s] = s == DM_SIGMA_EVAL ? loss : train_test_loss(t, dm_sigmas[s], s, NULL);
        st = ood_figures(t, mses);
    }
    st = dm_agree(st);
    if (st == DM_OK && t->rank == 0) st = log_eval(&t->log, &row);
    st = dm_agree(st);
    t->st.epoch++;
    t->st.batch_in_epoch = 0;
    if (c->lr_decay == LR_EXP) t->st.lr *= pow(0.1, 1.0 / c->epochs);
    if (st == DM_OK) st = save(t);
    return st;
}

static dm_status loop(dm_trainer *t) {
    const dm_config *c = &t->cfg;
    double last_print = 0, loss = 0;
    int64_t loaded_epoch = -1, first_step = t->st.step;
    /* Tests stop a run at an exact step as if SIGUSR1 had arrived then. */
    const char *env = getenv("DIFFMPI_TEST_STOP_AT_STEP");
    int64_t test_stop_step = env ? atoll(env) : 0;
    dm_status st = DM_OK;
    if (t->rank == 0 && t->st.step == 0 && objective_get(c->objective)->denoiser)
        st = noising_figure(t);
    st = dm_agree(st);
    while (st == DM_OK && t->st.epoch < c->epochs) {
        if (loaded_epoch != t->st.epoch) {
            load_permutation(t, t->st.epoch);
            loaded_epoch = t->st.epoch;
        }
        double t0 = dm_now();
        int B = 0;
        st = trainer_step(t, &loss, &B);
        if (st != DM_OK) break;
        double ips = B / (dm_now() - t0);
        if (t->rank == 0) {
            st = log_step(&t->log, t->st.step - 1, (int32_t)t->st.epoch + 1, loss,
                          t->st.lr, dm_now() - t->t_start, ips);
            progress(t, loss, ips, &last_print, first_step, 0);
        }
        fault_point("signal_check");
        int sig = stop_signal_seen(), any = 0;
        if (test_stop_step > 0 && t->st.step == test_stop_step) sig = SIGUSR1;
        MPI_Allreduce(&sig, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
        st = dm_agree(st);
        if (st != DM_OK) break;
        int saved = 0;
        if (t->st.batch_in_epoch == t->steps_per_epoch) {
            st = epoch_end(t);
            saved = 1;
        } else if (c->checkpoint_every > 0 && t->st.step % c->checkpoint_every == 0) {
            st = save(t);
            saved = 1;
        }
        if (st == DM_OK && any) {
            if (!saved) st = save(t);
            if (st == DM_OK) {
                t->stopped_by = any; /* said last, by train_run */
                st = DM_ESTOP;
            }
        }
    }
    if (t->rank == 0 && st == DM_OK) {
        if (t->st.step > first_step)
            progress(t, loss, 0, &last_print, first_step, 1);
        else /* resumed from its last checkpoint: no step ran, no loss to show */
            printf("nothing to train: the run had already finished its %ld steps\n",
                   t->total_steps);
        printf("done: %lld steps; outputs in %s\n", (long long)t->st.step, t->out);
        if (objective_get(c->objective)->diffusion)
            printf("samples: %s/samples-epoch-%d.png; all figures: tools/figures.py %s\n",
                   t->out, c->epochs, t->out);
        if (t->judge.ref_n && !isnan(t->score_fd)) {
            printf("score of the last epoch's %d samples (judge %s): ", c->score_n, c->judge);
            if (!isnan(t->score_acc)) printf("accuracy %.4f, ", t->score_acc);
            printf("Frechet distance %.3f\n", t->score_fd);
        }
    }
    return st;
}

void trainer_sync_sampler(dm_trainer *t) {
    const float *p = t->ema.p ? t->ema.p : t->net.p;
    const float *b = t->ema.p ? t->ema.bufs : t->net.bufs;
    memcpy(t->sampler.p, p, sizeof(float) * (size_t)t->net.nparams);
    memcpy(t->sampler.bufs, b, sizeof(float) * (size_t)t->net.nbuffers);
}


int train_run(const dm_config *cfg, const char *out_dir, const char *resume) {
    int rank;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    fault_init(rank);
    const char *nan_env = getenv("DIFFMPI_TEST_NAN_GRAD");
    test_nan_step = nan_env ? atoll(nan_env) : -1;
    h5_quiet();
    catch_stop_signals();
    if (rank == 0) {
        int size;
        MPI_Comm_size(MPI_COMM_WORLD, &size);
        char text[8192];
        config_to_string(cfg, text, sizeof text);
        printf("diffmpi train: %d rank(s), out %s\n%s", size, out_dir, text);
        fflush(stdout);
    }
    dm_trainer t;
    dm_status st = trainer_setup(&t, cfg, out_dir, resume);
    if (st == DM_OK) {
        if (t.rank == 0) {
            printf("model: D=%d, %ld parameters; %ld steps per epoch, %d micro-batches "
                   "of %d per full batch\n", cfg->hidden, t.net.nparams,
                   t.steps_per_epoch, t.nmb_full, cfg->micro_batch);
            const int w = t.size * cfg->threads, lo = t.nmb_full / w;
            printf("layout: %d rank(s) x %d thread(s) = %d workers, each %d%s micro-batch(es) "
                   "of a full batch\n", t.size, cfg->threads, w, lo,
                   t.nmb_full % w ? " or one more" : "");
            printf("gradient reduction: %s, %d node(s) x %d rank(s)%s%s\n",
                   t.dist.node_aware ? "node-aware" : "flat", t.dist.nodes, t.dist.node_ranks,
                   *t.dist.flat_why ? ": " : "", t.dist.flat_why);
            printf("convolution products: %s\n", gemm_describe());
            const char *conv_note = diffusion_conv_note(&t.cfg);
            if (*conv_note) printf("%s\n", conv_note);
            if (t.auto_note[0]) printf("%s\n", t.auto_note);
            if (t.conv_note[0]) printf("%s\n", t.conv_note);
            char note[512];
            if (blas_core_note(note, sizeof note)) printf("%s\n", note);
            fflush(stdout);
        }
        st = loop(&t);
        /* The log's last rows reach the disk at its close: a failed close
         * fails the run (teardown's second close is then a no-op). */
        dm_status closed = t.rank == 0 ? log_close(&t.log) : DM_OK;
        if (st == DM_OK) st = dm_agree(closed);
        double mine = dm_peak_rss_mib(), peak = 0;
        MPI_Reduce(&mine, &peak, 1, MPI_DOUBLE, MPI_MAX, 0, MPI_COMM_WORLD);
        if (t.rank == 0) printf("peak memory per rank: %.0f MiB (largest rank)\n", peak);
        /* A requested stop ends the output with what to do next (the
         * launchers keep it the last line). */
        if (t.rank == 0 && t.stopped_by)
            printf("\nstopped by signal %d after step %lld; checkpoint written, "
                   "resume with --resume auto\n", t.stopped_by, (long long)t.st.step);
    }
    trainer_teardown(&t);
    return dm_exit_code(st);
}
