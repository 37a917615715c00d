/* test_reduce_tree.c: the gradient-reduction tree of dist.h under MPI, fed
 * known per-micro-batch leaves instead of a network. Run by
 * tests/integration/test_reduce.py at P = 1, 2, 3 and 4 ranks:
 *
 *   mpirun -np P test_reduce_tree OUT [--swap]
 *
 * (with DIFFMPI_TEST_NODE_RANKS=k: nodes of k ranks, the two-level exchange)
 *
 * For a sequence of global batches (nmb = 5 and 7 micro-batches above all,
 * and 1..8 so that some ranks own no micro-batch), every rank writes the
 * leaves of its own micro-batches through dist_leaf_dst/dist_leaf_done,
 * segment by segment in backward's order (last segment first, one segment
 * handed in as two leaf ranges), then calls dist_reduce_grads. Checked on
 * every rank, for every parameter:
 *  - bitwise equal to the fixed tree of dist.h computed here independently
 *    (node (a, k) = node (a, k-1) + node (a + 2^(k-1), k-1), a node whose
 *    right half starts at or beyond nmb equals its left half);
 *  - within float rounding of the exact sum: |tree - sum| <= g_d * sum |leaf|
 *    with d = ceil(log2 nmb), the tree's depth, g_d = d u / (1 - d u),
 *    u = 2^-24 (Higham, Accuracy and Stability, 4.2). The leaves are floats
 *    with exponents in [-12, 12], so their sum in double is exact;
 *  - the data can tell orders apart: for nmb >= 4 a plain left-to-right
 *    float sum differs from the tree in at least a tenth of the entries, so
 *    a reduction in that order fails the bitwise check (and the driver
 *    compares the results across P).
 * With the default segment (one) and with segments like the UNet's.
 *
 * --swap feeds micro-batches 1 and 2 each other's leaves: the same exact sum,
 * a different float order. The bound still holds, the bitwise check must
 * fail (the driver checks that this run exits non-zero).
 *
 * Rank 0 writes OUT: int32 nbatches, then per batch int32 nmb, int32
 * nparams, float32 leaves [nmb][nparams] (unswapped), float32 result
 * [nparams], so the driver can recompute tree and sums in numpy. */
#include <math.h>
#include <mpi.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "diffmpi/dist.h"
#include "../unit/test_util.h"

/* Not a multiple of 2, 3 or 4: the owners' slices have unequal lengths. */
enum { NPARAMS = 1003, MAX_NMB = 8 };

/* Segments like unet_grad_segments' (sorted, covering [0, NPARAMS)),
 * including one of a single float; segment 1 is handed in as two leaf
 * ranges [100, 300) and [300, 517). */
static const long seg_off[] = {0, 100, 517, 518};
static const long seg_len[] = {100, 417, 1, 485};
enum { NSEG = 4 };

static const int batches[] = {5, 7, 1, 2, 3, 4, 6, 8, 7, 5};
enum { NBATCH = sizeof batches / sizeof batches[0] };

static uint64_t splitmix64(uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

/* Leaf of micro-batch j (global index) of batch number b for parameter i:
 * +-m * 2^e, m in [1, 2) with 23 random bits, e in [-12, 12]. Sums of such
 * floats round differently in different orders; in double they are exact
 * (24 + 24 + 3 bits < 53). */
static float leaf_value(int b, int j, long i) {
    uint64_t h = splitmix64(((uint64_t)b * MAX_NMB + (uint64_t)j) * NPARAMS + (uint64_t)i);
    float m = 1.0f + (float)(h & 0x7FFFFF) / 8388608.0f;
    int e = (int)((h >> 41) % 25) - 12;
    return ldexpf((h >> 40) & 1 ? -m : m, e);
}

/* The leaves as fed to the reduction: with swap (and nmb >= 3),
 * micro-batches 1 and 2 trade places. */
static float fed_value(int b, int nmb, int j, long i, int swap) {
    if (swap && nmb >= 3 && (j == 1 || j == 2)) j = 3 - j;
    return leaf_value(b, j, i);
}

/* Node (a, k) of dist.h's tree over [0, nmb), parameter i, in float. */
static float node_value(const float *leaves, int nmb, int a, int k, long i) {
    if (k == 0) return leaves[(long)a * NPARAMS + i];
    int half = 1 << (k - 1);
    float l = node_value(leaves, nmb, a, k - 1, i);
    if (a + half >= nmb) return l;
    return l + node_value(leaves, nmb, a + half, k - 1, i);
}

static int depth_of(int nmb) {
    int d = 0;
    while ((1 << d) < nmb) d++;
    return d;
}

/* One global batch of nmb micro-batches through d; grads gets the result. */
static void reduce_batch(dm_dist *d, float *grads, int b, int nmb, int swap) {
    dist_set_batch(d, nmb);
    int nloc = d->hi - d->lo;
    for (long i = 0; i < NPARAMS; i++) grads[i] = NAN; /* must be overwritten */
    /* Backward's order: segments from last to first; in each, local
     * micro-batches in order, each leaf written then announced. */
    for (int s = NSEG - 1; s >= 0; s--) {
        long cut = s == 1 ? 300 : seg_off[s] + seg_len[s];
        long pieces[2][2] = {{seg_off[s], cut - seg_off[s]},
                             {cut, seg_off[s] + seg_len[s] - cut}};
        for (int j = 0; j < nloc; j++)
            for (int q = 0; q < 2; q++) {
                long off = pieces[q][0], len = pieces[q][1];
                if (len == 0) continue;
                float *leaf = dist_leaf_dst(d, j);
                for (long i = off; i < off + len; i++)
                    leaf[i] = fed_value(b, nmb, d->lo + j, i, swap);
                dist_leaf_done(d, j, off, len);
            }
    }
    dist_reduce_grads(d, grads);
}

/* Checks of one batch's result; returns how many entries a left-to-right
 * float sum gets different from the tree. */
static long check_batch(const float *got, const float *leaves, int b, int nmb, int segmented,
                        int rank) {
    /* leaves: the true ones, not those fed with --swap. */
    const double u = ldexp(1.0, -24);
    const int dep = depth_of(nmb);
    const double gam = dep * u / (1.0 - dep * u);
    long not_tree = 0, out_of_bound = 0, seq_differs = 0, worst = -1;
    double worst_ratio = 0.0;
    for (long i = 0; i < NPARAMS; i++) {
        float want = node_value(leaves, nmb, 0, dep, i), seq = 0.0f;
        double exact = 0.0, abs_sum = 0.0;
        for (int j = 0; j < nmb; j++) {
            float v = leaves[(long)j * NPARAMS + i];
            seq += v;
            exact += v;
            abs_sum += fabs(v);
        }
        if (memcmp(&got[i], &want, sizeof want) != 0) not_tree++;
        double err = fabs((double)got[i] - exact), bound = gam * abs_sum;
        if (!(err <= bound)) out_of_bound++;
        double ratio = err == 0.0 ? 0.0 : err / bound; /* inf: wrong at nmb 1 */
        if (ratio > worst_ratio || worst < 0) worst_ratio = ratio, worst = i;
        if (seq != want) seq_differs++;
    }
    const char *how = segmented ? "4 segments" : "1 segment";
    EXPECT(not_tree == 0,
           "rank %d, batch %d (nmb %d, %s): %ld of %d entries differ in bits from "
           "the fixed tree", rank, b, nmb, how, not_tree, NPARAMS);
    EXPECT(out_of_bound == 0,
           "rank %d, batch %d (nmb %d, %s): %ld entries off the exact sum by more "
           "than g_%d sum|leaf| (worst %.3g x the bound at [%ld])", rank, b, nmb, how,
           out_of_bound, dep, worst_ratio, worst);
    return seq_differs;
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    int swap = argc > 2 && strcmp(argv[2], "--swap") == 0;
    if (argc < 2 || (argc > 2 && !swap)) {
        if (rank == 0) fprintf(stderr, "usage: test_reduce_tree OUT [--swap]\n");
        MPI_Finalize();
        return 2;
    }
    FILE *out = NULL;
    if (rank == 0) {
        out = fopen(argv[1], "wb");
        EXPECT(out != NULL, "cannot create %s", argv[1]);
    }
    int32_t nb = NBATCH;
    if (out) fwrite(&nb, sizeof nb, 1, out);
    float *grads = calloc(NPARAMS, sizeof(float));
    float *leaves = calloc((size_t)MAX_NMB * NPARAMS, sizeof(float));
    float *first = calloc((size_t)NBATCH * NPARAMS, sizeof(float));
    if (!grads || !leaves || !first) {
        fprintf(stderr, "test_reduce_tree: out of memory\n");
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    for (int segmented = 0; segmented < 2; segmented++) {
        dm_dist d;
        dist_init(&d, MPI_COMM_WORLD, NPARAMS, MAX_NMB, 2, 0, 1);
        if (segmented) dist_set_segments(&d, NSEG, seg_off, seg_len);
        if (rank == 0 && segmented == 0)
            printf("exchange: %d node(s) x %d rank(s)%s%s\n", d.nodes, d.node_ranks,
                   *d.flat_why ? ", flat: " : "", d.flat_why);
        for (int b = 0; b < NBATCH; b++) {
            int nmb = batches[b];
            for (int j = 0; j < nmb; j++)
                for (long i = 0; i < NPARAMS; i++)
                    leaves[(long)j * NPARAMS + i] = leaf_value(b, j, i);
            reduce_batch(&d, grads, b, nmb, swap);
            long seq = check_batch(grads, leaves, b, nmb, segmented, rank);
            /* The data must tell the tree from a left-to-right sum
             * wherever they differ in shape: nmb >= 4 (for 3 the tree is
             * (0 + 1) + 2 too). */
            if (nmb >= 4)
                EXPECT(seq >= NPARAMS / 10,
                       "nmb %d: a left-to-right float sum differs from the tree in "
                       "only %ld of %d entries; the data cannot tell orders apart",
                       nmb, seq, NPARAMS);
            if (rank == 0 && segmented == 0)
                printf("nmb %d: tree vs left-to-right float sum: %ld of %d entries "
                       "differ\n", nmb, seq, NPARAMS);
            /* The segments change when data moves, never the sums. */
            float *f = first + (long)b * NPARAMS;
            if (segmented == 0)
                memcpy(f, grads, NPARAMS * sizeof(float));
            else
                EXPECT(memcmp(f, grads, NPARAMS * sizeof(float)) == 0,
                       "batch %d: 4 segments give other bits than 1", b);
            if (out && segmented == 1) {
                int32_t hdr[2] = {nmb, NPARAMS};
                fwrite(hdr, sizeof hdr, 1, out);
                fwrite(leaves, sizeof(float), (size_t)nmb * NPARAMS, out);
                fwrite(grads, sizeof(float), NPARAMS, out);
            }
        }
        dist_free(&d);
    }
    if (out) EXPECT(fclose(out) == 0, "cannot write %s", argv[1]);
    free(grads), free(leaves), free(first);
    int mine = test_failures, all = 0;
    MPI_Allreduce(&mine, &all, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    if (rank == 0)
        printf("test_reduce_tree: P=%d%s, %d batches x 2 segmentings, %d failed checks "
               "over all ranks\n", size, swap ? " --swap" : "", NBATCH, all);
    MPI_Finalize();
    return all ? 1 : 0;
}
