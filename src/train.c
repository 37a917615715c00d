/* train.c: the training loop: data order, micro-batches, fixed-order
 * reductions, Adam, checkpoints, log, evaluation and signals. */
#include "diffmpi/train.h"

#include <cblas.h>
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "diffmpi/adam.h"
#include "diffmpi/ckpt.h"
#include "diffmpi/data.h"
#include "diffmpi/diffusion.h"
#include "diffmpi/fault.h"
#include "diffmpi/dist.h"
#include "diffmpi/h5log.h"
#include "diffmpi/h5util.h"
#include "diffmpi/layers.h"
#include "diffmpi/prof.h"
#include "diffmpi/rng.h"
#include "diffmpi/sampler.h"
#include "diffmpi/samples.h"
#include "diffmpi/unet.h"
#include "diffmpi/watchdog.h"

const double dm_sigmas[DM_NSIGMAS] = {0.0, 0.2, 0.4, 0.5, 0.6, 0.8, 1.0};

#define EVAL_SIGMA 0.5
#define BN_MOMENTUM 0.1f

/* Set by SIGTERM/SIGUSR1; acted upon at the next step boundary. */
static volatile sig_atomic_t stop_signal = 0;
static void on_signal(int sig) { stop_signal = sig; }

typedef struct {
    dm_config cfg;
    const char *out;
    int rank, size;
    unet net;
    dm_dist dist;
    float *grads, *m, *v;
    dm_dataset train, test;
    int32_t *perm;
    int nmb_full;
    long steps_per_epoch, total_steps;
    dm_train_state st;
    dm_log log;
    ddpm_schedule sched;
    unet sampler;    /* inference copy for sampling (diffusion models) */
    float *target;  /* [max_mb][m*784] */
    double *sse;    /* [max(max_mb, eval chunks)] */
    double *items;  /* gathered per-chunk values */
    int *n;         /* images per local micro-batch */
    double t_start;
    int bench;      /* `diffmpi bench`: synthetic data, no files */
} trainer;

/* All ranks agree on a status: the worst (largest) one wins. */
static dm_status agree(dm_status st) {
    int v = (int)st, w = 0;
    MPI_Allreduce(&v, &w, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    return (dm_status)w;
}

/* Ends a read that every rank does of the same files (data, checkpoint),
 * begun with dm_set_quiet(rank != 0): their messages would be identical, so
 * only rank 0's is printed. If rank 0 read `what` where another rank could
 * not, rank 0 says so instead; either way the job prints one line. */
static dm_status agree_read(const trainer *t, dm_status st, const char *what) {
    dm_set_quiet(0);
    int bad = st != DM_OK ? t->rank : t->size, first = t->size;
    MPI_Allreduce(&bad, &first, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    dm_status all = agree(st);
    if (t->rank == 0 && st == DM_OK && all != DM_OK)
        dm_error("%s: readable on rank 0 but not on rank %d (is it on a file system "
                 "that every node sees?)", what, first);
    return all;
}

static int exit_code(dm_status st) {
    if (st == DM_OK) return DM_EXIT_OK;
    if (st == DM_EUSAGE) return DM_EXIT_USAGE;
    if (st == DM_ESTOP) return DM_EXIT_SIGNAL;
    return DM_EXIT_RUNTIME;
}


static void load_permutation(trainer *t, int64_t epoch) {
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

static dm_status train_step(trainer *t, double *loss_out, int *bsize) {
    const dm_config *c = &t->cfg;
    int m = c->micro_batch;
    long start = t->st.batch_in_epoch * (long)c->batch;
    int B = (int)(t->train.n - start < c->batch ? t->train.n - start : c->batch);
    int nmb = (B + m - 1) / m;
    fault_step = t->st.step;
    fault_point("step");
    watchdog_beat(t->st.step, "train");
    dist_set_batch(&t->dist, nmb);
    int lo = t->dist.lo, nloc = t->dist.hi - t->dist.lo, local_images = 0;
    for (int j = 0; j < nloc; j++) {
        int first = (lo + j) * m;
        t->n[j] = B - first < m ? B - first : m;
        local_images += t->n[j];
        float *z = unet_slot(&t->net, t->net.in_buf, j);
        for (int i = 0; i < t->n[j]; i++) {
            int pos = first + i;
            int idx = t->perm[start + pos], label;
            float tin;
            diffusion_example(c, &t->sched, z + (long)i * DM_PIX,
                              t->target + (long)j * m * DM_PIX + (long)i * DM_PIX, &tin,
                              &label, t->train.images + (long)idx * DM_PIX,
                              t->train.labels[idx], t->st.step, pos);
            if (t->net.nemb) unet_set_cond(&t->net, j, i, tin, label);
        }
    }
    long bn_n = c->bn_sync == BN_RANK ? local_images : B;
    unet_zero_grad(&t->net, nloc);
    unet_forward(&t->net, 1, nloc, t->n, bn_n, dist_combine, &t->dist, BN_MOMENTUM);
    fault_point("forward");
    float scale = 1.0f / ((float)B * DM_PIX);
    double t0 = prof_start();
    for (int j = 0; j < nloc; j++) {
        long cnt = (long)t->n[j] * DM_PIX;
        t->sse[j] = mse_forward_backward(t->net.act[t->net.out_buf].grad +
                                             (long)j * t->net.act[t->net.out_buf].mb_stride,
                                         unet_slot(&t->net, t->net.out_buf, j),
                                         t->target + (long)j * m * DM_PIX, cnt, scale);
    }
    prof_add(PROF_ELEM, t0);
    unet_backward(&t->net, nloc, t->n, bn_n, dist_combine, &t->dist, dist_leaf_dst,
                  dist_leaf_done);
    fault_point("backward");
    dist_reduce_grads(&t->dist, t->grads);
    double sse = 0;
    dist_sum_mb(&t->dist, &sse, t->sse, 1, 0);
    double loss = sse / ((double)B * DM_PIX);
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
            dm_error("non-finite %s at step %lld (epoch %lld); stopping, the last "
                     "checkpoint in %s/checkpoints is kept", what,
                     (long long)t->st.step + 1, (long long)t->st.epoch + 1, t->out);
        return DM_ENUM;
    }
    fault_point("adam");
    t->st.adam_t++;
    t0 = prof_start();
    adam_step(t->net.p, t->grads, t->m, t->v, t->net.nparams, t->st.lr, t->st.adam_t);
    prof_add(PROF_OPTIM, t0);
    fault_point("after_step");
    t->st.step++;
    t->st.batch_in_epoch++;
    fault_step = t->st.step;
    return DM_OK;
}

/* ---- evaluation ------------------------------------------------------------ */

/* Test-set loss, spread over ranks in micro-batch chunks and summed in
 * chunk order (identical on every rank and rank count). Denoisers: MSE
 * against the clean image at `sigma`. Diffusion models: the training
 * objective with a fixed time per test image (a low-discrepancy sequence)
 * and the true label. */
static double train_test_mse(trainer *t, double sigma, int sigma_idx) {
    const dm_config *c = &t->cfg;
    int m = c->micro_batch, n = t->test.n, diffusion = objective_get(c->objective)->diffusion;
    int nch = (n + m - 1) / m, lo, hi;
    dist_range(nch, t->size, t->rank, &lo, &hi);
    fault_point("eval");
    float *z = unet_slot(&t->net, t->net.in_buf, 0);
    for (int ch = lo; ch < hi; ch++) {
        int k = n - ch * m < m ? n - ch * m : m;
        watchdog_beat(t->st.step, "evaluation");
        for (int i = 0; i < k; i++) {
            int img = ch * m + i;
            const float *x = t->test.images + (long)img * DM_PIX;
            float *tg = t->target + (long)i * DM_PIX, tin = 0;
            if (diffusion) {
                double tq = fmod(0.5 + 0.6180339887498949 * img, 1.0);
                diffusion_example_at(c, &t->sched, z + (long)i * DM_PIX, tg, &tin, x, tq,
                                     1000, img);
            } else {
                diffusion_noisy_at(c, z + (long)i * DM_PIX, x, sigma, (uint64_t)sigma_idx, img);
                memcpy(tg, x, sizeof(float) * DM_PIX);
            }
            if (t->net.nemb)
                unet_set_cond(&t->net, 0, i, tin,
                              c->conditioning == COND_CLASS ? t->test.labels[img] : -1);
        }
        unet_forward(&t->net, 0, 1, &k, k, NULL, NULL, 0.0f);
        const float *y = unet_slot(&t->net, t->net.out_buf, 0);
        double s = 0;
        for (long i = 0; i < (long)k * DM_PIX; i++) {
            double d = (double)y[i] - t->target[i];
            s += d * d;
        }
        t->sse[ch - lo] = s;
    }
    dist_gather_items(&t->dist, t->items, t->sse, nch);
    double total = 0;
    for (int ch = 0; ch < nch; ch++) total += t->items[ch];
    return total / ((double)n * DM_PIX);
}

/* ---- checkpoints ----------------------------------------------------------- */

static dm_status save(trainer *t) {
    dm_status st = DM_OK;
    if (t->rank == 0) {
        st = log_flush(&t->log);
        if (st == DM_OK)
            st = ckpt_write(t->out, &t->net, t->m, t->v, &t->st, &t->cfg, t->cfg.keep);
    }
    return agree(st);
}

/* ---- progress ---------------------------------------------------------------- */

static void progress(trainer *t, double loss, double ips, double *last,
                     int64_t first_step, int force) {
    static int tty = -1;
    /* Under mpirun a rank's stdout is a pty even when the job's output goes
     * to a file, so only a run without mpirun redraws one line. */
    if (tty < 0) tty = isatty(STDOUT_FILENO) && !getenv("OMPI_COMM_WORLD_SIZE");
    double now = dm_now();
    if (!force && !tty && now - *last < t->cfg.log_every) return;
    *last = now;
    long done = (long)t->st.step, left = t->total_steps - done;
    /* ETA from the steps this process has run (evaluation time included). */
    double rate = (double)(done - first_step) / (now - t->t_start + 1e-9);
    double eta = rate > 0 ? (double)left / rate : 0;
    int64_t epoch = t->st.batch_in_epoch == 0 ? t->st.epoch : t->st.epoch + 1;
    printf("%sepoch %lld/%d step %ld/%ld loss %.6f lr %.3g img/s %.1f eta %dh%02dm%s",
           tty ? "\r" : "", (long long)epoch, t->cfg.epochs, done, t->total_steps,
           loss, t->st.lr, ips, (int)(eta / 3600), (int)(fmod(eta, 3600) / 60),
           tty ? "   " : "\n");
    fflush(stdout);
}

/* ---- set-up -------------------------------------------------------------------- */

static dm_status prepare_out(trainer *t, const char *resume) {
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
    return agree(st);
}

/* Rank 0 resolves the checkpoint path and broadcasts it. */
static dm_status resolve_resume(trainer *t, const char *resume, char *path,
                                size_t size) {
    dm_status st = DM_OK;
    if (t->rank == 0) {
        if (strcmp(resume, "auto") == 0) st = ckpt_find_latest(t->out, path, size);
        else snprintf(path, size, "%s", resume);
    }
    st = agree(st);
    MPI_Bcast(path, (int)size, MPI_CHAR, 0, MPI_COMM_WORLD);
    return st;
}

/* The stored model must be the model of this run. */
static dm_status check_compatible(const dm_config *c, const char *path) {
    dm_config k;
    dm_status st = ckpt_read_config(path, &k);
    if (st != DM_OK) return st;
    if (k.hidden != c->hidden || k.objective != c->objective ||
        k.conditioning != c->conditioning) {
        dm_error("%s: checkpoint is a different model (hidden=%d objective=%s "
                 "conditioning=%s; this run: hidden=%d objective=%s conditioning=%s)",
                 path, k.hidden, config_objective_name(k.objective),
                 config_conditioning_name(k.conditioning), c->hidden,
                 config_objective_name(c->objective),
                 config_conditioning_name(c->conditioning));
        return DM_EIO;
    }
    if (k.batch != c->batch || k.micro_batch != c->micro_batch || k.seed != c->seed ||
        k.sigma != c->sigma || k.train_limit != c->train_limit ||
        k.bn_sync != c->bn_sync || k.epochs != c->epochs || k.lr != c->lr ||
        k.lr_decay != c->lr_decay)
        dm_error("warning: %s was trained with other settings (batch, micro_batch, "
                 "seed, sigma, lr, epochs, ...); the resumed run will not match an "
                 "uninterrupted one", path);
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

static dm_status setup(trainer *t, const char *resume) {
    const dm_config *c = &t->cfg;
    int m = c->micro_batch;
    t->nmb_full = (c->batch + m - 1) / m;
    if (t->nmb_full < t->size) {
        if (t->rank == 0)
            dm_error("batch=%d with micro_batch=%d gives %d micro-batches, fewer than "
                     "the %d ranks; lower micro_batch or use fewer ranks",
                     c->batch, m, t->nmb_full, t->size);
        return DM_EUSAGE;
    }
    dm_status st = t->bench ? DM_OK : prepare_out(t, resume);
    if (st != DM_OK) return st;
    if (t->bench) {
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
        unet_shape ss = diffusion_shape(c, sampler_model_rows(c), 1, 1);
        unet_init(&t->sampler, &ss);
    }
    int maxc = 0;
    for (int u = 0; u < t->net.nunits; u++)
        if (t->net.units[u].cout > maxc) maxc = t->net.units[u].cout;
    dist_init(&t->dist, MPI_COMM_WORLD, t->net.nparams, t->nmb_full, 2 * maxc,
              c->bn_sync == BN_RANK);
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
    t->items = dm_calloc((size_t)nch, sizeof(double));
    t->n = dm_calloc((size_t)max_mb, sizeof(int));
    t->st.lr = c->lr;
    if (resume) {
        char path[4096] = "";
        st = resolve_resume(t, resume, path, sizeof path);
        if (st != DM_OK) return st;
        dm_set_quiet(t->rank != 0);
        st = check_compatible(c, path);
        if (st == DM_OK) st = ckpt_read(path, &t->net, t->m, t->v, &t->st);
        st = agree_read(t, st, path);
        if (st != DM_OK) return st;
        if (t->rank == 0)
            printf("resuming from %s (step %lld, epoch %lld)\n", path,
                   (long long)t->st.step, (long long)t->st.epoch + 1);
    }
    if (t->rank == 0 && !t->bench)
        st = log_open(&t->log, t->out, c, EVAL_SIGMA, resume ? t->st.step : -1);
    st = agree(st);
    if (st == DM_OK && !t->bench)
        st = agree(watchdog_start(t->out, t->rank, t->size, c->watchdog));
    return st;
}

static void teardown(trainer *t) {
    watchdog_stop();
    if (t->rank == 0 && !t->bench) log_close(&t->log);
    unet_free(&t->net);
    if (t->sampler.arena) unet_free(&t->sampler);
    dist_free(&t->dist);
    data_free(&t->train);
    data_free(&t->test);
    free(t->grads), free(t->m), free(t->v), free(t->perm), free(t->target);
    free(t->sse), free(t->items), free(t->n);
}

/* ---- the loop -------------------------------------------------------------------- */

static dm_status epoch_end(trainer *t) {
    const dm_config *c = &t->cfg;
    int epoch = (int)t->st.epoch + 1; /* 1-based, just finished */
    fault_point("epoch_end");
    double mse = train_test_mse(t, EVAL_SIGMA, 3);
    dm_status st = DM_OK;
    if (t->rank == 0) {
        if (objective_get(c->objective)->diffusion)
            printf("epoch %d/%d done: test loss = %.6f\n", epoch, c->epochs, mse);
        else
            printf("epoch %d/%d done: test MSE at sigma %.1f = %.6f\n", epoch, c->epochs,
                   EVAL_SIGMA, mse);
        fflush(stdout);
        st = log_eval(&t->log, t->st.step, epoch, mse);
    }
    st = agree(st);
    int diffusion = objective_get(c->objective)->diffusion;
    if (st == DM_OK && diffusion && config_sample_epoch(c, epoch)) {
        memcpy(t->sampler.p, t->net.p, sizeof(float) * (size_t)t->net.nparams);
        memcpy(t->sampler.bufs, t->net.bufs, sizeof(float) * (size_t)t->net.nbuffers);
        st = samples_diffusion(t->out, &t->net, &t->sampler, c, &t->sched, &t->train,
                               epoch, t->rank);
    }
    if (st == DM_OK && !diffusion && (epoch == 1 || epoch == c->epochs))
        st = samples_epoch(t->out, &t->net, c, &t->test, epoch, t->rank);
    if (st == DM_OK && !diffusion && epoch == c->epochs) {
        double mses[DM_NSIGMAS];
        for (int s = 0; s < DM_NSIGMAS; s++) mses[s] = train_test_mse(t, dm_sigmas[s], s);
        st = samples_ood(t->out, &t->net, c, &t->test, mses, t->rank);
    }
    st = agree(st);
    t->st.epoch++;
    t->st.batch_in_epoch = 0;
    if (c->lr_decay == LR_EXP) t->st.lr *= pow(0.1, 1.0 / c->epochs);
    if (st == DM_OK) st = save(t);
    return st;
}

static dm_status loop(trainer *t) {
    const dm_config *c = &t->cfg;
    double last_print = 0, loss = 0;
    int64_t loaded_epoch = -1, first_step = t->st.step;
    /* Tests stop a run at an exact step as if SIGUSR1 had arrived then. */
    const char *env = getenv("DIFFMPI_TEST_STOP_AT_STEP");
    int64_t test_stop_step = env ? atoll(env) : 0;
    dm_status st = DM_OK;
    if (t->rank == 0 && t->st.step == 0 && !objective_get(c->objective)->diffusion)
        st = samples_noising(t->out, c, &t->test);
    st = agree(st);
    while (st == DM_OK && t->st.epoch < c->epochs) {
        if (loaded_epoch != t->st.epoch) {
            load_permutation(t, t->st.epoch);
            loaded_epoch = t->st.epoch;
        }
        double t0 = dm_now();
        int B = 0;
        st = train_step(t, &loss, &B);
        if (st != DM_OK) break;
        double ips = B / (dm_now() - t0);
        if (t->rank == 0) {
            st = log_step(&t->log, t->st.step - 1, (int32_t)t->st.epoch + 1, loss,
                          t->st.lr, dm_now() - t->t_start, ips);
            progress(t, loss, ips, &last_print, first_step, 0);
        }
        fault_point("signal_check");
        int sig = stop_signal, any = 0;
        if (test_stop_step > 0 && t->st.step == test_stop_step) sig = SIGUSR1;
        MPI_Allreduce(&sig, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
        st = agree(st);
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
            if (t->rank == 0)
                printf("\nstopped by signal %d after step %lld; checkpoint written, "
                       "resume with --resume auto\n", any, (long long)t->st.step);
            if (st == DM_OK) st = DM_ESTOP;
        }
    }
    if (t->rank == 0 && st == DM_OK) {
        progress(t, loss, 0, &last_print, first_step, 1);
        printf("done: %lld steps; outputs in %s\n", (long long)t->st.step, t->out);
        if (objective_get(c->objective)->diffusion)
            printf("samples: %s/samples-epoch-%d.png; all figures: tools/figures.py %s\n",
                   t->out, c->epochs, t->out);
    }
    return st;
}

/* Peak resident set size of this process in MiB (VmHWM), 0 if unknown. */
static double peak_rss_mib(void) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    double kib = 0;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "VmHWM: %lf", &kib) == 1) break;
    if (f) fclose(f);
    return kib / 1024.0;
}

int train_run(const dm_config *cfg, const char *out_dir, const char *resume) {
    trainer t;
    memset(&t, 0, sizeof t);
    t.cfg = *cfg;
    t.out = out_dir;
    t.t_start = dm_now();
    MPI_Comm_rank(MPI_COMM_WORLD, &t.rank);
    MPI_Comm_size(MPI_COMM_WORLD, &t.size);
    openblas_set_num_threads(cfg->threads);
    fault_init(t.rank);
    const char *nan_env = getenv("DIFFMPI_TEST_NAN_GRAD");
    test_nan_step = nan_env ? atoll(nan_env) : -1;
    h5_quiet();
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGUSR1, &sa, NULL);
    if (t.rank == 0) {
        char text[8192];
        config_to_string(cfg, text, sizeof text);
        printf("diffmpi train: %d rank(s), out %s\n%s", t.size, out_dir, text);
        fflush(stdout);
    }
    dm_status st = setup(&t, resume);
    if (st == DM_OK) {
        if (t.rank == 0) {
            printf("model: D=%d, %ld parameters; %ld steps per epoch, %d micro-batches "
                   "of %d per full batch\n", cfg->hidden, t.net.nparams,
                   t.steps_per_epoch, t.nmb_full, cfg->micro_batch);
            fflush(stdout);
        }
        st = loop(&t);
        double mine = peak_rss_mib(), peak = 0;
        MPI_Reduce(&mine, &peak, 1, MPI_DOUBLE, MPI_MAX, 0, MPI_COMM_WORLD);
        if (t.rank == 0) printf("peak memory per rank: %.0f MiB (largest rank)\n", peak);
    }
    teardown(&t);
    return exit_code(st);
}

/* ---- benchmark ------------------------------------------------------------------ */

/* Every rank runs the same conv-shaped sgemm for `secs` at the same time:
 * the machine's own peak for this job's ranks x threads. Returns this
 * rank's GFLOP/s. */
static double sgemm_rate(int M, int N, int K, double secs) {
    float *a = dm_calloc((size_t)M * K, sizeof(float)), *b = dm_calloc((size_t)K * N, sizeof(float));
    float *c = dm_calloc((size_t)M * N, sizeof(float));
    for (long i = 0; i < (long)M * K; i++) a[i] = (float)(i % 7) * 0.01f;
    for (long i = 0; i < (long)K * N; i++) b[i] = (float)(i % 5) * 0.01f;
    /* A [M x K] times B [K x N] into C [M x N], no transposes: the shape of
     * a convolution's forward GEMM (weights x im2col columns). */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, N, K, 1.0f, a, K, b, N, 0.0f, c, N);
    MPI_Barrier(MPI_COMM_WORLD);
    double t0 = dm_now(), t;
    long calls = 0;
    do {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, N, K, 1.0f, a, K, b, N, 0.0f,
                    c, N);
        calls++;
    } while ((t = dm_now() - t0) < secs);
    free(a), free(b), free(c);
    return 2.0 * M * (double)N * K * calls / t / 1e9;
}

static void cpu_name(char *buf, size_t size) {
    FILE *f = fopen("/proc/cpuinfo", "r");
    char line[512];
    snprintf(buf, size, "unknown CPU");
    while (f && fgets(line, sizeof line, f)) {
        char *p = strchr(line, ':');
        if (strncmp(line, "model name", 10) == 0 && p) {
            p += 2;
            p[strcspn(p, "\n")] = '\0';
            snprintf(buf, size, "%s", p);
            break;
        }
    }
    if (f) fclose(f);
}

static void bench_layers(const unet *u, double images) {
    printf("per-layer analytic FLOP per image (forward / backward, GFLOP):\n");
    for (int i = 0; i < u->nunits; i++) {
        double f, b;
        unet_unit_flops(u, i, &f, &b);
        if (f > 0) printf("  %-10s %8.4f / %8.4f\n", u->units[i].name, f / 1e9, b / 1e9);
    }
    double f, b;
    unet_fc_flops(u, &f, &b);
    if (f > 0) printf("  %-10s %8.4f / %8.4f\n", "FCBlocks", f / 1e9, b / 1e9);
    printf("  total      %8.4f / %8.4f  (x %.0f images)\n", unet_forward_flops(u) / 1e9,
           (unet_train_flops(u) - unet_forward_flops(u)) / 1e9, images);
}

/* Timed training steps (or sampler steps): wall seconds. */
static double bench_timed(trainer *t, int steps, int sample, int warm) {
    const dm_config *c = &t->cfg;
    double loss;
    int B;
    int32_t labels[SAMPLES_N];
    for (int i = 0; i < SAMPLES_N; i++)
        labels[i] = c->conditioning == COND_CLASS ? i / 4 : -1;
    sampler_request q = {.n = SAMPLES_N, .labels = labels, .guidance = (float)c->guidance,
                         .steps = steps, .seed = c->seed};
    static float img[SAMPLES_N * DM_PIX];
    MPI_Barrier(MPI_COMM_WORLD);
    prof_reset();
    t->dist.sent_early = t->dist.sent_late = 0;
    prof_enable(!warm);
    double t0 = dm_now();
    if (sample) {
        sampler_run(&t->sampler, c, &q, img, NULL, NULL);
    } else {
        for (int s = 0; s < steps; s++) {
            if (t->st.batch_in_epoch == t->steps_per_epoch) t->st.batch_in_epoch = 0;
            if (train_step(t, &loss, &B) != DM_OK) break;
        }
    }
    MPI_Barrier(MPI_COMM_WORLD);
    double secs = dm_now() - t0;
    prof_enable(0);
    return secs;
}

static void bench_report(const trainer *t, int steps, int sample, double secs,
                         double peak_rank, double peak_sum) {
    const dm_config *c = &t->cfg;
    double ph[PROF_NPHASES], avg[PROF_NPHASES];
    MPI_Reduce(prof_total, ph, PROF_NPHASES, MPI_DOUBLE, MPI_SUM, 0, MPI_COMM_WORLD);
    double mine = peak_rss_mib(), mem = 0;
    MPI_Reduce(&mine, &mem, 1, MPI_DOUBLE, MPI_MAX, 0, MPI_COMM_WORLD);
    long sent[2] = {t->dist.sent_early, t->dist.sent_late}, sent_all[2] = {0, 0};
    MPI_Reduce(sent, sent_all, 2, MPI_LONG, MPI_SUM, 0, MPI_COMM_WORLD);
    if (t->rank != 0) return;
    int rows = sample && c->conditioning == COND_CLASS && c->guidance != 1.0 ? 2 : 1;
    double work = sample ? (double)steps * SAMPLES_N * rows * unet_forward_flops(&t->net)
                         : (double)steps * c->batch * unet_train_flops(&t->net);
    double gflops = work / secs / 1e9;
    /* At least four significant digits, so that the rate can be checked
     * against the time printed beside it even for tiny runs. */
    int dec = secs >= 1.0 ? 3 : 5;
    if (sample) {
        printf("sampling: %d steps of %d images%s in %.*f s: %.1f image-steps/s\n", steps,
               SAMPLES_N, rows == 2 ? " (x2 for guidance)" : "", dec, secs,
               steps * SAMPLES_N / secs);
        int full = diffusion_steps(c);
        printf("  projected: %d images with %d steps in %.1f s\n", SAMPLES_N, full,
               secs / steps * full);
    } else {
        printf("training: %d steps of %d images in %.*f s: %.2f images/s\n", steps, c->batch,
               dec, secs, steps * (double)c->batch / secs);
    }
    printf("  %.1f GFLOP/s (analytic GEMM FLOPs), %.1f %% of the measured sgemm peak "
           "(%.1f GFLOP/s = %d rank(s) x %.1f)\n",
           gflops, 100.0 * gflops / peak_sum, peak_sum, t->size, peak_rank);
    double acc = 0;
    printf("  time per phase (average over ranks, %% of wall time):\n");
    for (int p = 0; p < PROF_NPHASES; p++) {
        avg[p] = ph[p] / t->size;
        acc += avg[p];
        printf("    %-22s %8.3f s  %5.1f %%\n", prof_name((prof_phase)p), avg[p],
               100.0 * avg[p] / secs);
    }
    printf("    %-22s %8.3f s  %5.1f %%\n", "other (unaccounted)", secs - acc,
           100.0 * (secs - acc) / secs);
    if (!sample && t->size > 1)
        printf("  gradient segments sent while backward ran: %ld of %ld\n", sent_all[0],
               sent_all[0] + sent_all[1]);
    printf("  peak memory per rank: %.0f MiB (largest rank)\n", mem);
}

int bench_run(const dm_config *cfg, int steps, int sample, int verbose) {
    trainer t;
    memset(&t, 0, sizeof t);
    t.cfg = *cfg;
    t.bench = 1;
    t.t_start = dm_now();
    MPI_Comm_rank(MPI_COMM_WORLD, &t.rank);
    MPI_Comm_size(MPI_COMM_WORLD, &t.size);
    openblas_set_num_threads(cfg->threads);
    dm_status st = setup(&t, NULL);
    if (st == DM_OK && sample && !objective_get(cfg->objective)->diffusion) {
        if (t.rank == 0) dm_error("--sample needs a diffusion model (objective ddpm or flow)");
        st = DM_EUSAGE;
    }
    if (st != DM_OK) {
        teardown(&t);
        return exit_code(st);
    }
    if (sample) {
        memcpy(t.sampler.p, t.net.p, sizeof(float) * (size_t)t.net.nparams);
        memcpy(t.sampler.bufs, t.net.bufs, sizeof(float) * (size_t)t.net.nbuffers);
    }
    if (t.rank == 0) {
        char cpu[256];
        cpu_name(cpu, sizeof cpu);
        printf("diffmpi bench: %d rank(s) x %d thread(s); %s\n", t.size, cfg->threads, cpu);
        printf("OpenBLAS %s, core %s\n", openblas_get_config(), openblas_get_corename());
        printf("model: objective=%s conditioning=%s D=%d, batch %d, micro_batch %d; "
               "%.3f GFLOP per training image\n",
               config_objective_name(cfg->objective),
               config_conditioning_name(cfg->conditioning), cfg->hidden, cfg->batch,
               cfg->micro_batch, unet_train_flops(&t.net) / 1e9);
        if (verbose) bench_layers(&t.net, 1);
        fflush(stdout);
    }
    /* The peak: the network's most common GEMM, a 3x3 conv D -> D at 28x28,
     * over the image group the convolutions use (conv_group), whose column
     * matrix stays in cache: the best shape the step has. */
    int D = cfg->hidden, m = cfg->micro_batch;
    int group = conv_group(m, 9L * D * DM_PIX);
    double rate = sgemm_rate(D, group * DM_PIX, 9 * D, 1.5), sum = 0;
    MPI_Allreduce(&rate, &sum, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
    double per = sum / t.size;
    bench_timed(&t, sample ? 1 : 2, sample, 1);
    double secs = bench_timed(&t, steps, sample, 0);
    bench_report(&t, steps, sample, secs, per, sum);
    teardown(&t);
    return DM_EXIT_OK;
}
