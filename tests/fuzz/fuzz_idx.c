/* fuzz_idx.c: libFuzzer target for the IDX reader (data_load in src/io/data.c).
 *
 * One input is one pair of IDX files plus the limit to load them with:
 *
 *   bytes 0..3  split point s, u32 little-endian, taken modulo len(rest) + 1
 *   byte  4     bits 0..5: limit passed to data_load (0 = all images);
 *               bits 6..7: 1 = no images file, 2 = no labels file,
 *               0 or 3 = both files present
 *   bytes 5..   rest: rest[0, s) is train-images-idx3-ubyte and
 *               rest[s, end) is train-labels-idx1-ubyte
 *
 * The files are written into a temporary directory made once per process
 * ($TMPDIR or /tmp, removed at exit), then data_load(&d, dir, "train",
 * limit) runs. Besides what ASan/UBSan/LeakSanitizer catch, the harness
 * aborts if data_load breaks its contract (include/diffmpi/data.h):
 *  - failure: status DM_EIO and the dataset emptied (n 0, NULL pointers);
 *  - success: both headers are well formed (magics 0x803/0x801, 28x28, one
 *    count c >= 1 in both) and both file sizes are exact; n >= 1 and n is
 *    min(limit, c) (c when limit is 0); every pixel is in [0, 1] and equal
 *    to its file byte / 255; every label is <= 9 and equal to its byte.
 * Build and run with tools/fuzz.sh; replay one input with
 * build-fuzz/fuzz_idx FILE (errors from data_load are then printed).
 */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "diffmpi/data.h"

#define PREFIX_BYTES 5

static char dir[256];
static char img_path[320];
static char lbl_path[320];

static uint32_t be32(const uint8_t *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) |
           ((uint32_t)p[2] << 8) | (uint32_t)p[3];
}

static _Noreturn void violated(const char *what) {
    fprintf(stderr, "fuzz_idx: invariant violated: %s\n", what);
    fflush(stderr);
    abort();
}

static void cleanup(void) {
    unlink(img_path);
    unlink(lbl_path);
    rmdir(dir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    const char *tmp = getenv("TMPDIR");
    if (!tmp || !*tmp) tmp = "/tmp";
    snprintf(dir, sizeof dir, "%s/fuzz_idx_XXXXXX", tmp);
    if (!mkdtemp(dir)) {
        perror("fuzz_idx: mkdtemp");
        abort();
    }
    snprintf(img_path, sizeof img_path, "%s/train-images-idx3-ubyte", dir);
    snprintf(lbl_path, sizeof lbl_path, "%s/train-labels-idx1-ubyte", dir);
    atexit(cleanup);
    return 0;
}

/* Writes bytes to path, or removes path when present is 0. */
static void put_file(const char *path, const uint8_t *bytes, size_t len,
                     int present) {
    /* A fresh file rather than O_TRUNC: ext4 flushes a truncated file's
     * data to disk when it is rewritten, which costs milliseconds. */
    unlink(path);
    if (!present) return;
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0600);
    if (fd < 0) {
        perror(path);
        abort();
    }
    size_t done = 0;
    while (done < len) {
        ssize_t w = write(fd, bytes + done, len - done);
        if (w <= 0) {
            perror(path);
            abort();
        }
        done += (size_t)w;
    }
    close(fd);
}

/* On DM_OK: the files must be what data_load promises to accept, and the
 * dataset must hold exactly their first n images and labels. */
static void check_loaded(const dm_dataset *d, const uint8_t *img,
                         size_t img_len, const uint8_t *lbl, size_t lbl_len,
                         int32_t limit) {
    if (d->n < 1) violated("n < 1 after DM_OK");
    if (!d->images || !d->labels) violated("NULL buffer after DM_OK");
    if (img_len < 16 || lbl_len < 8) violated("accepted a short header");
    if (be32(img) != 0x803 || be32(lbl) != 0x801) violated("accepted magic");
    if (be32(img + 8) != DM_IMG || be32(img + 12) != DM_IMG)
        violated("accepted dimensions other than 28x28");
    const uint32_t count = be32(img + 4);
    if (count == 0 || count > (uint32_t)INT32_MAX || be32(lbl + 4) != count)
        violated("accepted a bad or mismatched count");
    if (img_len != 16 + (uint64_t)count * DM_PIX || lbl_len != 8 + count)
        violated("accepted a file whose size is not header + data");
    const int32_t want =
        limit > 0 && (uint32_t)limit < count ? limit : (int32_t)count;
    if (d->n != want) violated("n is not min(limit, count)");
    for (size_t k = 0; k < (size_t)d->n * DM_PIX; k++) {
        float v = d->images[k];
        if (!(v >= 0.0f && v <= 1.0f)) violated("pixel outside [0, 1]");
        if (v != (float)img[16 + k] / 255.0f) violated("pixel != byte/255");
    }
    for (int32_t i = 0; i < d->n; i++) {
        if (d->labels[i] > 9) violated("label > 9");
        if (d->labels[i] != lbl[8 + i]) violated("label != file byte");
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < PREFIX_BYTES) return 0;
    const uint8_t *rest = data + PREFIX_BYTES;
    const size_t rest_len = size - PREFIX_BYTES;
    const uint32_t split_raw = (uint32_t)data[0] | ((uint32_t)data[1] << 8) |
                               ((uint32_t)data[2] << 16) |
                               ((uint32_t)data[3] << 24);
    const size_t split = (size_t)split_raw % (rest_len + 1);
    const int32_t limit = data[4] & 0x3f;
    const int mode = data[4] >> 6;
    const uint8_t *img = rest, *lbl = rest + split;
    const size_t img_len = split, lbl_len = rest_len - split;

    put_file(img_path, img, img_len, mode != 1);
    put_file(lbl_path, lbl, lbl_len, mode != 2);

    /* Garbage in the output, to see that a failure empties it. */
    dm_dataset d = {.n = -7, .images = (float *)&d, .labels = (uint8_t *)&d};
    dm_status st = data_load(&d, dir, "train", limit);
    if (st == DM_OK) {
        if (mode == 1 || mode == 2) violated("DM_OK with a file missing");
        check_loaded(&d, img, img_len, lbl, lbl_len, limit);
    } else {
        if (st != DM_EIO) violated("failure status other than DM_EIO");
        if (d.n != 0 || d.images || d.labels)
            violated("dataset not emptied on failure");
    }
    data_free(&d);
    if (d.n != 0 || d.images || d.labels) violated("data_free left state");
    data_free(&d); /* a second free is harmless */
    return 0;
}
