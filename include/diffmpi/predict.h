/* predict.h: `diffmpi predict` - a checkpoint's network in evaluation mode
 * over images from an HDF5 file: rank 0 reads IN (/x [N,1,28,28] float32,
 * optional /t [N] and /c [N]) and writes OUT (/y [N,1,28,28]); the other
 * ranks wait. Returns the exit code, the same on every rank. */
#ifndef DIFFMPI_PREDICT_H
#define DIFFMPI_PREDICT_H

/* precision: dm_precision of the convolutions, < 0: the run's; weights:
 * a ckpt_weights (auto: the average when the checkpoint has one). */
int predict_run(const char *ckpt, const char *in_path, const char *out_path, int precision,
                int weights);

#endif
