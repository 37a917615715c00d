/* test_watchdog.c: the watchdog's clock, in child processes that this test
 * stops (SIGSTOP) and continues as `scontrol suspend` / `resume` do with
 * every rank of a Slurm job:
 *  - stopped for twice the timeout while idle for less than it: not a
 *    stall, the child finishes (exit 0);
 *  - idle for twice the timeout, never stopped: ended by its watchdog
 *    (exit 1), so the check can fail;
 *  - idle longer than the timeout in running time, with a stop in the
 *    middle: ended too (only the stopped time is discounted).
 * The child's idle time is many short sleeps, so that it goes on after the
 * stop in running time; without the discount its watchdog would end it on
 * waking (checked against the watchdog before this test existed). The
 * discount misses up to a second of a stop (the part that overlaps the
 * watchdog's own 1 s sleep), hence 1.5 s of idling against 3 s. */
#include "diffmpi/watchdog.h"
#include "test_util.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define TIMEOUT 3.0

static void nap(double s) {
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    while (nanosleep(&ts, &ts) != 0) {
    }
}

/* The child: progress, `idle` seconds of running time without progress
 * (in 50 ms sleeps), progress, exit 0, unless its watchdog ends it first. */
static void child(const char *dir, double idle) {
    if (watchdog_start(dir, 0, 1, TIMEOUT) != DM_OK) _exit(7);
    watchdog_beat(0, "test");
    for (int i = 0; i < (int)(idle / 0.05); i++) nap(0.05);
    watchdog_beat(1, "test");
    watchdog_stop();
    _exit(0);
}

/* Exit code of a child idle for `idle` s, stopped `stop_at` s after it
 * starts for `stopped` s (none if 0). */
static int run(const char *dir, double idle, double stop_at, double stopped) {
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) child(dir, idle);
    if (stopped > 0) {
        nap(stop_at);
        kill(pid, SIGSTOP);
        nap(stopped);
        kill(pid, SIGCONT);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

int main(void) {
    char dir[] = "/tmp/dm-watchdog-XXXXXX";
    EXPECT(mkdtemp(dir) != NULL, "temporary directory");
    int rc = run(dir, 1.5, 0.3, 2 * TIMEOUT);
    EXPECT(rc == 0, "stopped %.0f s, idle 1.5 s running (timeout %.0f s): finishes (exit %d)",
           2 * TIMEOUT, TIMEOUT, rc);
    rc = run(dir, 2 * TIMEOUT, 0, 0);
    EXPECT(rc == 1, "idle %.0f s running, never stopped: ended by the watchdog (exit %d)",
           2 * TIMEOUT, rc);
    rc = run(dir, 1.5 * TIMEOUT, 0.6 * TIMEOUT, 2 * TIMEOUT);
    EXPECT(rc == 1, "idle %.0f s running around a %.0f s stop: ended (exit %d)", 1.5 * TIMEOUT,
           2 * TIMEOUT, rc);
    char path[256];
    snprintf(path, sizeof path, "%s/.heartbeat/rank-0", dir);
    remove(path);
    snprintf(path, sizeof path, "%s/.heartbeat", dir);
    remove(path);
    remove(dir);
    return test_finish("test_watchdog");
}
