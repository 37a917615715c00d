/* png.h: write grayscale image grids as 8-bit PNG files (libpng).
 *
 * images: [rows*cols][h][w] floats, clamped to [0,1] and scaled to 0..255.
 * Cells are separated by `pad` pixels of mid grey. The file is written to "<path>.tmp" and renamed, so a
 * crash never leaves a half-written PNG under the final name.
 */
#ifndef DIFFMPI_PNG_H
#define DIFFMPI_PNG_H

#include "diffmpi/common.h"

dm_status png_write_grid(const char *path, const float *images, int rows,
                         int cols, int h, int w, int pad);

#endif
