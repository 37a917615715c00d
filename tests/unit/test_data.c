/* test_data.c: the IDX reader on small files made here: one good 3-image
 * set that must load with exact values, and one malformed set per check the
 * reader makes (each must give DM_EIO and exactly one error line naming the
 * file). Never touches the real MNIST files. */
#include "diffmpi/data.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "test_util.h"

static char tmpdir[64];
static char created[64][256];
static int n_created = 0;

static void put_be32(unsigned char *p, uint32_t v) {
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

static void write_file(const char *prefix, const char *kind,
                       const unsigned char *bytes, size_t len) {
    char path[256];
    snprintf(path, sizeof path, "%s/%s-%s", tmpdir, prefix, kind);
    FILE *fp = fopen(path, "wb");
    if (!fp) {
        perror(path);
        exit(1);
    }
    if (len && fwrite(bytes, 1, len, fp) != len) exit(1);
    if (fclose(fp) != 0) exit(1);
    snprintf(created[n_created++], sizeof created[0], "%s", path);
}

/* Pixel k of image i in the generated files. */
static unsigned char pixel(int i, int k) {
    return (unsigned char)((i * 37 + k * 11) % 256);
}

/* An images file: header (magic, count, rows, cols) then n_data images. */
static void write_images(const char *prefix, uint32_t magic, uint32_t count,
                         uint32_t rows, uint32_t cols, int n_data) {
    size_t len = 16 + (size_t)n_data * DM_PIX;
    unsigned char *b = malloc(len);
    put_be32(b, magic);
    put_be32(b + 4, count);
    put_be32(b + 8, rows);
    put_be32(b + 12, cols);
    for (int i = 0; i < n_data; i++)
        for (int k = 0; k < DM_PIX; k++) b[16 + i * DM_PIX + k] = pixel(i, k);
    write_file(prefix, "images-idx3-ubyte", b, len);
    free(b);
}

static void write_labels(const char *prefix, uint32_t magic, uint32_t count,
                         const unsigned char *labels, int n_data) {
    unsigned char b[64];
    put_be32(b, magic);
    put_be32(b + 4, count);
    memcpy(b + 8, labels, (size_t)n_data);
    write_file(prefix, "labels-idx1-ubyte", b, 8 + (size_t)n_data);
}

static const unsigned char good_labels[3] = {5, 0, 4};

/* Runs data_load with stderr captured into err (at most errsize-1 chars). */
static dm_status load_capture(dm_dataset *d, const char *dir,
                              const char *prefix, int32_t limit, char *err,
                              size_t errsize) {
    char errpath[128];
    snprintf(errpath, sizeof errpath, "%s/stderr.txt", tmpdir);
    fflush(stderr);
    int saved = dup(2);
    int fd = open(errpath, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    dup2(fd, 2);
    close(fd);
    dm_status st = data_load(d, dir, prefix, limit);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    FILE *fp = fopen(errpath, "r");
    size_t n = fread(err, 1, errsize - 1, fp);
    err[n] = '\0';
    fclose(fp);
    unlink(errpath);
    return st;
}

static int count_lines(const char *s) {
    int n = 0;
    for (; *s; s++) n += *s == '\n';
    return n;
}

/* Expects DM_EIO, one "diffmpi: " line containing `needle1` and `needle2`,
 * and an emptied dataset. */
static void expect_fail(const char *prefix, const char *needle1,
                        const char *needle2) {
    dm_dataset d = {.n = 99, .images = (float *)1, .labels = (uint8_t *)1};
    char err[2048];
    dm_status st = load_capture(&d, tmpdir, prefix, 0, err, sizeof err);
    EXPECT(st == DM_EIO, "%s: status %d, expected DM_EIO", prefix, (int)st);
    EXPECT(d.n == 0 && d.images == NULL && d.labels == NULL,
           "%s: dataset not emptied on failure", prefix);
    EXPECT(count_lines(err) == 1, "%s: expected one error line, got '%s'",
           prefix, err);
    EXPECT(strncmp(err, "diffmpi: ", 9) == 0, "%s: bad prefix in '%s'",
           prefix, err);
    EXPECT(strstr(err, needle1) != NULL, "%s: '%s' not in '%s'", prefix,
           needle1, err);
    EXPECT(strstr(err, needle2) != NULL, "%s: '%s' not in '%s'", prefix,
           needle2, err);
    data_free(&d);
}

static void test_good(void) {
    write_images("good", 0x803, 3, 28, 28, 3);
    write_labels("good", 0x801, 3, good_labels, 3);
    dm_dataset d;
    char err[2048];
    dm_status st = load_capture(&d, tmpdir, "good", 0, err, sizeof err);
    EXPECT(st == DM_OK, "good: status %d (%s)", (int)st, err);
    EXPECT(err[0] == '\0', "good: unexpected output '%s'", err);
    if (st != DM_OK) return;
    EXPECT(d.n == 3, "good: n = %d", (int)d.n);
    int bad = 0;
    for (int i = 0; i < 3; i++)
        for (int k = 0; k < DM_PIX; k++)
            bad += d.images[i * DM_PIX + k] != (float)pixel(i, k) / 255.0f;
    EXPECT(bad == 0, "good: %d pixels differ from u8/255", bad);
    EXPECT(d.images[0] == 0.0f, "good: first pixel %g", d.images[0]);
    EXPECT_CLOSE(d.images[DM_PIX + 1], 48.0 / 255.0, 1e-7, 0, "pixel(1,1)");
    for (int i = 0; i < 3; i++)
        EXPECT(d.labels[i] == good_labels[i], "good: label %d = %d", i,
               d.labels[i]);
    data_free(&d);
    EXPECT(d.images == NULL && d.labels == NULL && d.n == 0,
           "data_free leaves pointers");
    data_free(&d); /* a second free is harmless */

    EXPECT(data_load(&d, tmpdir, "good", 2) == DM_OK, "limit 2");
    EXPECT(d.n == 2, "limit 2: n = %d", (int)d.n);
    if (d.n == 2)
        EXPECT(d.images[DM_PIX + 5] == (float)pixel(1, 5) / 255.0f &&
                   d.labels[1] == 0,
               "limit 2: wrong content");
    data_free(&d);
    EXPECT(data_load(&d, tmpdir, "good", 10) == DM_OK, "limit 10");
    EXPECT(d.n == 3, "limit larger than the set: n = %d", (int)d.n);
    data_free(&d);
}

static void test_bad(void) {
    char dir_missing[128];
    snprintf(dir_missing, sizeof dir_missing, "%s/nodir", tmpdir);
    {
        dm_dataset d;
        char err[2048];
        dm_status st = load_capture(&d, dir_missing, "train", 0, err,
                                    sizeof err);
        EXPECT(st == DM_EIO, "missing dir: status %d", (int)st);
        EXPECT(count_lines(err) == 1, "missing dir: '%s'", err);
        EXPECT(strstr(err, "nodir/train-images-idx3-ubyte") != NULL,
               "missing dir: file not named in '%s'", err);
        char hint[192];
        snprintf(hint, sizeof hint, "tools/fetch_mnist.sh %s", dir_missing);
        EXPECT(strstr(err, hint) != NULL, "missing dir: no hint in '%s'",
               err);
    }

    write_images("nolabels", 0x803, 3, 28, 28, 3);
    expect_fail("nolabels", "nolabels-labels-idx1-ubyte",
                "tools/fetch_mnist.sh");

    write_file("empty", "images-idx3-ubyte", NULL, 0);
    write_labels("empty", 0x801, 3, good_labels, 3);
    expect_fail("empty", "empty-images-idx3-ubyte", "empty");

    write_file("shorthdr", "images-idx3-ubyte",
               (const unsigned char *)"\0\0\x08\x03\0\0\0\x03\0\0", 10);
    write_labels("shorthdr", 0x801, 3, good_labels, 3);
    expect_fail("shorthdr", "shorthdr-images-idx3-ubyte", "truncated");

    write_images("trunc", 0x803, 3, 28, 28, 2);
    write_labels("trunc", 0x801, 3, good_labels, 3);
    expect_fail("trunc", "trunc-images-idx3-ubyte", "truncated");

    write_images("trail", 0x803, 2, 28, 28, 3);
    write_labels("trail", 0x801, 2, good_labels, 2);
    expect_fail("trail", "trail-images-idx3-ubyte", "trailing");

    write_images("lbltrunc", 0x803, 3, 28, 28, 3);
    write_labels("lbltrunc", 0x801, 3, good_labels, 2);
    expect_fail("lbltrunc", "lbltrunc-labels-idx1-ubyte", "truncated");

    write_images("magic", 0x801, 3, 28, 28, 3);
    write_labels("magic", 0x801, 3, good_labels, 3);
    expect_fail("magic", "magic-images-idx3-ubyte", "bad magic 0x00000801");

    write_images("lmagic", 0x803, 3, 28, 28, 3);
    write_labels("lmagic", 0x803, 3, good_labels, 3);
    expect_fail("lmagic", "lmagic-labels-idx1-ubyte", "bad magic 0x00000803");

    /* Little-endian magic, as a wrongly written file would have. */
    write_images("lemagic", 0x03080000, 3, 28, 28, 3);
    write_labels("lemagic", 0x801, 3, good_labels, 3);
    expect_fail("lemagic", "lemagic-images-idx3-ubyte", "bad magic");

    write_images("gz", 0x1f8b0800, 3, 28, 28, 3);
    write_labels("gz", 0x801, 3, good_labels, 3);
    expect_fail("gz", "gz-images-idx3-ubyte", "gzip");

    write_images("dims", 0x803, 3, 28, 27, 3);
    write_labels("dims", 0x801, 3, good_labels, 3);
    expect_fail("dims", "dims-images-idx3-ubyte", "28x27");

    /* 4 G images declared in a 3-image file: must be refused from the file
     * size, without attempting a 3 TB allocation. */
    write_images("huge", 0x803, 0xFFFFFFFFu, 28, 28, 3);
    write_labels("huge", 0x801, 3, good_labels, 3);
    expect_fail("huge", "huge-images-idx3-ubyte", "4294967295");

    write_images("hugelbl", 0x803, 3, 28, 28, 3);
    write_labels("hugelbl", 0x801, 0x7FFFFFFFu, good_labels, 3);
    expect_fail("hugelbl", "hugelbl-labels-idx1-ubyte", "2147483647");

    write_images("zero", 0x803, 0, 28, 28, 0);
    write_labels("zero", 0x801, 0, good_labels, 0);
    expect_fail("zero", "zero-images-idx3-ubyte", "declares 0 images");

    write_images("mismatch", 0x803, 3, 28, 28, 3);
    write_labels("mismatch", 0x801, 2, good_labels, 2);
    expect_fail("mismatch", "has 3 images", "has 2 labels");

    const unsigned char ten[3] = {5, 10, 4};
    write_images("label10", 0x803, 3, 28, 28, 3);
    write_labels("label10", 0x801, 3, ten, 3);
    expect_fail("label10", "label10-labels-idx1-ubyte", "label 10 at index 1");

    /* A bad label beyond the limit is still an error. */
    {
        dm_dataset d;
        char err[2048];
        dm_status st = load_capture(&d, tmpdir, "label10", 1, err,
                                    sizeof err);
        EXPECT(st == DM_EIO, "label beyond limit: status %d", (int)st);
    }

    /* A directory where a file should be. */
    char path[256];
    snprintf(path, sizeof path, "%s/isdir-images-idx3-ubyte", tmpdir);
    EXPECT(mkdir(path, 0700) == 0, "mkdir %s", path);
    write_labels("isdir", 0x801, 3, good_labels, 3);
    expect_fail("isdir", "isdir-images-idx3-ubyte", "not a regular file");
    rmdir(path);
}

int main(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/test_data_XXXXXX");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    test_good();
    test_bad();
    for (int i = 0; i < n_created; i++) unlink(created[i]);
    EXPECT(rmdir(tmpdir) == 0, "temp dir %s not empty at the end", tmpdir);
    return test_finish("test_data");
}
