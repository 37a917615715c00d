/* test_png.c: png_write_grid writes a 2x3 grid that libpng reads back with
 * the right size, format and every pixel (clamping, rounding, grey gaps);
 * failures (missing directory, target is a directory, a write error in the
 * middle of the stream) give DM_EIO, one message and no leftover files. */
#include "diffmpi/png.h"

#include <fcntl.h>
#include <png.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "test_util.h"

static char tmpdir[64];
static char errpath[128];
/* stderr capture around one call: begin, call, end(buf). */
static void capture_begin(void) { test_capture_begin(errpath); }

static void capture_end(char *buf, size_t size) { test_capture_end(errpath, buf, size); }

static int exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

static int count_lines(const char *s) {
    int n = 0;
    for (; *s; s++) n += *s == '\n';
    return n;
}

enum { ROWS = 2, COLS = 3, H = 4, W = 5, PAD = 2 };

/* Value of pixel (y, x) of cell n, covering below 0, above 1, NaN, and
 * exact halves. */
static float cell_value(int n, int y, int x) {
    if (n == 0 && y == 0 && x == 0) return -0.5f;
    if (n == 0 && y == 0 && x == 1) return 1.5f;
    if (n == 0 && y == 0 && x == 2) return NAN;
    if (n == 0 && y == 0 && x == 3) return 0.5f;
    if (n == 0 && y == 0 && x == 4) return 1.0f;
    return (float)((n * 37 + y * 11 + x * 3) % 97) / 96.0f;
}

/* The byte the file must hold, written out independently of png.c. */
static int expected_byte(int n, int y, int x) {
    float v = cell_value(n, y, x);
    if (v != v || v <= 0.0f) return 0;
    if (v >= 1.0f) return 255;
    return (int)floor((double)v * 255.0 + 0.5);
}

static void test_roundtrip(void) {
    float images[ROWS * COLS * H * W];
    for (int n = 0; n < ROWS * COLS; n++)
        for (int y = 0; y < H; y++)
            for (int x = 0; x < W; x++)
                images[(n * H + y) * W + x] = cell_value(n, y, x);
    char path[128], tmp[160];
    snprintf(path, sizeof path, "%s/grid.png", tmpdir);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    for (int pass = 0; pass < 2; pass++) { /* the second one overwrites */
        char err[1024];
        capture_begin();
        dm_status st = png_write_grid(path, images, ROWS, COLS, H, W, PAD);
        capture_end(err, sizeof err);
        EXPECT(st == DM_OK, "write pass %d: status %d '%s'", pass, (int)st,
               err);
        EXPECT(err[0] == '\0', "write: unexpected output '%s'", err);
        EXPECT(!exists(tmp), "tmp file left after success");
    }

    png_image img;
    memset(&img, 0, sizeof img);
    img.version = PNG_IMAGE_VERSION;
    if (!png_image_begin_read_from_file(&img, path)) {
        EXPECT(0, "libpng cannot read %s: %s", path, img.message);
        return;
    }
    const int width = COLS * W + (COLS - 1) * PAD;
    const int height = ROWS * H + (ROWS - 1) * PAD;
    EXPECT((int)img.width == width && (int)img.height == height,
           "size %ux%u, expected %dx%d", img.width, img.height, width,
           height);
    EXPECT(img.format == PNG_FORMAT_GRAY, "file format %u is not 8-bit gray",
           img.format);
    img.format = PNG_FORMAT_GRAY;
    unsigned char *pix = malloc(PNG_IMAGE_SIZE(img));
    EXPECT(png_image_finish_read(&img, NULL, pix, 0, NULL), "finish_read: %s",
           img.message);
    int bad = 0, gaps = 0;
    for (int py = 0; py < height; py++) {
        for (int px = 0; px < width; px++) {
            int r = py / (H + PAD), y = py % (H + PAD);
            int c = px / (W + PAD), x = px % (W + PAD);
            int want = (y >= H || x >= W) ? 128
                                          : expected_byte(r * COLS + c, y, x);
            gaps += want == 128 && (y >= H || x >= W);
            bad += pix[py * width + px] != want;
        }
    }
    EXPECT(bad == 0, "%d pixels differ", bad);
    EXPECT(gaps == width * height - ROWS * COLS * H * W, "gap count %d",
           gaps);
    /* Spot checks: clamping, NaN, rounding of 0.5, a gap, the last cell. */
    EXPECT(pix[0] == 0 && pix[1] == 255 && pix[2] == 0 && pix[3] == 128 &&
               pix[4] == 255,
           "first row %d %d %d %d %d", pix[0], pix[1], pix[2], pix[3],
           pix[4]);
    EXPECT(pix[5] == 128 && pix[H * width] == 128, "gap pixels %d %d",
           pix[5], pix[H * width]);
    int last = (height - 1) * width + width - 1;
    EXPECT(pix[last] == expected_byte(5, H - 1, W - 1), "last pixel %d",
           pix[last]);
    free(pix);
    unlink(path);
}

/* A failing write: DM_EIO, one line naming path, and neither the file nor
 * its tmp left behind (unless the target existed before). */
static void expect_fail(const char *path, const float *images, int rows,
                        int cols, int h, int w, int pad, const char *fragment) {
    char tmp[512], err[1024];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    int existed = exists(path);
    capture_begin();
    dm_status st = png_write_grid(path, images, rows, cols, h, w, pad);
    capture_end(err, sizeof err);
    EXPECT(st == DM_EIO, "%s: status %d, expected DM_EIO", path, (int)st);
    EXPECT(count_lines(err) == 1 && strncmp(err, "diffmpi: ", 9) == 0 &&
               strstr(err, path) != NULL,
           "%s: message '%s'", path, err);
    EXPECT(strstr(err, fragment) != NULL, "'%s' not in '%s'", fragment, err);
    EXPECT(!exists(tmp), "%s left behind", tmp);
    EXPECT(exists(path) == existed, "%s: final file created or removed",
           path);
}

static void test_errors(void) {
    float images[ROWS * COLS * H * W] = {0};
    char path[128];
    snprintf(path, sizeof path, "%s/no/such/dir/grid.png", tmpdir);
    expect_fail(path, images, ROWS, COLS, H, W, PAD, "No such file");

    /* The tmp file can be made but the rename onto a directory fails. */
    snprintf(path, sizeof path, "%s/adir", tmpdir);
    EXPECT(mkdir(path, 0700) == 0, "mkdir %s", path);
    expect_fail(path, images, ROWS, COLS, H, W, PAD, "directory");
    rmdir(path);

    /* A write error inside libpng's stream: a file size limit makes the
     * compressed data of a noisy 400x400 image fail part way through. */
    enum { N = 400 };
    float *noise = malloc(sizeof(float) * N * N);
    uint32_t s = 12345;
    for (int i = 0; i < N * N; i++) {
        s = s * 1664525u + 1013904223u;
        noise[i] = (float)(s >> 8) / 16777216.0f;
    }
    struct rlimit old, lim;
    getrlimit(RLIMIT_FSIZE, &old);
    lim = old;
    lim.rlim_cur = 4096;
    signal(SIGXFSZ, SIG_IGN);
    snprintf(path, sizeof path, "%s/big.png", tmpdir);
    if (setrlimit(RLIMIT_FSIZE, &lim) == 0) {
        expect_fail(path, noise, 1, 1, N, N, 0, "File too large");
        setrlimit(RLIMIT_FSIZE, &old);
    } else {
        EXPECT(0, "setrlimit(RLIMIT_FSIZE) failed");
    }
    signal(SIGXFSZ, SIG_DFL);
    /* Without the limit the same image writes fine. */
    EXPECT(png_write_grid(path, noise, 1, 1, N, N, 0) == DM_OK, "big.png");
    unlink(path);
    free(noise);
}

int main(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/test_png_XXXXXX");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    snprintf(errpath, sizeof errpath, "%s/stderr.txt", tmpdir);
    test_roundtrip();
    test_errors();
    unlink(errpath);
    EXPECT(rmdir(tmpdir) == 0, "temp dir %s not empty at the end", tmpdir);
    return test_finish("test_png");
}
