/* train.c: the trainer (train.h): one optimizer step over micro-batches
 * with fixed-order reductions and Adam, the loop over epochs with its
 * checkpoints, log, evaluation and figures, and the stop signals. Set-up:
 * train_setup.c (with autotune.c); the judge's scores: train_judge.c;
 * BatchNorm recalibration: recalibrate.c. */
/* pthread_sigmask, sigtimedwait: POSIX beside C11. */
#define _POSIX_C_SOURCE 200809L
#include "diffmpi/train.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "diffmpi/adam.h"
#include "diffmpi/autotune.h"
#include "diffmpi/ckpt.h"
#include "diffmpi/diffusion.h"
#include "diffmpi/fault.h"
#include "diffmpi/figures.h"
#include "diffmpi/h5util.h"
#include "diffmpi/layers.h"
#include "diffmpi/par.h"
#include "diffmpi/prof.h"
#include "diffmpi/recalibrate.h"
#include "diffmpi/rng.h"
#include "diffmpi/samples.h"
#include "diffmpi/train_judge.h"
#include "diffmpi/watchdog.h"

#define EVAL_SIGMA dm_sigmas[DM_SIGMA_EVAL]

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
dm_status trainer_agree_read(const dm_trainer *t, dm_status st, const char *what) {
    dm_set_quiet(0);
    int bad = st != DM_OK ? t->rank : t->size, first = t->size;
    MPI_Allreduce(&bad, &first, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    dm_status all = dm_agree(st);
    if (t->rank == 0 && st == DM_OK && all != DM_OK)
        dm_error("%s: readable on rank 0 but not on rank %d (is it on a file system "
                 "that every node sees?)", what, first);
    return all;
}

/* The epoch's order of the training images, the same on every rank. */
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
int trainer_load_batch(dm_trainer *t, long batch, int64_t key, int *nloc, long *bn_n) {
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
    *bn_n = c->bn_sync == BN_SYNC_RANK ? local_images : B;
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
    int B = trainer_load_batch(t, t->st.batch_in_epoch, t->st.step, &nloc, &bn_n);
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

static void progress(const dm_trainer *t, double loss, double ips, double *last,
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
    train_bn_recalibrate(t, epoch);
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
        st = train_judge_epoch(t, epoch, &row);
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
    if (c->lr_decay == LR_DECAY_EXP) t->st.lr *= pow(0.1, 1.0 / c->epochs);
    if (st == DM_OK) st = save(t);
    return st;
}

/* ---- the loop -------------------------------------------------------------------- */

/* A stop asked for on any rank (SIGTERM/SIGUSR1, or the test hook
 * DIFFMPI_TEST_STOP_AT_STEP=k at step k): the signal, the same on every
 * rank; 0 for none. Collective. */
static int stop_requested(const dm_trainer *t, int64_t test_stop_step) {
    fault_point("signal_check");
    int sig = stop_signal_seen(), any = 0;
    if (test_stop_step > 0 && t->st.step == test_stop_step) sig = SIGUSR1;
    MPI_Allreduce(&sig, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    return any;
}

/* After a step: the epoch's end (evaluation, figures, checkpoint), or a
 * checkpoint every checkpoint_every steps, or one because a stop was
 * asked for (then DM_ESTOP). */
static dm_status after_step(dm_trainer *t, int stop) {
    const dm_config *c = &t->cfg;
    dm_status st = DM_OK;
    int saved = 0;
    if (t->st.batch_in_epoch == t->steps_per_epoch) {
        st = epoch_end(t);
        saved = 1;
    } else if (c->checkpoint_every > 0 && t->st.step % c->checkpoint_every == 0) {
        st = save(t);
        saved = 1;
    }
    if (st != DM_OK || !stop) return st;
    if (!saved) DM_TRY(save(t));
    t->stopped_by = stop; /* said last, by train_run */
    return DM_ESTOP;
}

/* Rank 0, a finished run: the last progress line, where the outputs are,
 * and the judge's last score. */
static void summary(const dm_trainer *t, double loss, double *last_print, int64_t first_step) {
    const dm_config *c = &t->cfg;
    if (t->st.step > first_step)
        progress(t, loss, 0, last_print, first_step, 1);
    else /* resumed from its last checkpoint: no step ran, no loss to show */
        printf("nothing to train: the run had already finished its %ld steps\n",
               t->total_steps);
    printf("done: %lld steps; outputs in %s\n", (long long)t->st.step, t->out);
    if (objective_get(c->objective)->diffusion)
        printf("samples: %s/samples-epoch-%d.png; all figures: tools/figures.py %s\n", t->out,
               c->epochs, t->out);
    if (t->judge.ref_n && !isnan(t->score_fd)) {
        printf("score of the last epoch's %d samples (judge %s): ", c->score_n, c->judge);
        if (!isnan(t->score_acc)) printf("accuracy %.4f, ", t->score_acc);
        printf("Frechet distance %.3f\n", t->score_fd);
    }
}

static dm_status loop(dm_trainer *t) {
    const dm_config *c = &t->cfg;
    double last_print = 0, loss = 0;
    int64_t loaded_epoch = -1, first_step = t->st.step;
    const char *env = getenv("DIFFMPI_TEST_STOP_AT_STEP");
    const int64_t test_stop_step = env ? atoll(env) : 0;
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
        int stop = stop_requested(t, test_stop_step);
        st = dm_agree(st);
        if (st == DM_OK) st = after_step(t, stop);
    }
    if (t->rank == 0 && st == DM_OK) summary(t, loss, &last_print, first_step);
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
            autotune_print(&t.cfg, t.auto_note, t.conv_note);
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
