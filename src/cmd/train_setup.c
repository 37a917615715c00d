/* train_setup.c: a trainer's set-up and teardown (train.h): the engine
 * and what precision/conv_algo = auto become, the layout check, the output
 * directory, the data, the model and every buffer of the step loop, the
 * state of a resumed run, the judge, the log and the watchdog. */
#include "diffmpi/train.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "diffmpi/autotune.h"
#include "diffmpi/gemm.h"
#include "diffmpi/h5util.h"
#include "diffmpi/rng.h"
#include "diffmpi/sampler.h"
#include "diffmpi/train_judge.h"
#include "diffmpi/watchdog.h"

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

/* Rank 0 resolves the checkpoint path and broadcasts it. */
static dm_status resolve_resume(dm_trainer *t, const char *resume, char *path,
                                size_t size) {
    dm_status st = t->rank == 0 ? ckpt_resume_path(t->out, resume, path, size) : DM_OK;
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

/* Every worker (rank x thread) needs a micro-batch of its own. */
static dm_status check_layout(dm_trainer *t) {
    const dm_config *c = &t->cfg;
    const int m = c->micro_batch, workers = t->size * c->threads;
    t->nmb_full = (c->batch + m - 1) / m;
    if (t->nmb_full >= workers) return DM_OK;
    if (t->rank == 0)
        dm_error("batch=%d with micro_batch=%d gives %d micro-batches, work for at most "
                 "%d workers, but %d rank(s) x %d thread(s) are %d: use ranks x threads "
                 "<= %d, or a smaller micro_batch (which changes the numerics)",
                 c->batch, m, t->nmb_full, t->nmb_full, t->size, c->threads, workers,
                 t->nmb_full);
    return DM_EUSAGE;
}

/* MNIST's training and test sets (every rank reads them), or synthetic
 * data for the benchmark. */
static dm_status load_data(dm_trainer *t) {
    const dm_config *c = &t->cfg;
    if (!t->out) {
        synthetic_data(&t->train, c->batch * 4, c->seed);
        synthetic_data(&t->test, c->micro_batch, c->seed + 1);
    } else {
        dm_set_quiet(t->rank != 0);
        dm_status st = data_load(&t->train, c->data_dir, "train", c->train_limit);
        if (st == DM_OK) st = data_load(&t->test, c->data_dir, "t10k", c->eval_limit);
        DM_TRY(trainer_agree_read(t, st, c->data_dir));
    }
    t->steps_per_epoch = (t->train.n + c->batch - 1) / c->batch;
    t->total_steps = t->steps_per_epoch * c->epochs;
    return DM_OK;
}

/* The network (and the sampler's copy), the gradient exchange, and every
 * buffer the step loop uses: nothing is allocated after this. */
static void build_model(dm_trainer *t) {
    const dm_config *c = &t->cfg;
    const int m = c->micro_batch, max_mb = dist_max_local(t->nmb_full, t->size);
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
              c->bn_sync == BN_SYNC_RANK, c->reduction == REDUCTION_NODE);
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
}

/* --resume: the checkpoint's weights, optimizer state, weight average
 * (*has_ema: whether it held one) and training state. */
static dm_status resume_state(dm_trainer *t, const char *resume, int *has_ema) {
    const dm_config *c = &t->cfg;
    char path[4096] = "";
    DM_TRY(resolve_resume(t, resume, path, sizeof path));
    dm_set_quiet(t->rank != 0);
    dm_status st = check_compatible(c, path);
    if (st == DM_OK)
        st = ckpt_read_train(path, &t->net, t->m, t->v, t->ema.p ? &t->ema : NULL, has_ema,
                             &t->st);
    DM_TRY(trainer_agree_read(t, st, path));
    if (t->ema.p && !*has_ema && t->rank == 0)
        dm_error("warning: %s holds no weight average (/ema); ema_decay = %g starts "
                 "one from its weights", path, c->ema_decay);
    if (t->rank == 0)
        printf("resuming from %s (step %lld, epoch %lld)\n", path, (long long)t->st.step,
               (long long)t->st.epoch + 1);
    return DM_OK;
}

/* The log (rank 0; cut back to the checkpoint's step on resume) and the
 * watchdog. */
static dm_status open_outputs(dm_trainer *t, const char *resume) {
    dm_status st = DM_OK;
    if (t->rank == 0)
        st = log_open(&t->log, t->out, &t->cfg, dm_sigmas[DM_SIGMA_EVAL],
                      resume ? t->st.step : -1);
    DM_TRY(dm_agree(st));
    return dm_agree(watchdog_start(t->out, t->rank, t->size, t->cfg.watchdog));
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
    /* precision and conv_algo = auto become what runs, in every output */
    DM_TRY(autotune_setup(&t->cfg, out_dir, resume, t->rank, t->auto_note,
                          sizeof t->auto_note, t->conv_note, sizeof t->conv_note));
    DM_TRY(check_layout(t));
    if (out_dir) DM_TRY(prepare_out(t, resume));
    DM_TRY(load_data(t));
    build_model(t);
    int has_ema = 0;
    if (resume) DM_TRY(resume_state(t, resume, &has_ema));
    if (out_dir && t->cfg.judge[0]) DM_TRY(train_judge_open(t));
    if (t->ema.p && !has_ema) { /* a fresh average starts at the weights */
        memcpy(t->ema.p, t->net.p, sizeof(float) * (size_t)t->net.nparams);
        memcpy(t->ema.bufs, t->net.bufs, sizeof(float) * (size_t)t->net.nbuffers);
    }
    return out_dir ? open_outputs(t, resume) : DM_OK;
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
