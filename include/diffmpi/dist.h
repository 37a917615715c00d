/* dist.h: data parallelism whose results do not depend on the rank count.
 *
 * A global batch of B images is cut into nmb = ceil(B / m) micro-batches
 * (the last may be short). Rank r owns the contiguous range
 * [r*nmb/P, (r+1)*nmb/P) - possibly empty. Everything combined across
 * micro-batches is combined in an order fixed by micro-batch index alone:
 *
 *  - per-micro-batch statistics (BatchNorm sums, the loss) are gathered to
 *    every rank (MPI_Allgatherv) and summed in double, j = 0 .. nmb-1;
 *  - weight gradients: one leaf per micro-batch, summed in float over one
 *    fixed binary tree over micro-batch index (aligned power-of-two blocks;
 *    a node whose right half is empty equals its left half). Each rank sums
 *    the complete subtrees inside its range while backward runs (a stack of
 *    O(log nmb) slots), then each rank owns a slice of the parameters,
 *    receives every rank's subtree values for that slice, finishes the tree
 *    there and the slices are allgathered. Float addition is commutative, so
 *    the tree shape alone fixes every rounding.
 *
 * Node-aware (dist_init's node_aware; the `reduction` key): the ranks that
 * share a node (MPI_Comm_split_type shared) hold consecutive ranges of
 * micro-batches, so their blocks combine into the blocks of the node's range.
 * The exchange then runs in two levels over the same tree:
 *  1. within a node: local rank i owns slice i of the parameters, receives
 *     the node's ranks' blocks for it (shared memory) and builds the node's
 *     blocks there;
 *  2. between nodes, on rails (local rank i of every node): rank i of node n
 *     owns part n of slice i, receives every node's blocks for it, finishes
 *     the tree; the parts are allgathered along the rail, the slices within
 *     the node.
 * So a node sends its own blocks (one when its range is aligned) and
 * receives the rest of the gradient once, whatever its core count. The
 * additions are the tree's, only done elsewhere: the same bits as flat (one
 * level, every rank its own node), which is also what runs when the nodes'
 * ranks are not consecutive or not as many on every node.
 *
 * Overlap: the parameters are cut into segments (one per layer, in
 * dist_set_segments). When backward hands in the last local leaf of a
 * segment, that segment of the rank's blocks is final, and it is sent at
 * once (MPI_Isend to each owner whose slice it meets) while backward goes
 * on with earlier layers; receives are posted when backward starts, and
 * every leaf drives MPI's progress (MPI_Testall). dist_reduce_grads then
 * only waits, runs the fixed tree and allgathers: the same sums, earlier.
 *
 *   dm_dist d;
 *   dist_init(&d, comm, nparams, max_nmb, max_channels, rank_local_bn, 1);
 *   dist_set_segments(&d, nseg, seg_off, seg_len); // optional: overlap
 *   dist_set_batch(&d, nmb);                // per step
 *   ... unet_forward(..., dist_combine, &d) ...
 *   ... unet_backward(..., dist_combine, &d, dist_leaf_dst, dist_leaf_done)
 *   dist_reduce_grads(&d, grads);           // grads identical on all ranks
 */
#ifndef DIFFMPI_DIST_H
#define DIFFMPI_DIST_H

#include <mpi.h>

#include "diffmpi/tree.h"

#define DIST_MAX_SLOTS 40

/* One level of the exchange: each member of comm holds some blocks (nodes
 * of the tree) over the parameters [base, base + len); each member
 * receives every member's blocks on its own part of those and builds the
 * level's outputs there. */
typedef struct {
    MPI_Comm comm;
    int rank, size;
    long base, len;         /* the parameters of this level */
    long part, part_len;    /* this member's: [part, part + part_len) */
    int max_in;             /* bound on any member's blocks */
    int nin;                /* every member's blocks, in member order */
    int *in_member, *in_local;
    tree_node *in;
    int nmine;              /* this member's blocks, */
    float **mine;           /* [max_in] their values (element 0 = parameter base) */
    int nout;               /* the outputs: nodes built from in[] on the part */
    tree_node *out;
    int *out_id;            /* [nout] index into ptr of each output */
    int nops, cap;
    int *op_l, *op_r;       /* ptr[l] += ptr[r] on the part */
    float *recv;            /* other members' blocks on the part */
    float **ptr;            /* [nin] every block's value at `part` */
    MPI_Request *req;       /* receives (segment by segment), then sends */
    int nreq, max_req;
    int *seg_lo, *seg_hi;   /* [nseg] the receives of each segment */
    long n_msgs, msg_floats, allgather_floats; /* traffic since zeroed */
    long sent_early, sent_late; /* segments sent during / after backward */
} dist_level;

typedef struct {
    MPI_Comm comm;
    int rank, size;
    int rank_local_bn;      /* bn_sync = rank: BN sums over local only */
    long nparams;
    int max_nmb, max_width;
    /* current batch */
    int nmb, lo, hi;
    int *counts, *displs;   /* [size] scratch for Allgatherv */
    double *gather;         /* [max_nmb][max_width] */
    /* gradient tree: one stack per thread over its part of lo..hi-1 */
    int nthreads;           /* the rank's threads (dist_set_threads) */
    int nslots;             /* slots per thread */
    float **slot;           /* [nthreads * nslots][nparams] */
    int *leaf_slot, *leaf_merges; /* [max_nmb], by local micro-batch */
    int nblocks_local;      /* the rank's canonical blocks (one stack over lo..hi-1) */
    int *local_slot;        /* [nblocks_local]: the slot that holds each */
    int nlocal_ops;         /* the threads' blocks into those: slot[l] += slot[r] */
    int *local_op_l, *local_op_r;
    tree_node *thread_bk;   /* [nthreads*nslots] the threads' blocks */
    int *thread_slot;       /* and the slot holding each */
    /* the exchange: level 0 within a node, level 1 between nodes (a
     * rail); flat: every rank its own node */
    int nodes, node_ranks;  /* nodes x ranks per node */
    int node_aware;         /* 1: two levels; 0: flat */
    const char *flat_why;   /* asked for node-aware but flat: why ("" else) */
    dist_level lv[2];
    /* segments: a partition of the parameters sent as each completes */
    int nseg;
    long *seg_off, *seg_len, *seg_done; /* [nseg]; done: floats finished */
    int *seg_state;         /* [nseg] 0 open, 1 sent within the node, 2 between nodes */
    int recvs_posted;
    /* traffic of this rank since the counters were zeroed (bench reads
     * them for tools/scaling.py's network model): collectives over the
     * micro-batches' small sums (BatchNorm statistics, losses) and the
     * doubles they gathered; the gradient's in lv[] */
    long n_small, small_doubles;
} dm_dist;

/* Collective over comm. node_aware: the two-level exchange where the
 * layout allows it (else flat, d->flat_why says why);
 * DIFFMPI_TEST_NODE_RANKS=k makes nodes of k consecutive ranks (tests). */
void dist_init(dm_dist *d, MPI_Comm comm, long nparams, int max_nmb,
               int max_width, int rank_local_bn, int node_aware);
/* Zero the traffic counters (bench). */
void dist_zero_counters(dm_dist *d);
/* Also on a zeroed dm_dist that dist_init never saw. */
void dist_free(dm_dist *d);
/* Micro-batches this rank may own at most when a full batch has nmb. */
int dist_max_local(int nmb, int size);
/* Set the layout of the current global batch (nmb micro-batches). */
void dist_set_batch(dm_dist *d, int nmb);
/* Range of micro-batches of rank r for nmb micro-batches on size ranks. */
void dist_range(int nmb, int size, int r, int *lo, int *hi);

/* unet_combine_fn: sum per-micro-batch [2C] doubles in fixed order. */
void dist_combine(void *ctx, double *out, int C, const double *local, int nloc);
/* Sum per-micro-batch values (w doubles each) over the global batch in
 * micro-batch order into out[w] (every rank gets the same bits). With
 * local_only, sums only this rank's micro-batches. */
void dist_sum_mb(dm_dist *d, double *out, const double *local, int w,
                 int local_only);
/* Items [0, n) in chunks of `chunk`, the chunks spread over the ranks as
 * dist_range(nchunks, size, rank): each rank holds its items (w elements
 * of type each) contiguously in local; out [n][w] receives every item in
 * order, on every rank (root < 0) or on root only. counts, displs: [size]
 * scratch. */
void dist_gather_spread(MPI_Comm comm, MPI_Datatype type, void *out, const void *local,
                        int n, int chunk, int w, int root, int *counts, int *displs);
/* Gather one double per item, items spread over ranks as
 * dist_range(nitems, size, rank), into out[nitems] on every rank. */
void dist_gather_items(dm_dist *d, double *out, const double *local,
                       int nitems);
/* Cut the parameters into nseg segments [off, off+len) (sorted, covering
 * [0, nparams) exactly); every leaf range handed to dist_leaf_done must lie
 * inside one. Without this call the whole vector is one segment, sent when
 * its last leaf is done. */
void dist_set_segments(dm_dist *d, int nseg, const long *off, const long *len);
/* The rank's threads share its micro-batches: thread t of T takes local
 * micro-batches par_range(nloc, T, t) (par.h; as unet_forward does) and
 * folds their leaves on a stack of its own. The blocks left on those
 * stacks are aligned nodes of the same fixed tree; dist_segment_done adds
 * them into the blocks one stack would have left, in the tree's order,
 * before anything is sent, so the sums and the messages are those of a
 * one-thread rank. Set between steps (default 1). */
void dist_set_threads(dm_dist *d, int nthreads);
/* The unet_leaf_*_fn callbacks of the gradient tree. dist_leaf_dst gives
 * local micro-batch j's leaf; dist_leaf_merge folds leaf j's [off, off+len)
 * into its thread's stack (threads may call these at once, each for its own
 * micro-batches); dist_segment_done, once every local leaf of [off,
 * off+len) is merged (one thread), sends what became final.
 * dist_leaf_done = merge, then segment_done after the last local j: for
 * callers that hand in leaves in order on one thread. */
float *dist_leaf_dst(void *ctx, int j);
void dist_leaf_merge(void *ctx, int j, long off, long len);
void dist_segment_done(void *ctx, long off, long len);
void dist_leaf_done(void *ctx, int j, long off, long len);
/* Finish the tree: grads[nparams] becomes the global sum on every rank. */
void dist_reduce_grads(dm_dist *d, float *grads);

#endif
