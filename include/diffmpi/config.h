/* config.h: the run configuration, from an INI file (libinih) plus
 * `--set key=value` overrides, validated identically on every rank.
 *
 *   dm_config c;
 *   config_defaults(&c);
 *   if (config_load_file(&c, "jobs/configs/denoise.ini") != DM_OK) ...;
 *   if (config_set(&c, "hidden=32") != DM_OK) ...;
 *   if (config_validate(&c) != DM_OK) ...;
 *
 * Keys may appear at top level or inside any [section]; the section name is
 * ignored. Unknown keys and malformed values are errors (DM_EUSAGE) with one
 * line naming the file:line or the --set argument, the key and the problem.
 *
 * Every key is one row of the table in config.c: its kind and range, its
 * default (parsed like a user's value by config_defaults) and its meaning.
 * `diffmpi train --help` and README.md's key table are printed from it
 * (config_print_keys), so a new key is one row there plus its field here.
 */
#ifndef DIFFMPI_CONFIG_H
#define DIFFMPI_CONFIG_H

#include <stdint.h>
#include <stdio.h>
#include "diffmpi/common.h"
#include "diffmpi/engine.h"
#include "diffmpi/norm.h"
#include "diffmpi/objective.h"
#include "diffmpi/solver.h"

typedef enum { CONDITIONING_NONE, CONDITIONING_TIME, CONDITIONING_CLASS } dm_conditioning;
typedef enum { LR_DECAY_NONE, LR_DECAY_EXP } dm_lr_decay;
typedef enum { BN_SYNC_GLOBAL, BN_SYNC_RANK } dm_bn_sync;
typedef enum { REDUCTION_NODE, REDUCTION_FLAT } dm_reduction;
typedef enum { CONV_ALGO_IM2COL, CONV_ALGO_WINOGRAD, CONV_ALGO_AUTO } dm_conv_algo;

typedef struct {
    dm_objective objective;     /* objective = denoise|pure_noise|ddpm|flow */
    dm_conditioning conditioning; /* conditioning = none|time|class */
    int hidden;                 /* hidden = D, >= 1 */
    dm_norm norm;               /* norm = batch|group */
    int norm_groups;            /* norm_groups: GroupNorm's groups, divides D */
    int epochs;                 /* epochs >= 1 */
    int batch;                  /* batch: global batch size >= 1 */
    int micro_batch;            /* micro_batch >= 1, <= batch */
    double lr;                  /* lr > 0 */
    dm_lr_decay lr_decay;       /* lr_decay = none|exp */
    double sigma;               /* sigma >= 0 (denoise) */
    uint64_t seed;              /* seed */
    char data_dir[1024];        /* data_dir */
    int32_t train_limit;        /* train_limit >= 0, 0 = all */
    int32_t eval_limit;         /* eval_limit >= 0: test images used for the
                                   per-epoch test MSE and the sigma sweep;
                                   0 = all 10000 */
    int checkpoint_every;       /* checkpoint_every >= 0 steps, 0 = epochs */
    int keep;                   /* keep >= 1 checkpoints */
    int threads;                /* threads >= 1 OpenBLAS threads per rank */
    dm_precision precision;     /* precision = fp32|bf16 of the convolutions */
    dm_engine engine;           /* engine = auto|openblas|onednn */
    dm_conv_algo conv_algo;     /* conv_algo = im2col|winograd|auto */
    int winograd_min_width;     /* Winograd for images at least this wide */
    int winograd4_min_width;    /* ... by F(4x4,3x3) from this width (0: none) */
    dm_bn_sync bn_sync;         /* bn_sync = global|rank */
    dm_reduction reduction;     /* reduction = node|flat: where gradients meet */
    double log_every;           /* log_every > 0: seconds between progress
                                   lines when stdout is not a terminal */
    double p_uncond;            /* p_uncond in [0,1] (class models) */
    double guidance;            /* guidance >= 0: CFG scale for class models */
    dm_sampler sampler;         /* sampler = auto|ddpm|ddim|dpmpp2m|euler|heun */
    int sample_steps;           /* sample_steps >= 0: sampler steps, 0 = the
                                   objective's default (objective.h) */
    dm_spacing sample_spacing;  /* sample_spacing = uniform|logsnr */
    double sample_eta;          /* sample_eta in [0,1]: ddim's noise */
    double watchdog;            /* watchdog >= 0: seconds without progress
                                   before the job ends naming the rank that
                                   stopped answering; 0 = off */
    int sample_chunk;           /* sample_chunk >= 1: images per sampler
                                   forward (x2 with guidance); the unit that
                                   spreads sampling over ranks */
    double ema_decay;           /* ema_decay in [0, 1): weight average, 0 = off */
    int bn_recalibrate;         /* bn_recalibrate >= 0: training batches whose
                                   BatchNorm statistics replace the running
                                   ones at every epoch end; 0 = off */
    char judge[1024];           /* judge: a classifier checkpoint that scores
                                   the samples of every sampling epoch; ""
                                   = off */
    int score_n;                /* score_n >= 2: samples scored per epoch */
    char sample_epochs[64];     /* sample_epochs: "1,5,10,15,20": epochs after
                                   which diffusion models sample (the last
                                   epoch always does) */
    char keep_epochs[64];       /* keep_epochs: "5,10": the checkpoints of
                                   these epochs' ends are kept apart as
                                   checkpoints/epoch-<E>.h5, out of reach of
                                   `keep`; "" = none */
} dm_config;

#define CONFIG_MAX_SAMPLE_EPOCHS 16

/* Does the run sample after this (1-based) epoch? */
int config_sample_epoch(const dm_config *c, int epoch);
/* Is the checkpoint of this (1-based) epoch's end kept apart? */
int config_keep_epoch(const dm_config *c, int epoch);

/* Every key at its default (the table's text, parsed: a default that does
 * not parse aborts through DM_CHECK). */
void config_defaults(dm_config *c);
/* Parse an INI file into c (keys override what is there). */
dm_status config_load_file(dm_config *c, const char *path);
/* Apply one "key=value" override. */
dm_status config_set(dm_config *c, const char *assignment);
/* NULL when the sampler keys (sampler, sample_steps, sample_spacing,
 * sample_eta) can sample c's diffusion objective; else why not, one
 * phrase (solver_check). config_validate asks it for diffusion models. */
const char *config_sampler_problem(const dm_config *c);
/* Cross-key checks (micro_batch <= batch, conditioning vs objective, ...). */
dm_status config_validate(const dm_config *c);
/* Write the resolved configuration as INI text ("key = value" lines) into
 * buf (returns the length; truncates safely) - the same text is printed at
 * start and stored in every output file. */
int config_to_string(const dm_config *c, char *buf, int bufsize);
/* Parse from an in-memory INI string (used to restore a checkpoint's
 * configuration); origin names the source in error messages. */
dm_status config_load_string(dm_config *c, const char *text,
                             const char *origin);

typedef enum { CONFIG_KEYS_TEXT, CONFIG_KEYS_MARKDOWN } dm_config_keys_format;
/* Every key in table order with its allowed values, default and meaning:
 * TEXT, two or more indented lines per key (--help); MARKDOWN, the table
 * between the keys markers of README.md. */
void config_print_keys(FILE *fp, dm_config_keys_format format);

const char *config_objective_name(dm_objective o);
const char *config_conditioning_name(dm_conditioning c);

#endif
