/* watchdog.c: heartbeat files and the watchdog thread (see watchdog.h). */
/* getifaddrs, IFF_*, SOCK_NONBLOCK: BSD/GNU interfaces beside POSIX. */
#define _DEFAULT_SOURCE
#include "diffmpi/watchdog.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MAX_ADDRS 8
#define PROBE_SECONDS 3
#define SUSPENDED_SECONDS 2.0 /* a 1 s sleep this much late: the process was stopped */

static struct {
    char dir[4096];
    int rank, size, fd, on;
    int listen_fd, port;        /* the network probe's endpoint (-1: none) */
    char host[64], addrs[160];  /* hostname; IPv4 addresses "a,b,..." */
    double timeout;
    volatile double last;      /* dm_now() of the last progress */
    volatile int64_t step;
    const char *volatile phase;
    pthread_t thread;
    volatile int stop;
} wd = {.fd = -1, .listen_fd = -1};

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

const char *watchdog_enter(const char *phase) {
    if (!wd.on) return NULL;
    const char *prev = wd.phase;
    watchdog_touch(phase);
    return prev;
}

void watchdog_leave(const char *prev) {
    if (prev) watchdog_touch(prev);
}

/* The network probe: every rank listens on a TCP port of every address it
 * has (the kernel completes a connection in the backlog without accept, so
 * a connect that succeeds means the host is reachable and the process
 * alive); the thread drains the backlog once a second. The heartbeat file
 * publishes host, port and addresses, so that a rank whose heartbeat is
 * fresh (its process runs, the shared file system reaches it) but whose
 * port cannot be reached is known to be cut off from the network. */
static void open_probe_endpoint(void) {
    gethostname(wd.host, sizeof wd.host - 1);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_ANY)};
    socklen_t len = sizeof a;
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) != 0 || listen(fd, 64) != 0 ||
        getsockname(fd, (struct sockaddr *)&a, &len) != 0) {
        if (fd >= 0) close(fd);
        return; /* no probe: the watchdog still works from the heartbeats */
    }
    wd.listen_fd = fd;
    wd.port = ntohs(a.sin_port);
    struct ifaddrs *ifs = NULL, *i;
    size_t pos = 0;
    int n = 0;
    if (getifaddrs(&ifs) != 0) ifs = NULL;
    for (i = ifs; i && n < MAX_ADDRS; i = i->ifa_next) {
        if (!i->ifa_addr || i->ifa_addr->sa_family != AF_INET || !(i->ifa_flags & IFF_UP) ||
            (i->ifa_flags & IFF_LOOPBACK))
            continue;
        char ip[INET_ADDRSTRLEN];
        inet_ntop(AF_INET, &((struct sockaddr_in *)i->ifa_addr)->sin_addr, ip, sizeof ip);
        int w = snprintf(wd.addrs + pos, sizeof wd.addrs - pos, "%s%s", n ? "," : "", ip);
        if (w < 0 || (size_t)w >= sizeof wd.addrs - pos) break;
        pos += (size_t)w;
        n++;
    }
    if (ifs) freeifaddrs(ifs);
    if (n == 0) snprintf(wd.addrs, sizeof wd.addrs, "127.0.0.1");
}

static void drain_probes(void) {
    int c;
    while (wd.listen_fd >= 0 && (c = accept(wd.listen_fd, NULL, NULL)) >= 0) close(c);
}

/* The thread rewrites this rank's heartbeat every second: step, phase, the
 * wall time of the last progress and of now (this process is alive), host,
 * probe port and addresses. */
static void write_heartbeat(void) {
    char line[400];
    double now = wall_now(), progress = now - (dm_now() - wd.last);
    int n = snprintf(line, sizeof line, "%lld %s %.3f %.3f %s %d %s\n", (long long)wd.step,
                     wd.phase ? wd.phase : "?", progress, now, wd.host[0] ? wd.host : "?",
                     wd.port, wd.addrs[0] ? wd.addrs : "-");
    /* One pwrite of a short line: readers see the old or the new text. */
    if (pwrite(wd.fd, line, (size_t)n, 0) == n && ftruncate(wd.fd, n) != 0) return;
}

/* One rank's heartbeat file. */
typedef struct {
    long long step;
    char phase[32], host[64], addrs[160];
    double progress, alive;
    int port;
} heartbeat;

static void read_heartbeat(int r, heartbeat *h) {
    char path[4200], line[400] = "";
    memset(h, 0, sizeof *h);
    h->step = -1;
    snprintf(h->phase, sizeof h->phase, "?");
    snprintf(h->host, sizeof h->host, "?");
    snprintf(path, sizeof path, "%s/rank-%d", wd.dir, r);
    FILE *f = fopen(path, "r");
    if (!f) return;
    if (fgets(line, sizeof line, f))
        sscanf(line, "%lld %31s %lf %lf %63s %d %159s", &h->step, h->phase, &h->progress,
               &h->alive, h->host, &h->port, h->addrs);
    fclose(f);
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
        heartbeat h;
        read_heartbeat(r, &h);
        if (now - h.alive > stale) {
            n++;
            pos += (size_t)snprintf(buf + pos, pos < size ? size - pos : 0,
                                    "%srank %d on %s (silent for %.0f s, last in step %lld, %s)",
                                    n > 1 ? ", " : "", r, h.host,
                                    h.alive > 0 ? now - h.alive : -1.0, h.step + 1, h.phase);
        } else if (*first_alive < 0) {
            *first_alive = r;
        }
    }
    return n;
}

/* Try every other rank's probe endpoint at once (non-blocking connects,
 * one poll for at most PROBE_SECONDS); the ranks none of whose addresses
 * accepted go into buf ("rank 1 on hostB (198.18.0.2)"). Returns how many. */
static int unreachable_ranks(char *buf, size_t size) {
    enum { MAXP = 4096 };
    int nfd = 0, n = 0;
    size_t pos = 0;
    buf[0] = '\0';
    struct pollfd *pf = dm_calloc(MAXP, sizeof *pf);
    int *owner = dm_calloc(MAXP, sizeof *owner), *ok = dm_calloc((size_t)wd.size, sizeof *ok);
    heartbeat *hb = dm_calloc((size_t)wd.size, sizeof *hb);
    for (int r = 0; r < wd.size; r++) {
        read_heartbeat(r, &hb[r]);
        if (r == wd.rank || hb[r].port <= 0) {
            ok[r] = 1; /* ourselves, or a rank without a probe: not judged */
            continue;
        }
        char list[160], *save = NULL;
        snprintf(list, sizeof list, "%s", hb[r].addrs);
        for (char *ip = strtok_r(list, ",", &save); ip && nfd < MAXP;
             ip = strtok_r(NULL, ",", &save)) {
            struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)hb[r].port)};
            if (inet_pton(AF_INET, ip, &a.sin_addr) != 1) continue;
            int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
            if (fd < 0) continue;
            if (connect(fd, (struct sockaddr *)&a, sizeof a) == 0) {
                ok[r] = 1;
                close(fd);
                continue;
            }
            if (errno != EINPROGRESS) {
                close(fd);
                continue;
            }
            pf[nfd] = (struct pollfd){.fd = fd, .events = POLLOUT};
            owner[nfd++] = r;
        }
    }
    double t0 = dm_now();
    for (int left = nfd; left > 0 && dm_now() - t0 < PROBE_SECONDS;) {
        int ms = (int)((PROBE_SECONDS - (dm_now() - t0)) * 1000) + 1;
        if (poll(pf, (nfds_t)nfd, ms) <= 0) break;
        for (int i = 0; i < nfd; i++) {
            if (pf[i].fd < 0 || !pf[i].revents) continue;
            int err = 1;
            socklen_t l = sizeof err;
            if (getsockopt(pf[i].fd, SOL_SOCKET, SO_ERROR, &err, &l) == 0 && err == 0)
                ok[owner[i]] = 1;
            close(pf[i].fd);
            pf[i].fd = -1;
            left--;
        }
    }
    for (int i = 0; i < nfd; i++)
        if (pf[i].fd >= 0) close(pf[i].fd);
    for (int r = 0; r < wd.size; r++) {
        if (ok[r]) continue;
        n++;
        pos += (size_t)snprintf(buf + pos, pos < size ? size - pos : 0, "%srank %d on %s (%s)",
                                n > 1 ? ", " : "", r, hb[r].host, hb[r].addrs);
    }
    free(pf), free(owner), free(ok), free(hb);
    return n;
}

/* With a host cut off, mpirun (or the remote orted) waits for its lost
 * peer without end once a rank exits: end it too, if it is our parent. */
static void end_launcher(void) {
    char path[64], comm[64] = "";
    snprintf(path, sizeof path, "/proc/%d/comm", (int)getppid());
    FILE *f = fopen(path, "r");
    if (f) {
        if (!fgets(comm, sizeof comm, f)) comm[0] = '\0';
        fclose(f);
    }
    comm[strcspn(comm, "\n")] = '\0';
    if (!strcmp(comm, "mpirun") || !strcmp(comm, "orterun") || !strcmp(comm, "mpiexec") ||
        !strcmp(comm, "orted"))
        kill(getppid(), SIGKILL);
}

static void *watch(void *arg) {
    (void)arg;
    /* A rank counts as silent when its heartbeat is this old. */
    double stale = wd.timeout / 2 < 10 ? wd.timeout / 2 : 10;
    if (stale < 2.5) stale = 2.5;
    /* Time this process spent stopped since the last progress `seen`: a
     * second's sleep that took SUSPENDED_SECONDS longer means the process
     * (or the machine) did not run: a suspended Slurm job (scontrol suspend,
     * gang scheduling: SIGSTOP to every rank, SIGCONT later), a debugger, a
     * paused VM. That time is nobody's stall and does not count towards the
     * timeout (less up to a second: the part of the stop that overlaps the
     * sleep itself counts as running). A rank stopped alone still stalls
     * the others, which do not sleep long, and their watchdogs end the job. */
    double seen = wd.last, suspended = 0;
    while (!wd.stop) {
        struct timespec one = {1, 0};
        double before = dm_now();
        nanosleep(&one, NULL);
        double late = dm_now() - before - 1.0, last = wd.last;
        if (last != seen) seen = last, suspended = 0;
        if (late > SUSPENDED_SECONDS) suspended += late;
        write_heartbeat();
        drain_probes();
        if (wd.stop || dm_now() - seen - suspended < wd.timeout) continue;
        char who[2048], cut[2048];
        int alive, n = silent_ranks(who, sizeof who, stale, &alive);
        /* Every rank whose processes all answer asks the network too. */
        int m = n > 0 ? 0 : unreachable_ranks(cut, sizeof cut);
        if (alive != wd.rank) {
            /* Not the speaker. Cut off from a peer: mpirun will not end
             * this rank or its orted; give the speaker time, then end both. */
            if (m == 0) continue;
            struct timespec grace = {2 * PROBE_SECONDS, 0};
            nanosleep(&grace, NULL);
            end_launcher();
            _exit(DM_EXIT_RUNTIME);
        }
        /* The lowest rank that still answers speaks, once, and ends the job;
         * mpirun then ends the other ranks. */
        if (n > 0)
            dm_error("watchdog: no progress for %.0f s in step %lld; not answering: %s; "
                     "ending the job (resume with --resume auto)",
                     wd.timeout, (long long)wd.step + 1, who);
        else if (m > 0)
            dm_error("watchdog: no progress for %.0f s in step %lld (%s): cannot reach %s "
                     "over the network, though its process runs (its heartbeat is fresh); "
                     "ending the job (resume with --resume auto)",
                     wd.timeout, (long long)wd.step + 1, wd.phase ? wd.phase : "?", cut);
        else
            dm_error("watchdog: no progress for %.0f s in step %lld (%s), though every "
                     "rank answers; ending the job", wd.timeout, (long long)wd.step + 1,
                     wd.phase ? wd.phase : "?");
        if (m > 0) {
            /* Let mpirun pass the line on before it goes. */
            struct timespec flush = {1, 0};
            nanosleep(&flush, NULL);
            end_launcher();
        }
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
    open_probe_endpoint();
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
    if (wd.listen_fd >= 0) close(wd.listen_fd);
    wd.listen_fd = -1;
    wd.on = 0;
}
