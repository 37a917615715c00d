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
 *
 * A host cut off from the network keeps writing its heartbeats (the shared
 * file system still reaches it), so when every heartbeat is fresh each rank
 * also probes the others over TCP: every rank listens on a port published
 * in its heartbeat, and a connect that fails within 3 s means that rank is
 * cut off. The line then names it, its host and the phase (collective) the
 * job hung in, and because mpirun and the remote orted would wait for the
 * lost host without end, the ranks end their launcher too (SIGKILL to a
 * parent mpirun/orted), so the whole job ends within about timeout + 10 s.
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
/* Around a collective: progress, and the phase a hang there is reported
 * in (one word, e.g. "gradient-reduction"); leave restores the phase that
 * enter returned. */
const char *watchdog_enter(const char *phase);
void watchdog_leave(const char *prev);
void watchdog_stop(void);

#endif
