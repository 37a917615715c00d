/* common.c: error reporting, checked allocation, clock. */
#include "diffmpi/common.h"

#include <errno.h>
#include <mpi.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static int quiet_errors = 0;

void dm_set_quiet(int quiet) { quiet_errors = quiet; }
int dm_quiet(void) { return quiet_errors; }

void dm_error(const char *fmt, ...) {
    if (quiet_errors) return;
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fprintf(stderr, "diffmpi: %s\n", msg);
    fflush(stderr);
}

_Noreturn void dm_fatal(const char *file, int line, const char *fmt, ...) {
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fprintf(stderr, "diffmpi: internal error at %s:%d: %s\n", file, line, msg);
    fflush(stderr);
    int up = 0, down = 0;
    MPI_Initialized(&up);
    MPI_Finalized(&down);
    if (up && !down) MPI_Abort(MPI_COMM_WORLD, DM_EXIT_RUNTIME);
    exit(DM_EXIT_RUNTIME);
}

void *dm_malloc(size_t bytes) {
    void *p = malloc(bytes ? bytes : 1);
    DM_CHECK(p != NULL, "out of memory allocating %zu bytes", bytes);
    return p;
}

void *dm_calloc(size_t count, size_t size) {
    void *p = calloc(count ? count : 1, size ? size : 1);
    DM_CHECK(p != NULL, "out of memory allocating %zu x %zu bytes", count,
             size);
    return p;
}

int dm_exit_code(dm_status st) {
    if (st == DM_OK) return DM_EXIT_OK;
    if (st == DM_EUSAGE) return DM_EXIT_USAGE;
    if (st == DM_ESTOP) return DM_EXIT_SIGNAL;
    return DM_EXIT_RUNTIME;
}

dm_status dm_agree(dm_status st) {
    int v = (int)st, w = 0;
    MPI_Allreduce(&v, &w, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    return (dm_status)w;
}

int dm_from_rank0(int v) {
    MPI_Bcast(&v, 1, MPI_INT, 0, MPI_COMM_WORLD);
    return v;
}

int dm_parse_long(const char *s, long lo, long hi, long *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno == ERANGE || end == s || *end != '\0' || v < lo || v > hi) return 0;
    *out = v;
    return 1;
}

double dm_peak_rss_mib(void) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    double kib = 0;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "VmHWM: %lf", &kib) == 1) break;
    if (f) fclose(f);
    return kib / 1024.0;
}

double dm_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}
