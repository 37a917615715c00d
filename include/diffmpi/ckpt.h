/* ckpt.h: HDF5 checkpoints, written by rank 0 only.
 *
 * <out>/checkpoints/ckpt-<step>.h5 holds /model/<unit>/<tensor> (float32,
 * PyTorch layouts and names), /optim/m/... and /optim/v/... for every
 * trainable tensor, and on the root the training state (step, epoch,
 * batch_in_epoch, adam_step, lr, seed), the resolved configuration text,
 * `format` = "diffmpi-checkpoint" and `format_version`.
 *
 * A checkpoint is written to a hidden temporary name, closed, fsynced and
 * renamed, then its directory is fsynced and the file read back whole and
 * verified; only then are checkpoints beyond `keep` deleted (oldest
 * first). So a file named ckpt-<step>.h5 is always complete, whatever
 * moment the job dies at, and a damaged write never costs the last intact
 * checkpoint.
 *
 * With ema_decay > 0 the file also holds /ema/<unit>/<tensor>: the
 * exponential moving average of every /model tensor (weights and BatchNorm
 * statistics), what sampling uses by default.
 *
 * Checksums (format version 2): every dataset carries HDF5's Fletcher32
 * (h5util.h), verified on every read; the training-state attributes and
 * the configuration text carry `state_crc32` (zlib's CRC-32 of their
 * values as text), verified on every open. Version 1 files (no checksums)
 * still load, with one warning.
 */
#ifndef DIFFMPI_CKPT_H
#define DIFFMPI_CKPT_H

#include <stdint.h>
#include "diffmpi/common.h"
#include "diffmpi/config.h"
#include "diffmpi/unet.h"

#define CKPT_FORMAT "diffmpi-checkpoint"
#define CKPT_VERSION 2
#define CKPT_VERSION_UNCHECKED 1 /* before checksums: read with a warning */

typedef struct {
    int64_t step;           /* optimizer steps done */
    int64_t epoch;          /* epoch (0-based) of the next step */
    int64_t batch_in_epoch; /* index of the next batch inside that epoch */
    int64_t adam_t;         /* Adam's step count */
    double lr;              /* learning rate of the next step */
} dm_train_state;

/* The exponential moving average of the weights (ema_decay > 0): the
 * trainable tensors and the BatchNorm statistics, as the model's p and
 * bufs. Stored as /ema/<the /model names>. */
typedef struct {
    float *p, *bufs;
} ckpt_ema;

/* ema: NULL, or the average to store as /ema. */
dm_status ckpt_write(const char *out_dir, const unet *u, const float *m,
                     const float *v, const ckpt_ema *ema, const dm_train_state *s,
                     const dm_config *c, int keep);
/* Keep <out>/checkpoints/ckpt-<step>.h5 also as <out>/checkpoints/<name>
 * (a hard link; a copy where the file system refuses links), replacing an
 * older file of that name at once (rename). `keep` prunes ckpt-*.h5 only,
 * and --resume auto looks at those only. */
dm_status ckpt_keep_as(const char *out_dir, long step, const char *name);
/* Read the configuration stored in a checkpoint (to build the model). */
dm_status ckpt_read_config(const char *path, dm_config *c);
/* Load weights, BN statistics and (when m, v are non-NULL) Adam state and
 * training state. The model u must have been built with the checkpoint's
 * width; every dataset's presence, shape and dtype is checked, and every
 * checksum of the file (also of tensors not loaded) is verified first. */
dm_status ckpt_read(const char *path, unet *u, float *m, float *v,
                    dm_train_state *s);
/* The same for resuming, also loading /ema into *ema when the file has it
 * (*has_ema = 1; else 0 and ema untouched). */
dm_status ckpt_read_train(const char *path, unet *u, float *m, float *v, ckpt_ema *ema,
                          int *has_ema, dm_train_state *s);
/* Which weights sample, predict and score use: auto (the average when the
 * checkpoint has one, else the raw weights), ema (an error without one),
 * raw (the trained weights). */
typedef enum { CKPT_WEIGHTS_AUTO, CKPT_WEIGHTS_EMA, CKPT_WEIGHTS_RAW } ckpt_weights;
const char *ckpt_weights_name(int w); /* NULL past the last */
/* Load the weights w says into u (checksums verified as by ckpt_read);
 * *used_ema = whether the average was loaded. */
dm_status ckpt_read_weights(const char *path, unet *u, ckpt_weights w, int *used_ema);
/* Newest ckpt-<step>.h5 in <out>/checkpoints that verifies (ckpt_verify);
 * DM_EIO (with a message) when there is none. Damaged newer files are
 * named on stderr and skipped. */
dm_status ckpt_find_latest(const char *out_dir, char *path, size_t size);
/* The checkpoint --resume names: "auto" is ckpt_find_latest's, anything
 * else the path itself. One rank's view: a job has rank 0 resolve it and
 * broadcast the path. */
dm_status ckpt_resume_path(const char *out_dir, const char *resume, char *path, size_t size);
/* Read every dataset of a checkpoint and check every checksum, and the
 * state's: *checked = the checksums verified. One line naming the damaged
 * tensor (or the state) and DM_EIO otherwise. */
dm_status ckpt_verify(const char *path, long *checked);
/* Delete temporary files left by a checkpoint write that was killed. */
void ckpt_remove_stale(const char *out_dir);
/* Does <out>/checkpoints hold any ckpt-*.h5? */
int ckpt_any(const char *out_dir);

#endif
