/* train_judge.h: `judge = PATH` in a diffusion run: after every sampling
 * epoch, score_n fresh samples are scored by a judge of `diffmpi score`
 * (its accuracy on the intended digits and the Frechet distance of its
 * features to the MNIST test set, docs/score.md), into the epoch's /eval
 * row, the progress line and the run's last lines.
 *
 *   train_judge_open(t);               // trainer_setup, after the data
 *   train_judge_epoch(t, epoch, &row); // epoch end, after the figures
 *
 * Both are collective and return the same status on every rank. Samples
 * the judge cannot score (a non-finite pixel) leave the row's scores NaN
 * with a warning; training goes on. */
#ifndef DIFFMPI_TRAIN_JUDGE_H
#define DIFFMPI_TRAIN_JUDGE_H

#include "diffmpi/h5log.h"
#include "diffmpi/train.h"

/* The judge of t->cfg.judge and its reference statistics over the whole
 * MNIST test set (whatever eval_limit says: the distance is the one
 * `diffmpi score` reports); prints one line. */
dm_status train_judge_open(dm_trainer *t);
/* Sample, score, and fill row->sample_acc and row->sample_fd (and the
 * trainer's last scores). epoch: 1-based, just finished. */
dm_status train_judge_epoch(dm_trainer *t, int epoch, dm_eval_row *row);

#endif
