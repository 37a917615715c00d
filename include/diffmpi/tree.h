/* tree.h: the fixed binary tree that sums n leaves in the same order
 * whoever adds them (the weight gradients over a batch's micro-batches,
 * dist.h).
 *
 * Node (a, k) covers leaves [a, a + 2^k) and is the sum of its halves
 * (a, k-1) + (a + 2^(k-1), k-1), left plus right; a node whose right half
 * starts at or beyond n equals its left half. The root is (0, top) with
 * 2^top >= n. Float addition is commutative, so the tree's shape alone
 * fixes every rounding, whichever worker adds.
 *
 * Workers fold contiguous ranges of leaves on stacks as the leaves arrive
 * (tree_fold), and what their stacks hold are aligned nodes of the tree
 * (blocks); tree_ops then lists the additions that build any node from
 * such blocks:
 *
 *   tree_node bk[TREE_MAX_DEPTH];
 *   int nb = tree_fold(lo, hi, bk, slot, merges, NULL);   // worker over [lo, hi)
 *   for leaf j: write it to stack[slot[j-lo]];
 *               for m < merges[j-lo]: stack[s-1] += stack[s], s-- (s = slot+1 first)
 *   ...
 *   int root = tree_ops(n, 0, tree_top(n), have, id, nhave, op_l, op_r, &nops, cap);
 *   for o < nops: value[op_l[o]] += value[op_r[o]];   // root's value in value[root]
 */
#ifndef DIFFMPI_TREE_H
#define DIFFMPI_TREE_H

/* Stack depth that any range of at most 2^30 leaves needs (an unaligned
 * range holds up to two blocks a level, and one leaf arrives). */
#define TREE_MAX_DEPTH 64

typedef struct {
    int a, k; /* covers [a, a + 2^k) */
} tree_node;

/* The root's level: the least top with 2^top >= n (0 for n <= 1). */
int tree_top(int n);

/* Fold leaves lo..hi-1 in order on a stack: returns how many blocks the
 * stack holds at the end and fills blocks[] (bottom first; room for
 * TREE_MAX_DEPTH). When slot is given, leaf j goes to stack position
 * slot[j - lo] and is followed by merges[j - lo] merges (position p-1 +=
 * position p, then p-1 is the top); when maxdepth is given, it receives the
 * most entries the stack held at once. */
int tree_fold(int lo, int hi, tree_node *blocks, int *slot, int *merges, int *maxdepth);

/* The blocks tree_fold(lo, hi, ...) leaves, counted in O(log^2) steps: the
 * largest aligned nodes that tile [lo, hi) from the left. */
int tree_nblocks(int lo, int hi);

/* The additions that build node (a, k) of the tree over n leaves from the
 * nodes in have[0..nhave) (whose values have ids id[]): appended to
 * op_l/op_r as `value[op_l] += value[op_r]` (ids; id NULL: the indices
 * into have), *nops advanced, at most cap in all; returns the id that
 * holds the node's value. Every leaf of the node below n must lie in some
 * node of have (else DM_CHECK fails). */
int tree_ops(int n, int a, int k, const tree_node *have, const int *id, int nhave, int *op_l,
             int *op_r, int *nops, int cap);

#endif
