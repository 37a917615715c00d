/* test_util.h: tiny assertion helpers for the unit tests. A test program
 * returns test_finish() from main: non-zero if any check failed, so CTest
 * sees the failure (never print a mismatch and exit 0). */
#ifndef DIFFMPI_TEST_UTIL_H
#define DIFFMPI_TEST_UTIL_H

#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <unistd.h>

static int test_failures = 0;
static int test_checks = 0;

#define EXPECT(cond, ...)                                                     \
    do {                                                                      \
        test_checks++;                                                        \
        if (!(cond)) {                                                        \
            test_failures++;                                                  \
            fprintf(stderr, "%s:%d: FAILED: ", __FILE__, __LINE__);           \
            fprintf(stderr, __VA_ARGS__);                                     \
            fprintf(stderr, "\n");                                            \
        }                                                                     \
    } while (0)

/* |a - b| <= atol + rtol * |b| with rtol well below 1, so a 100 % error never
 * passes. */
#define EXPECT_CLOSE(a, b, atol, rtol, what)                                  \
    do {                                                                      \
        double a_ = (a), b_ = (b);                                            \
        EXPECT(fabs(a_ - b_) <= (atol) + (rtol) * fabs(b_),                   \
               "%s: got %.9g expected %.9g", what, a_, b_);                   \
    } while (0)

/* Capture stderr around one call into a file, then read it back:
 * test_capture_begin(path); call(); test_capture_end(path, buf, size). */
static int test_saved_stderr = -1;

static inline void test_capture_begin(const char *path) {
    fflush(stderr);
    test_saved_stderr = dup(2);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    dup2(fd, 2);
    close(fd);
}

static inline void test_capture_end(const char *path, char *buf, size_t size) {
    fflush(stderr);
    dup2(test_saved_stderr, 2);
    close(test_saved_stderr);
    FILE *fp = fopen(path, "r");
    size_t n = fp ? fread(buf, 1, size - 1, fp) : 0;
    buf[n] = '\0';
    if (fp) fclose(fp);
}

static inline int test_finish(const char *name) {
    printf("%s: %d checks, %d failed\n", name, test_checks, test_failures);
    return test_failures ? 1 : 0;
}

#endif
