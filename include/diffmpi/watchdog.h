/* watchdog.h: notice a rank that stops answering instead of hanging.
 *
 * The trainer calls watchdog_beat() whenever it makes progress (a memory
 * write, no system call). A thread on every rank rewrites
 * <out>/.heartbeat/rank-<r> once a second (step, phase, last progress, now)
 * and, when its rank has made no progress for `timeout` seconds, reads all
 * heartbeats: ranks whose file stopped changing are not answering (stopped,
 * dead, or their node is gone). The lowest-numbered rank that still answers
 * prints one line naming them and the step, then ends its process (mpirun
 * then ends the job). The output directory must be visible to every rank,
 * as it must be for --resume anyway.
 */
#ifndef DIFFMPI_WATCHDOG_H
#define DIFFMPI_WATCHDOG_H

#include <stdint.h>
#include "diffmpi/common.h"

/* timeout <= 0: off. */
dm_status watchdog_start(const char *out_dir, int rank, int size, double timeout);
/* Record progress: the step being worked on and a short phase name. */
void watchdog_beat(int64_t step, const char *phase);
/* Record progress within the current step (long evaluations, sampling). */
void watchdog_touch(const char *phase);
void watchdog_stop(void);

#endif
