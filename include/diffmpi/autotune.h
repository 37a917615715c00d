/* autotune.h: what `precision = auto` and `conv_algo = auto` become at a
 * job's start, and the set-up lines that say so (train and bench).
 *
 *   char pnote[448], cnote[448];
 *   dm_status st = autotune_setup(&cfg, out, resume, rank, pnote, sizeof pnote,
 *                                 cnote, sizeof cnote);  // collective
 *   if (st == DM_OK && rank == 0) autotune_print(&cfg, pnote, cnote);
 *
 * autotune_setup sets up the GEMM engine (gemm_setup) in the precision
 * that runs and rewrites cfg's precision, conv_algo, winograd_min_width and
 * winograd4_min_width to what runs, the same on every rank, so that every
 * output records it. A resumed run (resume: "auto" or a path; NULL for a
 * fresh run) keeps its checkpoint's choices, so that it stays bitwise on
 * course. Otherwise precision = auto times one product in both precisions
 * where the CPU has bf16 units (gemm_resolve_precision), and conv_algo =
 * auto times the 3x3 stride-1 convolutions by im2col and by Winograd
 * F(2x2)/F(4x4) on every rank at once; with both auto, a bf16 answer is
 * weighed once more against fp32 by Winograd. The rules and margins:
 * docs/performance.md ("How auto decides"). pnote and cnote receive the
 * lines that say what was decided and why ("" where the key was set). */
#ifndef DIFFMPI_AUTOTUNE_H
#define DIFFMPI_AUTOTUNE_H

#include <stddef.h>

#include "diffmpi/config.h"

dm_status autotune_setup(dm_config *cfg, const char *out, const char *resume, int rank,
                         char *pnote, size_t psize, char *cnote, size_t csize);
/* The GEMM engine set up on every rank in precision `want` (DM_PREC_AUTO:
 * rank 0 measures, gemm_resolve_precision, and every rank runs its
 * answer), *runs the precision that runs; collective, one error line from
 * rank 0. For the commands that use a trained network (sample, invert,
 * score); autotune_setup does the same and more for train and bench. */
dm_status autotune_engine(dm_engine engine, dm_precision want, int threads, int rank,
                          dm_precision *runs);
/* Rank 0: the engine that runs the convolution products, the convolution
 * algorithms, the notes of autotune_setup and a warning about OpenBLAS's
 * kernel choice where it applies, one line each. */
void autotune_print(const dm_config *cfg, const char *pnote, const char *cnote);

#endif
