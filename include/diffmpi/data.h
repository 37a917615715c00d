/* data.h: MNIST from raw IDX files.
 *
 *   dm_dataset train;
 *   if (data_load(&train, "data/mnist", "train", 0) != DM_OK) ...;  // all
 *   ... train.images[i*784 + k] in [0,1], train.labels[i] in 0..9
 *   data_free(&train);
 *
 * data_load reads <dir>/<prefix>-images-idx3-ubyte and
 * <dir>/<prefix>-labels-idx1-ubyte (prefix "train" or "t10k"), validates
 * magic numbers, dimensions (28x28), that the file sizes match the declared
 * counts exactly, and that both files agree on the count and labels are 0..9.
 * On any problem it prints one line naming the file (with the command that
 * fixes a missing data directory) and returns DM_EIO.
 */
#ifndef DIFFMPI_DATA_H
#define DIFFMPI_DATA_H

#include <stdint.h>
#include "diffmpi/common.h"

#define DM_IMG 28
#define DM_PIX (DM_IMG * DM_IMG)
#define DM_CLASSES 10 /* MNIST digits */

typedef struct {
    int32_t n;        /* number of images */
    float *images;    /* [n][28*28], u8/255 */
    uint8_t *labels;  /* [n] */
} dm_dataset;

/* limit > 0 keeps only the first `limit` images (the files are still fully
 * validated). */
dm_status data_load(dm_dataset *d, const char *dir, const char *prefix,
                    int32_t limit);
void data_free(dm_dataset *d);

#endif
