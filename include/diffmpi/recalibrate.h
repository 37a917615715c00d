/* recalibrate.h: `bn_recalibrate = K`. At an epoch end, before evaluation,
 * sampling and the checkpoint, BatchNorm's running statistics become the
 * average of the batch statistics of K training batches under the epoch's
 * final weights (and, with ema_decay, the weight average's own the same
 * way), instead of an exponential average over weights that kept moving.
 * The weights and the optimizer are not touched, and the statistics are
 * the same on any rank count and across resume (docs/configuration.md,
 * "BatchNorm statistics at epoch ends").
 *
 *   train_bn_recalibrate(t, epoch);   // collective; nothing if K = 0 or
 *                                     // norm != batch
 */
#ifndef DIFFMPI_RECALIBRATE_H
#define DIFFMPI_RECALIBRATE_H

#include "diffmpi/train.h"

void train_bn_recalibrate(dm_trainer *t, int epoch);

#endif
