/* common.h: status codes, error reporting and the always-on check macros.
 *
 * Modules that can fail on user input (config, data, checkpoints, logs)
 * return a dm_status and print exactly one line on stderr through dm_error()
 * naming the file/option and what is wrong. Only the top level (main.c)
 * decides how to exit: DM_EUSAGE -> exit code 2, anything else -> 1.
 *
 * DM_CHECK is for internal invariants that must hold whatever the input;
 * it is always on (never compiled out like assert) and aborts the job.
 */
#ifndef DIFFMPI_COMMON_H
#define DIFFMPI_COMMON_H

#include <stddef.h>
#include <stdint.h>

typedef enum {
    DM_OK = 0,
    DM_EUSAGE = 2,   /* bad option, config key or value: exit code 2 */
    DM_EIO = 3,      /* file missing, unreadable, unwritable, malformed */
    DM_ENUM = 4,     /* non-finite loss or gradient */
    DM_ESTOP = 5,    /* stopped by a signal after writing a checkpoint */
} dm_status;

/* Exit codes of the diffmpi executable (documented in README.md). */
enum {
    DM_EXIT_OK = 0,
    DM_EXIT_RUNTIME = 1,
    DM_EXIT_USAGE = 2,
    DM_EXIT_SIGNAL = 3,   /* SIGTERM/SIGUSR1: checkpoint written, resume later */
};

/* The exit code of a status: DM_OK 0, DM_EUSAGE 2, DM_ESTOP 3, else 1. */
int dm_exit_code(dm_status st);

/* Every rank of MPI_COMM_WORLD agrees on a status: the worst (largest)
 * one wins. Collective. */
dm_status dm_agree(dm_status st);

/* Rank 0's v, on every rank of MPI_COMM_WORLD (a decision one rank makes
 * for the job: a measured precision, the status of a file only it wrote).
 * Collective; other ranks' v is ignored. */
int dm_from_rank0(int v);

/* Print "diffmpi: <message>\n" on stderr as one write (printf format). */
void dm_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* quiet != 0: dm_error prints nothing (ranks other than 0 while parsing the
 * command line, whose errors are identical on every rank). */
void dm_set_quiet(int quiet);
int dm_quiet(void);

/* Abort the whole job (MPI_Abort when MPI is up) after printing a message. */
_Noreturn void dm_fatal(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define DM_CHECK(cond, ...)                                                   \
    do {                                                                      \
        if (!(cond)) dm_fatal(__FILE__, __LINE__, __VA_ARGS__);               \
    } while (0)

/* malloc/calloc that abort with the requested size on failure. */
void *dm_malloc(size_t bytes);
void *dm_calloc(size_t count, size_t size);

/* Strict base-10 integer: the whole string, no overflow, within [lo, hi].
 * Returns 1 and sets *out, or 0 and leaves *out alone. */
int dm_parse_long(const char *s, long lo, long hi, long *out);

/* Peak resident set size of this process in MiB (VmHWM), 0 if unknown. */
double dm_peak_rss_mib(void);

/* Seconds since an arbitrary fixed point (monotonic clock). */
double dm_now(void);

/* PETSc's PetscCall: call a function returning dm_status and, when it fails,
 * return its status from the calling function (the callee has printed the
 * one line). A function that owns a resource (an open HDF5 file, a
 * temporary file, a buffer) is split in two: the outer one acquires it,
 * calls the inner one and releases it whatever happened; the inner one
 * uses DM_TRY freely.
 *
 *   static dm_status write_body(hid_t f, const char *path) {
 *       DM_TRY(h5_attr_i64(f, path, "step", step));
 *       DM_TRY(h5_attr_f64(f, path, "lr", lr));
 *       return h5_attr_str(f, path, "config", cfg);
 *   }
 */
#define DM_TRY(call)                                                          \
    do {                                                                      \
        dm_status dm_try_st_ = (call);                                        \
        if (dm_try_st_ != DM_OK) return dm_try_st_;                           \
    } while (0)

#endif
