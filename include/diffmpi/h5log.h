/* h5log.h: the training log <out>/log.h5, written by rank 0.
 *
 * /train/{step,epoch,loss,lr,time,images_per_sec}: one row per optimizer
 * step, extendible chunked 1-D datasets. /eval/{step, epoch, test_mse,
 * test_loss, test_acc, sample_acc, sample_fd}: one row per epoch; a figure
 * that does not apply to the run is NaN:
 *   test_mse    test-set MSE of MSE objectives (denoisers: at the sigma of
 *               the `eval_sigma` attribute); test_loss the same, or a
 *               classifier's cross-entropy
 *   test_acc    classifiers: share of test images classified right
 *   sample_acc, sample_fd   runs with a judge, on sampling epochs: the
 *               judge's accuracy on the class samples and the Frechet
 *               distance of the samples' judge features (score.h)
 * Logs written before test_loss existed resume with the new columns NaN.
 *
 * The file is written in HDF5 SWMR mode and flushed at least every second,
 * so `h5py.File(path, "r", swmr=True)` can follow a running job (and once
 * the job ends it reads as any HDF5 file). On resume from a checkpoint at
 * step S the log is rewritten keeping only training rows with step < S and
 * eval rows with step <= S, so no step appears twice.
 */
#ifndef DIFFMPI_H5LOG_H
#define DIFFMPI_H5LOG_H

#include <hdf5.h>
#include <stdint.h>
#include "diffmpi/common.h"
#include "diffmpi/config.h"

#define LOG_TRAIN_COLS 6
#define LOG_EVAL_COLS 7
#define LOG_MAX_COLS 8

typedef struct {
    hid_t f;
    hid_t train[LOG_TRAIN_COLS], eval[LOG_EVAL_COLS];
    hsize_t rows, erows;
    double time_offset;     /* wall time already spent before a resume */
    double last_flush;
    char path[4200];
} dm_log;

/* resume_step < 0: new log (an existing one is replaced). */
dm_status log_open(dm_log *l, const char *out_dir, const dm_config *c,
                   double eval_sigma, int64_t resume_step);
dm_status log_step(dm_log *l, int64_t step, int32_t epoch, double loss,
                   double lr, double wall, double images_per_sec);
typedef struct {
    int64_t step;
    int32_t epoch;
    double test_mse, test_loss, test_acc, sample_acc, sample_fd;
} dm_eval_row;
dm_status log_eval(dm_log *l, const dm_eval_row *row);
dm_status log_flush(dm_log *l);
/* Close the log; a failed close (the last rows may not be on disk) prints
 * one line naming the file and returns DM_EIO. A zeroed or closed dm_log
 * holds nothing to close. */
dm_status log_close(dm_log *l);

#endif
