/* tree.c: the fixed summation tree (tree.h). */
#include "diffmpi/tree.h"

#include "diffmpi/common.h"

int tree_top(int n) {
    int top = 0;
    while ((1L << top) < n) top++;
    return top;
}

int tree_fold(int lo, int hi, tree_node *blocks, int *slot, int *merges, int *maxdepth) {
    int depth = 0, most = 0;
    for (int j = lo; j < hi; j++) {
        DM_CHECK(depth < TREE_MAX_DEPTH, "tree: stack over [%d, %d) too deep", lo, hi);
        if (slot) slot[j - lo] = depth;
        blocks[depth].a = j, blocks[depth].k = 0;
        depth++;
        if (depth > most) most = depth;
        int m = 0;
        /* The top two are siblings when equal in level and the lower one
         * starts its parent's range. */
        while (depth >= 2 && blocks[depth - 1].k == blocks[depth - 2].k &&
               blocks[depth - 2].a % (2 << blocks[depth - 2].k) == 0) {
            blocks[depth - 2].k++;
            depth--;
            m++;
        }
        if (merges) merges[j - lo] = m;
    }
    if (maxdepth) *maxdepth = most;
    return depth;
}

int tree_nblocks(int lo, int hi) {
    int n = 0;
    for (int a = lo; a < hi; n++) {
        int k = 0;
        while (a % (2 << k) == 0 && a + (2 << k) <= hi) k++;
        a += 1 << k;
    }
    return n;
}

int tree_ops(int n, int a, int k, const tree_node *have, const int *id, int nhave, int *op_l,
             int *op_r, int *nops, int cap) {
    for (int b = 0; b < nhave; b++)
        if (have[b].a == a && have[b].k == k) return id ? id[b] : b;
    DM_CHECK(k > 0, "tree: leaf %d is in none of the %d blocks given", a, nhave);
    const int half = 1 << (k - 1);
    const int l = tree_ops(n, a, k - 1, have, id, nhave, op_l, op_r, nops, cap);
    if (a + half >= n) return l;
    const int r = tree_ops(n, a + half, k - 1, have, id, nhave, op_l, op_r, nops, cap);
    DM_CHECK(*nops < cap, "tree: more than %d additions", cap);
    op_l[*nops] = l, op_r[*nops] = r;
    (*nops)++;
    return l;
}
