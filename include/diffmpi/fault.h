/* fault.h: fault injection for the test suite only. Nothing happens unless
 * the environment variable DIFFMPI_TEST_KILL is set:
 *
 *   DIFFMPI_TEST_KILL=POINT:STEP[:RANK]
 *
 * makes the process SIGKILL itself the first time it passes the named point
 * while the trainer's step counter (steps completed) equals STEP, on RANK
 * (default: any rank). The points are listed in docs/design.md. */
#ifndef DIFFMPI_FAULT_H
#define DIFFMPI_FAULT_H

#include <stdint.h>

extern int64_t fault_step; /* set by the trainer: steps completed so far */
void fault_init(int rank);
void fault_point_slow(const char *name);
extern int fault_armed;
static inline void fault_point(const char *name) {
    if (fault_armed) fault_point_slow(name);
}

#endif
