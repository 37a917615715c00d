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
#include "diffmpi/unet.h"

typedef struct {
    dm_config cfg;
    const char *out;    /* output directory; NULL: synthetic data, no files */
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
    unet sampler;       /* inference copy for sampling (diffusion models) */
    float *target;      /* [max_mb][m*784] */
    double *sse;        /* [max(max_mb, eval chunks)] */
    double *items;      /* gathered per-chunk values */
    int *n;             /* images per local micro-batch */
    double t_start;
    int tty;            /* progress redraws one line (a terminal, no mpirun) */
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
/* The sampling model takes the training model's weights and BatchNorm
 * statistics (before every sampling phase). */
void trainer_sync_sampler(dm_trainer *t);
void trainer_teardown(dm_trainer *t);

/* Peak resident set size of this process in MiB (VmHWM), 0 if unknown. */
double dm_peak_rss_mib(void);

/* predict: rank 0 reads IN (/x [N,1,28,28] float32), writes OUT (/y). */
int predict_run(const char *ckpt, const char *in_path, const char *out_path);

/* The sigmas of the noising figure and the out-of-distribution sweep. */
#define DM_NSIGMAS 7
extern const double dm_sigmas[DM_NSIGMAS];

#endif
