/* watchdog.c: heartbeat files and the watchdog thread (see watchdog.h). */
#include "diffmpi/watchdog.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "diffmpi/h5util.h"

static struct {
    char dir[4096];
    int rank, size, fd, on;
    double timeout;
    volatile double last;      /* dm_now() of the last progress */
    volatile int64_t step;
    const char *volatile phase;
    pthread_t thread;
    volatile int stop;
} wd = {.fd = -1};

/* Heartbeats compare times across processes (and nodes): wall clock. */
static double wall_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void watchdog_beat(int64_t step, const char *phase) {
    if (!wd.on) return;
    wd.step = step;
    wd.phase = phase;
    wd.last = dm_now();
}

void watchdog_touch(const char *phase) {
    if (!wd.on) return;
    wd.phase = phase;
    wd.last = dm_now();
}

/* The thread rewrites this rank's heartbeat every second: step, phase, the
 * wall time of the last progress and of now (this process is alive). */
static void write_heartbeat(void) {
    char line[160];
    double now = wall_now(), progress = now - (dm_now() - wd.last);
    int n = snprintf(line, sizeof line, "%lld %s %.3f %.3f\n", (long long)wd.step,
                     wd.phase ? wd.phase : "?", progress, now);
    /* One pwrite of a short line: readers see the old or the new text. */
    if (pwrite(wd.fd, line, (size_t)n, 0) == n && ftruncate(wd.fd, n) != 0) return;
}

/* Ranks whose process stopped answering (heartbeat not rewritten for
 * `stale` seconds) into buf; returns how many, and the lowest rank that
 * still answers in *first_alive. */
static int silent_ranks(char *buf, size_t size, double stale, int *first_alive) {
    int n = 0;
    double now = wall_now();
    size_t pos = 0;
    *first_alive = -1;
    buf[0] = '\0';
    for (int r = 0; r < wd.size; r++) {
        char path[4200], line[160] = "", phase[32] = "?";
        long long step = -1;
        double progress = 0, alive = 0;
        snprintf(path, sizeof path, "%s/rank-%d", wd.dir, r);
        FILE *f = fopen(path, "r");
        if (f) {
            if (fgets(line, sizeof line, f))
                sscanf(line, "%lld %31s %lf %lf", &step, phase, &progress, &alive);
            fclose(f);
        }
        if (now - alive > stale) {
            n++;
            pos += (size_t)snprintf(buf + pos, pos < size ? size - pos : 0,
                                    "%srank %d (silent for %.0f s, last in step %lld, %s)",
                                    n > 1 ? ", " : "", r, alive > 0 ? now - alive : -1.0,
                                    step + 1, phase);
        } else if (*first_alive < 0) {
            *first_alive = r;
        }
    }
    return n;
}

static void *watch(void *arg) {
    (void)arg;
    /* A rank counts as silent when its heartbeat is this old. */
    double stale = wd.timeout / 2 < 10 ? wd.timeout / 2 : 10;
    if (stale < 2.5) stale = 2.5;
    while (!wd.stop) {
        struct timespec one = {1, 0};
        nanosleep(&one, NULL);
        write_heartbeat();
        if (wd.stop || dm_now() - wd.last < wd.timeout) continue;
        char who[2048];
        int alive, n = silent_ranks(who, sizeof who, stale, &alive);
        /* Let the lowest rank that still answers speak, once, and end the
         * job; mpirun then ends the other ranks. */
        if (alive != wd.rank) continue;
        if (n > 0)
            dm_error("watchdog: no progress for %.0f s in step %lld; not answering: %s; "
                     "ending the job (resume with --resume auto)",
                     wd.timeout, (long long)wd.step + 1, who);
        else
            dm_error("watchdog: no progress for %.0f s in step %lld (%s), though every "
                     "rank answers; ending the job", wd.timeout, (long long)wd.step + 1,
                     wd.phase ? wd.phase : "?");
        _exit(DM_EXIT_RUNTIME);
    }
    return NULL;
}

dm_status watchdog_start(const char *out_dir, int rank, int size, double timeout) {
    if (timeout <= 0) return DM_OK;
    snprintf(wd.dir, sizeof wd.dir, "%s/.heartbeat", out_dir);
    if (mkdir(wd.dir, 0777) != 0 && errno != EEXIST) {
        dm_error("%s: cannot create the watchdog's heartbeat directory: %s", wd.dir,
                 strerror(errno));
        return DM_EIO;
    }
    char path[4200];
    snprintf(path, sizeof path, "%s/rank-%d", wd.dir, rank);
    wd.fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (wd.fd < 0) {
        dm_error("%s: cannot write heartbeat: %s", path, strerror(errno));
        return DM_EIO;
    }
    wd.rank = rank, wd.size = size, wd.timeout = timeout, wd.on = 1, wd.stop = 0;
    watchdog_beat(0, "start");
    write_heartbeat();
    if (pthread_create(&wd.thread, NULL, watch, NULL) != 0) {
        dm_error("cannot start the watchdog thread");
        wd.on = 0;
        return DM_EIO;
    }
    return DM_OK;
}

void watchdog_stop(void) {
    if (!wd.on) return;
    wd.stop = 1;
    pthread_join(wd.thread, NULL);
    close(wd.fd);
    wd.fd = -1;
    wd.on = 0;
}
