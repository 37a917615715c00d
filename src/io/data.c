/* data.c: MNIST from raw IDX files, validated before anything large is
 * allocated.
 *
 * IDX layout (all integers big-endian u32):
 *   images: magic 0x00000803, count, rows, cols, then count*rows*cols u8
 *   labels: magic 0x00000801, count, then count u8
 * A file is accepted only if its size on disk is exactly what the header
 * declares, so a corrupt count can never drive an allocation.
 */
#include "diffmpi/data.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define IDX_MAGIC_IMAGES 0x00000803u
#define IDX_MAGIC_LABELS 0x00000801u
#define IDX_HEADER_IMAGES 16
#define IDX_HEADER_LABELS 8
#define READ_CHUNK_IMAGES 256 /* images converted per fread */

/* One opened, header-checked IDX file positioned at its first data byte. */
typedef struct {
    FILE *fp;
    const char *path;
    int32_t count;
} idx_file;

static uint32_t read_be32(const unsigned char *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) |
           ((uint32_t)p[2] << 8) | (uint32_t)p[3];
}

static void idx_close(idx_file *f) {
    if (f->fp) fclose(f->fp);
    f->fp = NULL;
}

/* Checks everything the header and the file size can tell: magic, 28x28
 * dimensions, a non-zero count that fits int32, and size == header + data.
 * `dir` only feeds the hint of how to fetch the files. */
static dm_status idx_check(idx_file *f, const char *dir, int is_images) {
    const uint32_t magic = is_images ? IDX_MAGIC_IMAGES : IDX_MAGIC_LABELS;
    const int header = is_images ? IDX_HEADER_IMAGES : IDX_HEADER_LABELS;
    const uint64_t item = is_images ? DM_PIX : 1;
    const char *what = is_images ? "images" : "labels";
    const char *path = f->path;
    unsigned char h[IDX_HEADER_IMAGES];

    struct stat st;
    if (fstat(fileno(f->fp), &st) != 0 || !S_ISREG(st.st_mode)) {
        dm_error("%s: not a regular file", path);
        return DM_EIO;
    }
    const uint64_t size = (uint64_t)st.st_size;
    if (size == 0) {
        dm_error("%s: file is empty; run tools/fetch_mnist.sh %s to download "
                 "MNIST again", path, dir);
        return DM_EIO;
    }
    if (size < (uint64_t)header) {
        dm_error("%s: truncated: %llu bytes, shorter than the %d-byte IDX "
                 "header", path, (unsigned long long)size, header);
        return DM_EIO;
    }
    if (fread(h, 1, (size_t)header, f->fp) != (size_t)header) {
        dm_error("%s: cannot read the IDX header", path);
        return DM_EIO;
    }
    const uint32_t got = read_be32(h);
    if (h[0] == 0x1f && h[1] == 0x8b) {
        dm_error("%s: file is gzip-compressed; gunzip it or run "
                 "tools/fetch_mnist.sh %s", path, dir);
        return DM_EIO;
    }
    if (got != magic) {
        dm_error("%s: bad magic 0x%08x, expected 0x%08x (IDX %s file)", path,
                 (unsigned)got, (unsigned)magic, what);
        return DM_EIO;
    }
    const uint32_t count = read_be32(h + 4);
    if (is_images) {
        uint32_t rows = read_be32(h + 8), cols = read_be32(h + 12);
        if (rows != DM_IMG || cols != DM_IMG) {
            dm_error("%s: images are %ux%u, expected %dx%d", path,
                     (unsigned)rows, (unsigned)cols, DM_IMG, DM_IMG);
            return DM_EIO;
        }
    }
    /* count < 2^32 and item <= 784, so this cannot overflow; comparing with
     * the real size first means a bogus count never reaches an allocation. */
    const uint64_t expect = (uint64_t)header + (uint64_t)count * item;
    if (size != expect) {
        dm_error("%s: file is %llu bytes but its header declares %u %s "
                 "(%llu bytes): %s", path, (unsigned long long)size,
                 (unsigned)count, what, (unsigned long long)expect,
                 size < expect ? "truncated" : "trailing data");
        return DM_EIO;
    }
    if (count == 0 || count > (uint32_t)INT32_MAX) {
        dm_error("%s: declares %u %s, expected 1..%d", path, (unsigned)count,
                 what, (int)INT32_MAX);
        return DM_EIO;
    }
    f->count = (int32_t)count;
    return DM_OK;
}

/* Opens and checks path; on failure f is closed and one line was printed. */
static dm_status idx_open(idx_file *f, const char *path, const char *dir,
                          int is_images) {
    f->path = path;
    f->count = 0;
    f->fp = fopen(path, "rb");
    if (!f->fp) {
        if (errno == ENOENT)
            dm_error("%s: no such file; run tools/fetch_mnist.sh %s to "
                     "download MNIST", path, dir);
        else
            dm_error("%s: cannot open: %s", path, strerror(errno));
        return DM_EIO;
    }
    dm_status st = idx_check(f, dir, is_images);
    if (st != DM_OK) idx_close(f);
    return st;
}

/* Reads all `count` labels (so every one is checked to be 0..9). */
static dm_status read_labels(idx_file *f, uint8_t **out) {
    uint8_t *labels = dm_malloc((size_t)f->count);
    if (fread(labels, 1, (size_t)f->count, f->fp) != (size_t)f->count) {
        dm_error("%s: read error (file changed while reading?)", f->path);
        free(labels);
        return DM_EIO;
    }
    for (int32_t i = 0; i < f->count; i++) {
        if (labels[i] > 9) {
            dm_error("%s: label %u at index %d is out of range 0..9", f->path,
                     (unsigned)labels[i], (int)i);
            free(labels);
            return DM_EIO;
        }
    }
    *out = labels;
    return DM_OK;
}

/* Reads the first n images of f into images[n][784] as u8/255. */
static dm_status read_images(idx_file *f, int32_t n, float *images) {
    unsigned char *buf = dm_malloc((size_t)READ_CHUNK_IMAGES * DM_PIX);
    dm_status st = DM_OK;
    for (int32_t i0 = 0; i0 < n; i0 += READ_CHUNK_IMAGES) {
        int32_t m = n - i0 < READ_CHUNK_IMAGES ? n - i0 : READ_CHUNK_IMAGES;
        size_t bytes = (size_t)m * DM_PIX;
        if (fread(buf, 1, bytes, f->fp) != bytes) {
            dm_error("%s: read error (file changed while reading?)", f->path);
            st = DM_EIO;
            break;
        }
        float *dst = images + (size_t)i0 * DM_PIX;
        for (size_t k = 0; k < bytes; k++) dst[k] = (float)buf[k] / 255.0f;
    }
    free(buf);
    return st;
}

static char *idx_path(const char *dir, const char *prefix, const char *kind) {
    int len = snprintf(NULL, 0, "%s/%s-%s", dir, prefix, kind);
    DM_CHECK(len > 0, "cannot format the path of %s/%s-%s", dir, prefix,
             kind);
    char *p = dm_malloc((size_t)len + 1);
    snprintf(p, (size_t)len + 1, "%s/%s-%s", dir, prefix, kind);
    return p;
}

/* Both files open and checked: all labels and the first n images into d. */
static dm_status read_pair(idx_file *fi, idx_file *fl, int32_t limit, dm_dataset *d) {
    if (fi->count != fl->count) {
        dm_error("%s has %d images but %s has %d labels", fi->path,
                 (int)fi->count, fl->path, (int)fl->count);
        return DM_EIO;
    }
    /* Labels are read in full even with a limit (60 KB): all are checked
     * and the buffer is simply longer than n. */
    uint8_t *labels = NULL;
    DM_TRY(read_labels(fl, &labels));
    int32_t n = fi->count;
    if (limit > 0 && limit < n) n = limit;
    float *images = dm_malloc((size_t)n * DM_PIX * sizeof(float));
    dm_status st = read_images(fi, n, images);
    if (st != DM_OK) {
        free(images);
        free(labels);
        return st;
    }
    d->n = n;
    d->images = images;
    d->labels = labels;
    return DM_OK;
}

/* The images file is open: open the labels file, read both, close it. */
static dm_status load_labels_file(idx_file *fi, const char *lbl_path,
                                  const char *dir, int32_t limit, dm_dataset *d) {
    idx_file fl = {0};
    DM_TRY(idx_open(&fl, lbl_path, dir, 0));
    dm_status st = read_pair(fi, &fl, limit, d);
    idx_close(&fl);
    return st;
}

static dm_status load_files(const char *img_path, const char *lbl_path,
                            const char *dir, int32_t limit, dm_dataset *d) {
    idx_file fi = {0};
    DM_TRY(idx_open(&fi, img_path, dir, 1));
    dm_status st = load_labels_file(&fi, lbl_path, dir, limit, d);
    idx_close(&fi);
    return st;
}

dm_status data_load(dm_dataset *d, const char *dir, const char *prefix,
                    int32_t limit) {
    DM_CHECK(d && dir && prefix, "data_load: NULL argument");
    DM_CHECK(limit >= 0, "data_load: negative limit %d", (int)limit);
    d->n = 0;
    d->images = NULL;
    d->labels = NULL;
    char *img_path = idx_path(dir, prefix, "images-idx3-ubyte");
    char *lbl_path = idx_path(dir, prefix, "labels-idx1-ubyte");
    dm_status st = load_files(img_path, lbl_path, dir, limit, d);
    free(img_path);
    free(lbl_path);
    return st;
}

void data_free(dm_dataset *d) {
    if (!d) return;
    free(d->images);
    free(d->labels);
    d->images = NULL;
    d->labels = NULL;
    d->n = 0;
}
