/* fault.c: see fault.h. */
#include "diffmpi/fault.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int64_t fault_step = 0;
int fault_armed = 0;
static char point[64];
static long long at_step = -1;
static int my_rank = 0, at_rank = -1;

void fault_init(int rank) {
    const char *s = getenv("DIFFMPI_TEST_KILL");
    my_rank = rank;
    if (!s) return;
    char name[64];
    long long st = -1;
    int r = -1;
    int n = sscanf(s, "%63[^:]:%lld:%d", name, &st, &r);
    if (n < 2) return;
    snprintf(point, sizeof point, "%s", name);
    at_step = st;
    at_rank = n == 3 ? r : -1;
    fault_armed = 1;
}

void fault_point_slow(const char *name) {
    if (fault_step != at_step || strcmp(name, point) != 0) return;
    if (at_rank >= 0 && at_rank != my_rank) return;
    fflush(stdout);
    raise(SIGKILL);
}
