/* png.c: grids of grayscale images as 8-bit PNG (libpng).
 *
 * The picture is (rows*h + (rows-1)*pad) x (cols*w + (cols-1)*pad) pixels,
 * built and written one row at a time. libpng reports errors by longjmp; the
 * handlers below keep its message (instead of printing it) so the caller
 * prints one line, and all cleanup happens after setjmp returns.
 */
#include "diffmpi/png.h"

#include <errno.h>
#include <png.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define PNG_GAP_GREY 128
#define PNG_MAX_SIDE 1000000 /* libpng's default user limit per side */

typedef struct {
    char msg[256]; /* libpng's error message, or "" */
    int err;       /* errno of a failed write, or 0 */
} png_err;

static void on_png_error(png_structp png, png_const_charp msg) {
    png_err *e = png_get_error_ptr(png);
    snprintf(e->msg, sizeof e->msg, "libpng: %s", msg ? msg : "error");
    png_longjmp(png, 1);
}

static void on_png_warning(png_structp png, png_const_charp msg) {
    (void)png;
    (void)msg;
}

/* Our write callback keeps the errno of a short fwrite, which libpng's
 * default one loses ("Write Error"). */
static void on_png_write(png_structp png, png_bytep data, size_t length) {
    FILE *fp = png_get_io_ptr(png);
    errno = 0;
    if (fwrite(data, 1, length, fp) != length) {
        png_err *e = png_get_error_ptr(png);
        e->err = errno ? errno : EIO;
        png_error(png, "write failed");
    }
}

/* v in [0,1] (NaN -> 0) to 0..255, rounded half up. In double, where
 * v * 255 is exact: in float, 0.8333333f * 255 + 0.5 rounds up to 213. */
static png_byte to_byte(float v) {
    if (!(v > 0.0f)) return 0;
    if (v >= 1.0f) return 255;
    return (png_byte)((double)v * 255.0 + 0.5);
}

/* Row y of the grid into row[width]. images: [rows*cols][h][w]. */
static void grid_row(png_bytep row, const float *images, int y, int cols,
                     int h, int w, int pad, int width) {
    memset(row, PNG_GAP_GREY, (size_t)width);
    int r = y / (h + pad), iy = y % (h + pad);
    if (iy >= h) return; /* a gap row */
    for (int c = 0; c < cols; c++) {
        const float *src = images + (((size_t)r * cols + c) * h + iy) * w;
        png_bytep dst = row + (size_t)c * (w + pad);
        for (int ix = 0; ix < w; ix++) dst[ix] = to_byte(src[ix]);
    }
}

/* Writes the PNG stream to fp; on a libpng error, e->msg says why. Nothing
 * that must survive the longjmp is changed after setjmp. */
static dm_status write_stream(FILE *fp, png_err *e, png_bytep row,
                              const float *images, int rows, int cols, int h,
                              int w, int pad, int width, int height) {
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, e,
                                              on_png_error, on_png_warning);
    if (!png) {
        snprintf(e->msg, sizeof e->msg, "libpng: out of memory");
        return DM_EIO;
    }
    png_infop info = png_create_info_struct(png);
    if (!info) {
        png_destroy_write_struct(&png, NULL);
        snprintf(e->msg, sizeof e->msg, "libpng: out of memory");
        return DM_EIO;
    }
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_write_struct(&png, &info);
        return DM_EIO;
    }
    png_set_write_fn(png, fp, on_png_write, NULL);
    png_set_IHDR(png, info, (png_uint_32)width, (png_uint_32)height, 8,
                 PNG_COLOR_TYPE_GRAY, PNG_INTERLACE_NONE,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    png_write_info(png, info);
    for (int y = 0; y < height; y++) {
        grid_row(row, images, y, cols, h, w, pad, width);
        png_write_row(png, row);
    }
    png_write_end(png, info);
    png_destroy_write_struct(&png, &info);
    return DM_OK;
}

/* The stream is complete in fp: flush and fsync it (so the final name never
 * points at data still in flight), close it (checked: the last write) and
 * rename tmp to path. fp is closed either way; returns 0 or the errno of
 * the first failure. */
static int close_renamed(FILE *fp, const char *tmp, const char *path) {
    int err = 0;
    if (fflush(fp) != 0 || fsync(fileno(fp)) != 0) err = errno;
    if (fclose(fp) != 0 && !err) err = errno;
    if (!err && rename(tmp, path) != 0) err = errno;
    return err;
}

dm_status png_write_grid(const char *path, const float *images, int rows,
                         int cols, int h, int w, int pad) {
    DM_CHECK(path && images, "png_write_grid: NULL argument");
    DM_CHECK(rows >= 1 && cols >= 1 && h >= 1 && w >= 1 && pad >= 0,
             "png_write_grid: bad grid %dx%d of %dx%d, pad %d", rows, cols,
             h, w, pad);
    const long long width = (long long)cols * w + (long long)(cols - 1) * pad;
    const long long height = (long long)rows * h + (long long)(rows - 1) * pad;
    DM_CHECK(width <= PNG_MAX_SIDE && height <= PNG_MAX_SIDE,
             "png_write_grid: %lldx%lld pixels is too large", width, height);

    size_t len = strlen(path);
    char *tmp = dm_malloc(len + 5);
    memcpy(tmp, path, len);
    memcpy(tmp + len, ".tmp", 5);

    FILE *fp = fopen(tmp, "wb");
    if (!fp) {
        dm_error("%s: cannot create %s: %s", path, tmp, strerror(errno));
        free(tmp);
        return DM_EIO;
    }
    png_bytep row = dm_malloc((size_t)width);
    png_err e;
    memset(&e, 0, sizeof e);
    dm_status st = write_stream(fp, &e, row, images, rows, cols, h, w, pad,
                                (int)width, (int)height);
    free(row);
    int err = e.err;
    if (st == DM_OK)
        err = close_renamed(fp, tmp, path);
    else
        fclose(fp); /* after a failure: its result changes nothing */
    if (st != DM_OK || err) {
        dm_error("%s: cannot write PNG: %s", path,
                 err ? strerror(err) : e.msg);
        remove(tmp);
        st = DM_EIO;
    }
    free(tmp);
    return st;
}
