/* inspect.h: `diffmpi inspect FILE` - a human-readable summary of a
 * checkpoint, a log, a samples file or any HDF5 file. */
#ifndef DIFFMPI_INSPECT_H
#define DIFFMPI_INSPECT_H

#include "diffmpi/common.h"

dm_status inspect_file(const char *path);

#endif
