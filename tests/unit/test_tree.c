/* test_tree.c: the fixed summation tree (tree.h). Leaves of varied
 * magnitudes, folded by 1-6 workers over contiguous ranges and combined
 * with tree_ops, give the bits of the tree written out recursively, for
 * every n up to 70; and a different order (left to right) gives other
 * bits, so the test can tell. */
#include <stdlib.h>

#include "diffmpi/tree.h"
#include "test_util.h"

#define NMAX 70
#define W 6
#define SLOTS (W * TREE_MAX_DEPTH)

static float leaf[NMAX];

/* The tree by its definition: node (a, k) = left + right, the right half
 * dropped when it starts at or beyond n. */
static float by_definition(int n, int a, int k) {
    if (k == 0) return leaf[a];
    const int half = 1 << (k - 1);
    float l = by_definition(n, a, k - 1);
    if (a + half >= n) return l;
    return l + by_definition(n, a + half, k - 1);
}

/* Workers over contiguous ranges of [0, n), each folding its leaves on a
 * stack of its own as tree_fold schedules, then the root from their
 * blocks by tree_ops. */
static float folded(int n, int workers, int *max_seen) {
    float value[SLOTS];
    tree_node have[SLOTS];
    int id[SLOTS], nhave = 0;
    int slot[NMAX], merges[NMAX];
    for (int w = 0; w < workers; w++) {
        const int lo = n * w / workers, hi = n * (w + 1) / workers;
        tree_node bk[TREE_MAX_DEPTH];
        int most = 0;
        const int nb = tree_fold(lo, hi, bk, slot, merges, &most);
        if (most > *max_seen) *max_seen = most;
        float *stack = value + w * TREE_MAX_DEPTH;
        for (int j = lo; j < hi; j++) {
            int p = slot[j - lo];
            stack[p] = leaf[j];
            for (int m = 0; m < merges[j - lo]; m++, p--) stack[p - 1] += stack[p];
        }
        for (int b = 0; b < nb; b++) {
            have[nhave] = bk[b];
            id[nhave] = w * TREE_MAX_DEPTH + b;
            nhave++;
        }
    }
    int op_l[SLOTS], op_r[SLOTS], nops = 0;
    const int root = tree_ops(n, 0, tree_top(n), have, id, nhave, op_l, op_r, &nops, SLOTS);
    for (int o = 0; o < nops; o++) value[op_l[o]] += value[op_r[o]];
    return value[root];
}

int main(void) {
    srand(7);
    for (int i = 0; i < NMAX; i++) {
        /* magnitudes 1e-4..1e4, either sign: sums that depend on order */
        float m = (float)rand() / (float)RAND_MAX;
        int e = rand() % 9 - 4;
        float s = 1.0f;
        for (int q = 0; q < (e < 0 ? -e : e); q++) s *= 10.0f;
        leaf[i] = (rand() % 2 ? 1.0f : -1.0f) * m * (e < 0 ? 1.0f / s : s);
    }
    EXPECT(tree_top(1) == 0 && tree_top(2) == 1 && tree_top(3) == 2 && tree_top(64) == 6 &&
               tree_top(65) == 7,
           "tree_top");
    int differs = 0, max_seen = 0;
    for (int n = 1; n <= NMAX; n++) {
        const float want = by_definition(n, 0, tree_top(n));
        for (int w = 1; w <= W && w <= n; w++) {
            const float got = folded(n, w, &max_seen);
            EXPECT(got == want, "n %d, %d workers: %.9g, by definition %.9g", n, w, got, want);
        }
        float chain = 0.0f;
        for (int i = 0; i < n; i++) chain += leaf[i];
        differs += chain != want;
    }
    EXPECT(differs > 10, "left-to-right sums differ from the tree's for many n (%d of %d)",
           differs, NMAX);
    /* One worker over 64 leaves holds at most 7 entries at once (6 levels
     * and the arriving leaf); unaligned ranges hold more, within the bound. */
    tree_node bk[TREE_MAX_DEPTH];
    int most = 0;
    EXPECT(tree_fold(0, 64, bk, NULL, NULL, &most) == 1 && bk[0].a == 0 && bk[0].k == 6 &&
               most == 7,
           "64 aligned leaves fold into (0, 6) with 7 entries at most (%d)", most);
    EXPECT(tree_fold(3, 10, bk, NULL, NULL, NULL) == 3 && bk[0].a == 3 && bk[0].k == 0 &&
               bk[1].a == 4 && bk[1].k == 2 && bk[2].a == 8 && bk[2].k == 1,
           "leaves 3..9 fold into (3,0) (4,2) (8,1)");
    /* tree_nblocks counts what tree_fold leaves (dist.c sizes its buffers
     * by it), for every range in [0, 70]. */
    int wrong = 0;
    for (int lo = 0; lo <= 70; lo++)
        for (int hi = lo; hi <= 70; hi++)
            wrong += tree_nblocks(lo, hi) != tree_fold(lo, hi, bk, NULL, NULL, NULL);
    EXPECT(wrong == 0, "tree_nblocks = tree_fold's blocks for all ranges in [0, 70] (%d wrong)",
           wrong);
    EXPECT(max_seen <= TREE_MAX_DEPTH, "stacks within TREE_MAX_DEPTH (%d)", max_seen);
    return test_finish("test_tree");
}
