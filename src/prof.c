/* prof.c: see prof.h. */
#include "diffmpi/prof.h"

#include <string.h>

int prof_on = 0;
double prof_total[PROF_NPHASES];

void prof_enable(int on) { prof_on = on; }
void prof_reset(void) { memset(prof_total, 0, sizeof prof_total); }

const char *prof_name(prof_phase p) {
    static const char *names[PROF_NPHASES] = {
        "GEMM", "bf16 rounding", "im2col/col2im", "BN/GELU/elementwise", "optimizer",
        "communication", "waiting"};
    return p < PROF_NPHASES ? names[p] : "?";
}
