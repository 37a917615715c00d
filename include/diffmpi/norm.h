/* norm.h: the normalisation that follows each hidden convolution, a config
 * axis (`norm = batch|group`). The kinds themselves are rows of the table
 * in src/model/norm.c (see unet.h, unet_norm_ops): BatchNorm2d over the global
 * batch, GroupNorm(32 groups) over each image. */
#ifndef DIFFMPI_NORM_H
#define DIFFMPI_NORM_H

typedef enum { NORM_BATCH, NORM_GROUP, NORM_COUNT } dm_norm;

/* BatchNorm's running-statistics momentum (PyTorch's default). */
#define NORM_BN_MOMENTUM 0.1f

/* Name of normalisation i ("batch", "group"), NULL past the last. */
const char *norm_name(int i);

#endif
