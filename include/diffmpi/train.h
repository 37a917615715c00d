/* train.h: the training driver (`diffmpi train`), and the trainer it is
 * built from, which `diffmpi bench` drives on synthetic data.
 *
 * train_run is called on every rank with the same validated configuration;
 * it returns the process exit code (DM_EXIT_*), identical on every rank.
 *
 *   dm_trainer t;
 *   trainer_setup(&t, cfg, out_dir, resume);   // out_dir NULL: synthetic
 *   trainer_step(&t, &loss, &images);           // one optimizer step
 *   trainer_teardown(&t);
 */
#ifndef DIFFMPI_TRAIN_H
#define DIFFMPI_TRAIN_H

#include "diffmpi/ckpt.h"
#include "diffmpi/config.h"
#include "diffmpi/data.h"
#include "diffmpi/diffusion.h"
#include "diffmpi/dist.h"
#include "diffmpi/h5log.h"
#include "diffmpi/score.h"
#include "diffmpi/unet.h"

typedef struct {
    dm_config cfg;
    const char *out;    /* output directory; NULL: synthetic data, no files */
    int rank, size;
    unet net;
    dm_dist dist;
    float *grads, *m, *v;
    ckpt_ema ema;       /* ema_decay > 0: the average ([nparams], [nbuffers]) */
    dm_dataset train, test;
    int32_t *perm;
    int nmb_full;
    long steps_per_epoch, total_steps;
    dm_train_state st;
    dm_log log;
    ddpm_schedule sched;
    unet sampler;       /* inference copy for sampling (diffusion models) */
    dm_judge judge;     /* judge = PATH: scores the samples (ref_n > 0) */
    double score_acc, score_fd; /* the last epoch's scores (NaN: none yet) */
    float *target;      /* [max_mb][m*784] */
    double *sse;        /* [max(max_mb, eval chunks)] */
    double *correct;    /* [eval chunks]: test images classified right */
    double *items;      /* gathered per-chunk values */
    int *n;             /* images per local micro-batch */
    double t_start;
    int tty;            /* progress redraws one line (a terminal, no mpirun) */
    char auto_note[448]; /* rank 0: how precision = auto was decided ("" if set) */
    int stopped_by;      /* the signal that stopped the run after a checkpoint (0: none) */
    char conv_note[448]; /* rank 0: how conv_algo = auto was decided ("" if set) */
} dm_trainer;

/* resume: NULL (fresh run), "auto" or a checkpoint path. */
int train_run(const dm_config *c, const char *out_dir, const char *resume);

/* Everything a run needs, on every rank (collective). out_dir NULL: the
 * benchmark's synthetic data (uniform pixels, 4 batches), no files, no
 * watchdog. The status is the same on every rank. */
dm_status trainer_setup(dm_trainer *t, const dm_config *c, const char *out_dir,
                        const char *resume);
/* One optimizer step of the current global batch (collective): *loss the
 * batch loss, *images its size. */
dm_status trainer_step(dm_trainer *t, double *loss, int *images);

/* Forward, loss and backward of one global batch of B images (collective):
 * this rank's nloc micro-batches (n[j] images each) are in net's input slots
 * and conditioning inputs, their targets in target [nloc][m*target_floats]
 * (o: the objective's row, whose loss is taken). The
 * reduced gradient lands in grads [nparams]; sse [nloc] is scratch; the
 * batch's mean loss is returned, the same on every rank. bn_n:
 * the images BatchNorm's statistics count (B, or this rank's with
 * bn_sync = rank). The step trainer_step takes and the golden test checks
 * against PyTorch. */
double train_batch(unet *net, dm_dist *dist, const dm_objective_def *o, float *grads,
                   double *sse, const float *target, int nloc, const int *n, int B,
                   long bn_n, float bn_momentum);
/* The sampling model takes the training model's weights and BatchNorm
 * statistics, or their average with ema_decay > 0 (before every sampling
 * phase). */
void trainer_sync_sampler(dm_trainer *t);
void trainer_teardown(dm_trainer *t);

/* For the trainer's own modules (train_setup.c, train_judge.c,
 * recalibrate.c): */
/* A read every rank did (data, a checkpoint): the job's status, and one
 * line from rank 0 when rank 0 read what another rank could not. */
dm_status trainer_agree_read(const dm_trainer *t, dm_status st, const char *what);
/* Global batch `batch` of the epoch's order into this rank's micro-batch
 * slots, its noise, times and dropped labels drawn under `key` (the step);
 * returns the batch size; *nloc this rank's micro-batches, *bn_n the images
 * BatchNorm's statistics count. */
int trainer_load_batch(dm_trainer *t, long batch, int64_t key, int *nloc, long *bn_n);

#endif
