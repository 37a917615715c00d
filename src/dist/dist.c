/* dist.c: fixed-order reductions over micro-batches (see dist.h). */
#include "diffmpi/dist.h"

#include <stdlib.h>
#include <string.h>

#include "diffmpi/common.h"
#include "diffmpi/fault.h"
#include "diffmpi/par.h"
#include "diffmpi/prof.h"
#include "diffmpi/tree.h"
#include "diffmpi/watchdog.h"

/* dst += src over n floats, on the rank's threads (elementwise: the same
 * floats for any cut). */
static void add_into(float *dst, const float *src, long n) {
    PAR_FOR(n, n) {
        const long hi = PAR_HI;
        for (long i = PAR_LO; i < hi; i++) dst[i] += src[i];
    }
}

void dist_range(int nmb, int size, int r, int *lo, int *hi) {
    *lo = (int)((long)r * nmb / size);
    *hi = (int)((long)(r + 1) * nmb / size);
}

int dist_max_local(int nmb, int size) {
    int best = 0;
    for (int r = 0; r < size; r++) {
        int lo, hi;
        dist_range(nmb, size, r, &lo, &hi);
        if (hi - lo > best) best = hi - lo;
    }
    return best;
}

/* The most blocks tree_fold leaves for any range of consecutive ranks'
 * micro-batches, groups of g ranks, over every batch of 1..max_nmb. */
static int most_blocks(int max_nmb, int size, int g) {
    int most = 1;
    for (int n = 1; n <= max_nmb; n++)
        for (int r = 0; r < size; r += g) {
            int lo, hi, x;
            dist_range(n, size, r, &lo, &x);
            dist_range(n, size, r + g - 1, &x, &hi);
            int nb = tree_nblocks(lo, hi);
            if (nb > most) most = nb;
        }
    return most;
}

/* The nodes: MPI_Comm_split_type shared (or the test hook's groups of k
 * ranks), kept when every node has the same number of ranks and they are
 * consecutive in comm; else every rank its own node. Level 0 is the node,
 * level 1 the rail of the ranks with the same index on every node. */
static void split_nodes(dm_dist *d, int node_aware) {
    MPI_Comm node;
    const char *hook = getenv("DIFFMPI_TEST_NODE_RANKS");
    long k = 0;
    if (hook && *hook)
        DM_CHECK(dm_parse_long(hook, 1, 1 << 20, &k), "DIFFMPI_TEST_NODE_RANKS=%s", hook);
    if (!node_aware)
        MPI_Comm_split(d->comm, d->rank, 0, &node);
    else if (k > 0)
        MPI_Comm_split(d->comm, (int)(d->rank / k), d->rank, &node);
    else
        MPI_Comm_split_type(d->comm, MPI_COMM_TYPE_SHARED, d->rank, MPI_INFO_NULL, &node);
    int me, n;
    MPI_Comm_rank(node, &me);
    MPI_Comm_size(node, &n);
    /* Consecutive: every member's rank - index is the node's first rank. */
    int first[2] = {d->rank - me, -(d->rank - me)}, agree[2];
    MPI_Allreduce(first, agree, 2, MPI_INT, MPI_MIN, node);
    int ok[3] = {agree[0] == -agree[1], n, -n}, all[3];
    MPI_Allreduce(ok, all, 3, MPI_INT, MPI_MIN, d->comm);
    d->flat_why = "";
    if (node_aware && (!all[0] || all[1] != -all[2])) {
        d->flat_why = !all[0] ? "the ranks of a node are not consecutive (map by core or slot)"
                              : "the nodes have different numbers of ranks";
        MPI_Comm_free(&node);
        MPI_Comm_split(d->comm, d->rank, 0, &node);
        MPI_Comm_rank(node, &me);
        MPI_Comm_size(node, &n);
    }
    d->node_ranks = n;
    d->nodes = d->size / n;
    d->node_aware = n > 1;
    dist_level *l0 = &d->lv[0], *l1 = &d->lv[1];
    l0->comm = node;
    MPI_Comm_split(d->comm, me, d->rank, &l1->comm);
    for (int v = 0; v < 2; v++) {
        MPI_Comm_rank(d->lv[v].comm, &d->lv[v].rank);
        MPI_Comm_size(d->lv[v].comm, &d->lv[v].size);
    }
}

/* [base, base + len) cut over `size` members: member r's part. */
static void part_of(long base, long len, int size, int r, long *off, long *n) {
    long lo = len * r / size, hi = len * (r + 1) / size;
    *off = base + lo, *n = hi - lo;
}

/* A level's buffers, for members holding at most max_in blocks each over
 * [base, base + len). */
static void level_alloc(dist_level *l, long base, long len, int max_in, int nseg) {
    l->base = base, l->len = len, l->max_in = max_in;
    part_of(base, len, l->size, l->rank, &l->part, &l->part_len);
    long most_part = len / l->size + 1;
    l->cap = l->size * max_in + 4;
    l->in_member = dm_calloc((size_t)l->cap, sizeof(int));
    l->in_local = dm_calloc((size_t)l->cap, sizeof(int));
    l->in = dm_calloc((size_t)l->cap, sizeof(tree_node));
    l->mine = dm_calloc((size_t)max_in, sizeof(float *));
    l->out = dm_calloc((size_t)l->cap, sizeof(tree_node));
    l->out_id = dm_calloc((size_t)l->cap, sizeof(int));
    l->op_l = dm_calloc((size_t)l->cap, sizeof(int));
    l->op_r = dm_calloc((size_t)l->cap, sizeof(int));
    l->ptr = dm_calloc((size_t)l->cap, sizeof(float *));
    l->recv = dm_calloc((size_t)most_part * (size_t)((l->size - 1) * max_in) + 1, sizeof(float));
    /* Receives: one per segment and remote block; sends: one per segment,
     * own block and other member. */
    l->max_req = 2 * nseg * l->cap;
    l->req = dm_calloc((size_t)l->max_req, sizeof(MPI_Request));
    l->seg_lo = dm_calloc((size_t)nseg, sizeof(int));
    l->seg_hi = dm_calloc((size_t)nseg, sizeof(int));
}

static void level_free(dist_level *l) {
    free(l->in_member), free(l->in_local), free(l->in), free(l->mine);
    free(l->out), free(l->out_id), free(l->op_l), free(l->op_r), free(l->ptr);
    free(l->recv), free(l->req), free(l->seg_lo), free(l->seg_hi);
    l->in_member = l->in_local = l->out_id = l->op_l = l->op_r = l->seg_lo = l->seg_hi = NULL;
    l->in = l->out = NULL;
    l->mine = l->ptr = NULL;
    l->recv = NULL;
    l->req = NULL;
}

/* The levels' buffers for the current segments: level 0 over all the
 * parameters (members hold their rank's blocks), level 1 over this node
 * rank's slice (members hold their node's blocks). */
static void levels_alloc(dm_dist *d) {
    level_free(&d->lv[0]);
    level_free(&d->lv[1]);
    level_alloc(&d->lv[0], 0, d->nparams, most_blocks(d->max_nmb, d->size, 1), d->nseg);
    level_alloc(&d->lv[1], d->lv[0].part, d->lv[0].part_len,
                most_blocks(d->max_nmb, d->size, d->node_ranks), d->nseg);
}

void dist_init(dm_dist *d, MPI_Comm comm, long nparams, int max_nmb,
               int max_width, int rank_local_bn, int node_aware) {
    memset(d, 0, sizeof *d);
    d->comm = comm;
    MPI_Comm_rank(comm, &d->rank);
    MPI_Comm_size(comm, &d->size);
    d->rank_local_bn = rank_local_bn;
    d->nparams = nparams;
    d->max_nmb = max_nmb;
    d->max_width = max_width;
    d->counts = dm_calloc((size_t)d->size, sizeof(int));
    d->displs = dm_calloc((size_t)d->size, sizeof(int));
    d->gather = dm_calloc((size_t)max_nmb * (size_t)max_width, sizeof(double));
    d->leaf_slot = dm_calloc((size_t)max_nmb, sizeof(int));
    d->leaf_merges = dm_calloc((size_t)max_nmb, sizeof(int));
    /* Slots: the deepest stack any range of a batch can need. */
    int depth = 1;
    while ((1 << (depth - 1)) < max_nmb) depth++;
    d->nslots = depth + 1;
    DM_CHECK(d->nslots <= DIST_MAX_SLOTS, "too many micro-batches (%d)", max_nmb);
    split_nodes(d, node_aware);
    d->slot = NULL;
    dist_set_threads(d, 1);
    long whole = nparams;
    dist_set_segments(d, 1, (long[]){0}, &whole);
}

static void free_blocks(dm_dist *d) {
    free(d->local_slot), free(d->local_op_l), free(d->local_op_r);
    free(d->thread_bk), free(d->thread_slot);
    for (int s = 0; d->slot && s < d->nthreads * d->nslots; s++) free(d->slot[s]);
    free(d->slot);
}

void dist_set_threads(dm_dist *d, int nthreads) {
    DM_CHECK(nthreads >= 1 && d->lv[0].nreq == 0 && d->lv[1].nreq == 0,
             "dist_set_threads(%d) between steps", nthreads);
    if (d->slot) free_blocks(d);
    d->nthreads = nthreads;
    /* Slots: a stack of nslots per thread; the rank's canonical blocks (at
     * most nslots) are built from the threads' blocks by at most nthreads
     * * nslots local ops. */
    int per = nthreads * d->nslots;
    d->local_slot = dm_calloc((size_t)per, sizeof(int));
    d->local_op_l = dm_calloc((size_t)per, sizeof(int));
    d->local_op_r = dm_calloc((size_t)per, sizeof(int));
    d->thread_bk = dm_calloc((size_t)per, sizeof(tree_node));
    d->thread_slot = dm_calloc((size_t)per, sizeof(int));
    d->slot = dm_calloc((size_t)per, sizeof(float *));
    for (int s = 0; s < per; s++) d->slot[s] = dm_calloc((size_t)d->nparams, sizeof(float));
}

void dist_set_segments(dm_dist *d, int nseg, const long *off, const long *len) {
    DM_CHECK(nseg >= 1, "no gradient segments");
    long at = 0;
    for (int s = 0; s < nseg; s++) {
        DM_CHECK(off[s] == at && len[s] > 0, "gradient segment %d is [%ld, +%ld), "
                 "expected to start at %ld", s, off[s], len[s], at);
        at += len[s];
    }
    DM_CHECK(at == d->nparams, "gradient segments cover %ld of %ld parameters", at,
             d->nparams);
    /* Tags are block * nseg + segment; MPI guarantees tags up to 32767. */
    DM_CHECK((long)(TREE_MAX_DEPTH + 1) * nseg <= 32767, "%d gradient segments are too many",
             nseg);
    free(d->seg_off), free(d->seg_len), free(d->seg_done), free(d->seg_state);
    d->nseg = nseg;
    d->seg_off = dm_calloc((size_t)nseg, sizeof(long));
    d->seg_len = dm_calloc((size_t)nseg, sizeof(long));
    d->seg_done = dm_calloc((size_t)nseg, sizeof(long));
    d->seg_state = dm_calloc((size_t)nseg, sizeof(int));
    memcpy(d->seg_off, off, (size_t)nseg * sizeof(long));
    memcpy(d->seg_len, len, (size_t)nseg * sizeof(long));
    levels_alloc(d);
}

void dist_free(dm_dist *d) {
    if (!d->counts) return; /* never initialised (zeroed) */
    free(d->counts), free(d->displs), free(d->gather);
    free(d->leaf_slot), free(d->leaf_merges);
    free_blocks(d);
    for (int v = 0; v < 2; v++) {
        level_free(&d->lv[v]);
        MPI_Comm_free(&d->lv[v].comm);
    }
    free(d->seg_off), free(d->seg_len), free(d->seg_done), free(d->seg_state);
    memset(d, 0, sizeof *d);
}

void dist_zero_counters(dm_dist *d) {
    d->n_small = d->small_doubles = 0;
    for (int v = 0; v < 2; v++) {
        dist_level *l = &d->lv[v];
        l->n_msgs = l->msg_floats = l->allgather_floats = l->sent_early = l->sent_late = 0;
    }
}

/* This rank's leaves: thread t's stack over its part of [lo, hi) lives in
 * slots [t*nslots, (t+1)*nslots) (each leaf's slot and merges); then the
 * rank's canonical blocks (those of one stack over [lo, hi), as every rank
 * assumes of every other) and the local ops that build them, in place, from
 * the threads' blocks. */
static void local_blocks(dm_dist *d) {
    tree_node bk[TREE_MAX_DEPTH];
    int nt = 0;
    for (int t = 0; t < d->nthreads; t++) {
        int tlo, thi;
        par_range(d->hi - d->lo, d->nthreads, t, &tlo, &thi);
        const int base = t * d->nslots;
        int nb = tree_fold(d->lo + tlo, d->lo + thi, bk, d->leaf_slot + tlo,
                           d->leaf_merges + tlo, NULL);
        DM_CHECK(nb <= d->nslots, "gradient tree: %d blocks on a stack of %d slots", nb,
                 d->nslots);
        for (int j = tlo; j < thi; j++) {
            DM_CHECK(d->leaf_slot[j] < d->nslots, "gradient tree: leaf %d at slot %d of %d",
                     d->lo + j, d->leaf_slot[j], d->nslots);
            d->leaf_slot[j] += base;
        }
        for (int b = 0; b < nb; b++) d->thread_bk[nt] = bk[b], d->thread_slot[nt] = base + b, nt++;
    }
    /* The rank's canonical blocks are aligned nodes inside [lo, hi) made
     * of the threads' blocks: built in place by local ops on their slots. */
    d->nblocks_local = tree_fold(d->lo, d->hi, bk, NULL, NULL, NULL);
    d->nlocal_ops = 0;
    for (int b = 0; b < d->nblocks_local; b++)
        d->local_slot[b] = tree_ops(d->nmb, bk[b].a, bk[b].k, d->thread_bk, d->thread_slot, nt,
                                    d->local_op_l, d->local_op_r, &d->nlocal_ops,
                                    d->nthreads * d->nslots);
}

/* Level l's inputs: the blocks of every member, member m holding the
 * micro-batches of ranks [origin + m stride, + g) (level 0: a rank of this
 * node; level 1: node m), its outputs `out` and the additions that build
 * them on the member's part. */
static void level_batch(dm_dist *d, dist_level *l, int g, int stride, int origin,
                        const tree_node *out, int nout) {
    l->nin = 0;
    for (int m = 0; m < l->size; m++) {
        int lo, hi, x, r = origin + m * stride;
        dist_range(d->nmb, d->size, r, &lo, &x);
        dist_range(d->nmb, d->size, r + g - 1, &x, &hi);
        int nb = tree_fold(lo, hi, l->in + l->nin, NULL, NULL, NULL);
        DM_CHECK(nb <= l->max_in, "gradient tree: %d blocks, room for %d", nb, l->max_in);
        for (int b = 0; b < nb; b++) {
            l->in_member[l->nin] = m;
            l->in_local[l->nin] = b;
            l->nin++;
        }
        if (m == l->rank) l->nmine = nb;
    }
    l->nops = 0;
    l->nout = nout;
    for (int o = 0; o < nout; o++) {
        l->out[o] = out[o];
        l->out_id[o] = tree_ops(d->nmb, out[o].a, out[o].k, l->in, NULL, l->nin, l->op_l, l->op_r,
                                &l->nops, l->cap);
    }
}

void dist_set_batch(dm_dist *d, int nmb) {
    DM_CHECK(nmb >= 1 && nmb <= d->max_nmb, "batch of %d micro-batches", nmb);
    DM_CHECK(d->lv[0].nreq == 0 && d->lv[1].nreq == 0 && !d->recvs_posted,
             "gradient messages of the last step pending");
    d->nmb = nmb;
    dist_range(nmb, d->size, d->rank, &d->lo, &d->hi);
    local_blocks(d);
    /* Level 0: the node's ranks' blocks into the node's blocks; level 1:
     * the nodes' blocks (local rank i of each) into the root. */
    dist_level *l0 = &d->lv[0], *l1 = &d->lv[1];
    const int g = d->node_ranks, node_first = d->rank - l0->rank;
    int lo, hi, x;
    dist_range(nmb, d->size, node_first, &lo, &x);
    dist_range(nmb, d->size, node_first + g - 1, &x, &hi);
    tree_node node_bk[TREE_MAX_DEPTH], root = {0, tree_top(nmb)};
    int nnode = tree_fold(lo, hi, node_bk, NULL, NULL, NULL);
    level_batch(d, l0, 1, 1, node_first, node_bk, nnode);
    level_batch(d, l1, g, g, 0, &root, 1);
    DM_CHECK(l0->nmine == d->nblocks_local && l1->nmine == nnode,
             "gradient tree: the levels' blocks disagree");
    for (int b = 0; b < l0->nmine; b++) l0->mine[b] = d->slot[d->local_slot[b]];
    for (int s = 0; s < d->nseg; s++) d->seg_done[s] = 0, d->seg_state[s] = 0;
}

/* When profiling, time the wait for the slowest rank apart from the data
 * movement that follows. */
static void sync_point(dm_dist *d) {
    if (!prof_on || d->size == 1) return;
    double t0 = prof_start();
    MPI_Barrier(d->comm);
    prof_add(PROF_WAIT, t0);
}

void dist_gather_spread(MPI_Comm comm, MPI_Datatype type, void *out, const void *local,
                        int n, int chunk, int w, int root, int *counts, int *displs) {
    int rank, size;
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &size);
    int nch = (n + chunk - 1) / chunk, mine = 0;
    for (int r = 0; r < size; r++) {
        int lo, hi;
        dist_range(nch, size, r, &lo, &hi);
        int a = lo * chunk < n ? lo * chunk : n, b = hi * chunk < n ? hi * chunk : n;
        counts[r] = (b - a) * w;
        displs[r] = a * w;
        if (r == rank) mine = counts[r];
    }
    if (root < 0)
        MPI_Allgatherv(local, mine, type, out, counts, displs, type, comm);
    else
        MPI_Gatherv(local, mine, type, out, counts, displs, type, root, comm);
}

/* Gather w doubles per item from all ranks into out [nitems][w], items
 * spread over ranks as dist_range(nitems). */
static void gather_items(dm_dist *d, double *out, const double *local,
                         int nitems, int w) {
    if (d->size == 1) {
        memcpy(out, local, (size_t)nitems * (size_t)w * sizeof(double));
        return;
    }
    sync_point(d);
    double t0 = prof_start();
    dist_gather_spread(d->comm, MPI_DOUBLE, out, local, nitems, 1, w, -1, d->counts,
                       d->displs);
    d->n_small++;
    d->small_doubles += (long)nitems * w;
    prof_add(PROF_COMM, t0);
}

void dist_gather_items(dm_dist *d, double *out, const double *local,
                       int nitems) {
    gather_items(d, out, local, nitems, 1);
}

void dist_sum_mb(dm_dist *d, double *out, const double *local, int w,
                 int local_only) {
    int n;
    const double *src;
    if (local_only) {
        n = d->hi - d->lo;
        src = local;
    } else {
        DM_CHECK(w <= d->max_width, "gather width %d > %d", w, d->max_width);
        gather_items(d, d->gather, local, d->nmb, w);
        n = d->nmb;
        src = d->gather;
    }
    for (int i = 0; i < w; i++) out[i] = 0.0;
    for (int j = 0; j < n; j++)
        for (int i = 0; i < w; i++) out[i] += src[(long)j * w + i];
}

void dist_combine(void *ctx, double *out, int C, const double *local, int nloc) {
    dm_dist *d = ctx;
    DM_CHECK(nloc == d->hi - d->lo, "combine: %d local micro-batches, expected %d",
             nloc, d->hi - d->lo);
    fault_point("bn");
    const char *prev = watchdog_enter("batchnorm-statistics-allgather");
    dist_sum_mb(d, out, local, 2 * C, d->rank_local_bn);
    watchdog_leave(prev);
}

float *dist_leaf_dst(void *ctx, int j) {
    dm_dist *d = ctx;
    return d->slot[d->leaf_slot[j]];
}

/* [a, a+n) intersected with [b, b+m): start in *o, length returned. */
static long overlap(long a, long n, long b, long m, long *o) {
    long lo = a > b ? a : b, hi = a + n < b + m ? a + n : b + m;
    *o = lo;
    return hi > lo ? hi - lo : 0;
}

/* Point ptr at every block's value on this member's part (its own blocks
 * in place, the others' in recv) and post the receives of the others',
 * segment by segment. */
static void level_post_recvs(dm_dist *d, dist_level *l) {
    l->nreq = 0;
    long pos = 0;
    for (int b = 0; b < l->nin; b++) {
        if (l->in_member[b] == l->rank) {
            l->ptr[b] = l->mine[l->in_local[b]] + (l->part - l->base);
        } else {
            l->ptr[b] = l->recv + pos;
            pos += l->part_len;
        }
    }
    for (int s = 0; s < d->nseg; s++) {
        l->seg_lo[s] = l->nreq;
        long o, n = overlap(d->seg_off[s], d->seg_len[s], l->part, l->part_len, &o);
        for (int b = 0; n > 0 && b < l->nin; b++) {
            if (l->in_member[b] == l->rank) continue;
            DM_CHECK(l->nreq < l->max_req, "gradient receives exceed %d", l->max_req);
            MPI_Irecv(l->ptr[b] + (o - l->part), (int)n, MPI_FLOAT, l->in_member[b],
                      l->in_local[b] * d->nseg + s, l->comm, &l->req[l->nreq++]);
        }
        l->seg_hi[s] = l->nreq;
    }
}

static void post_recvs(dm_dist *d) {
    if (d->recvs_posted) return;
    d->recvs_posted = 1;
    level_post_recvs(d, &d->lv[0]);
    /* Level 1's own blocks are level 0's outputs, on level 0's part. */
    dist_level *l0 = &d->lv[0], *l1 = &d->lv[1];
    for (int b = 0; b < l1->nmine; b++) l1->mine[b] = l0->ptr[l0->out_id[b]];
    level_post_recvs(d, l1);
}

/* Segment s of this member's blocks is final: send it to every other
 * member whose part it meets. */
static void level_send(dm_dist *d, dist_level *l, int s, int early) {
    if (l->size == 1) return;
    if (l->nmine > 0) {
        if (early) l->sent_early++;
        else l->sent_late++;
    }
    for (int r = 0; r < l->size; r++) {
        if (r == l->rank) continue;
        long po, pl, o;
        part_of(l->base, l->len, l->size, r, &po, &pl);
        long n = overlap(d->seg_off[s], d->seg_len[s], po, pl, &o);
        for (int b = 0; n > 0 && b < l->nmine; b++) {
            DM_CHECK(l->nreq < l->max_req, "gradient sends exceed %d", l->max_req);
            MPI_Isend(l->mine[b] + (o - l->base), (int)n, MPI_FLOAT, r, b * d->nseg + s, l->comm,
                      &l->req[l->nreq++]);
            l->n_msgs++;
            l->msg_floats += n;
        }
    }
}

/* Level l's additions on the parameters [o, o + n) of this member's part. */
static void level_ops(dist_level *l, long o, long n) {
    double t0 = prof_start();
    for (int k = 0; k < l->nops; k++)
        add_into(l->ptr[l->op_l[k]] + (o - l->part), l->ptr[l->op_r[k]] + (o - l->part), n);
    prof_add(PROF_ELEM, t0);
}

/* Segment s has left this rank within the node: once the node's other
 * blocks of it are here (wait: block until they are), build the node's
 * blocks of it and send them along the rail (seg_state 2). */
static void node_segment(dm_dist *d, int s, int wait, int early) {
    dist_level *l0 = &d->lv[0];
    int n = l0->seg_hi[s] - l0->seg_lo[s], done = 1;
    if (n > 0) {
        if (wait)
            MPI_Waitall(n, l0->req + l0->seg_lo[s], MPI_STATUSES_IGNORE);
        else
            MPI_Testall(n, l0->req + l0->seg_lo[s], &done, MPI_STATUSES_IGNORE);
    }
    if (!done) return;
    long o, len = overlap(d->seg_off[s], d->seg_len[s], l0->part, l0->part_len, &o);
    level_ops(l0, o, len);
    level_send(d, &d->lv[1], s, early);
    d->seg_state[s] = 2;
}

void dist_leaf_merge(void *ctx, int j, long off, long len) {
    dm_dist *d = ctx;
    double t0 = prof_start();
    int depth = d->leaf_slot[j] + 1;
    for (int m = 0; m < d->leaf_merges[j]; m++, depth--)
        add_into(d->slot[depth - 2] + off, d->slot[depth - 1] + off, len);
    prof_add(PROF_ELEM, t0);
}

void dist_segment_done(void *ctx, long off, long len) {
    dm_dist *d = ctx;
    if (d->hi == d->lo) return;
    /* The threads' blocks of [off, off+len) into the rank's own, in the
     * tree's order; then they are what one thread would have folded. */
    double t0 = prof_start();
    for (int o = 0; o < d->nlocal_ops; o++)
        add_into(d->slot[d->local_op_l[o]] + off, d->slot[d->local_op_r[o]] + off, len);
    prof_add(PROF_ELEM, t0);
    int s = 0;
    while (s + 1 < d->nseg && d->seg_off[s + 1] <= off) s++;
    DM_CHECK(off + len <= d->seg_off[s] + d->seg_len[s],
             "leaf range [%ld, +%ld) crosses a gradient segment", off, len);
    d->seg_done[s] += len;
    if (d->size == 1) return;
    /* That range of the rank's blocks is final. Send each segment within
     * the node as soon as all of it is, and along the rail each segment
     * whose node blocks are complete. */
    t0 = prof_start();
    post_recvs(d);
    if (d->seg_done[s] == d->seg_len[s]) {
        level_send(d, &d->lv[0], s, 1);
        d->seg_state[s] = 1;
    }
    for (int q = 0; q < d->nseg; q++)
        if (d->seg_state[q] == 1) node_segment(d, q, 0, 1);
    int flag;
    for (int v = 0; v < 2; v++) MPI_Testall(d->lv[v].nreq, d->lv[v].req, &flag, MPI_STATUSES_IGNORE);
    prof_add(PROF_COMM, t0);
}

void dist_leaf_done(void *ctx, int j, long off, long len) {
    dm_dist *d = ctx;
    dist_leaf_merge(ctx, j, off, len);
    /* j counts this rank's micro-batches from 0. */
    if (j == d->hi - d->lo - 1) dist_segment_done(ctx, off, len);
}

/* Allgather the members' parts of [base, base + len) of x along level l. */
static void level_allgather(dm_dist *d, dist_level *l, float *x) {
    if (l->size == 1) return;
    for (int r = 0; r < l->size; r++) {
        long po, pl;
        part_of(0, l->len, l->size, r, &po, &pl);
        d->counts[r] = (int)pl;
        d->displs[r] = (int)po;
    }
    l->allgather_floats += l->len - l->part_len;
    MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, x + l->base, d->counts, d->displs,
                   MPI_FLOAT, l->comm);
}

void dist_reduce_grads(dm_dist *d, float *grads) {
    dist_level *l0 = &d->lv[0], *l1 = &d->lv[1];
    sync_point(d);
    const char *prev = watchdog_enter("gradient-reduction");
    double t0 = prof_start();
    post_recvs(d);
    /* A rank with micro-batches has had every leaf range through
     * dist_segment_done (its threads' blocks are combined only there); a
     * rank without has no blocks, and its sends below send nothing. */
    for (int s = 0; s < d->nseg; s++) {
        DM_CHECK(d->hi == d->lo || d->seg_done[s] >= d->seg_len[s],
                 "gradient segment %d: %ld of %ld floats done", s, d->seg_done[s],
                 d->seg_len[s]);
        if (d->seg_state[s] == 0) {
            level_send(d, l0, s, 0);
            d->seg_state[s] = 1;
        }
    }
    for (int s = 0; s < d->nseg; s++)
        if (d->seg_state[s] == 1) node_segment(d, s, 1, 0);
    fault_point("reduce");
    for (int v = 0; v < 2; v++) {
        MPI_Waitall(d->lv[v].nreq, d->lv[v].req, MPI_STATUSES_IGNORE);
        d->lv[v].nreq = 0;
    }
    d->recvs_posted = 0;
    prof_add(PROF_COMM, t0);
    level_ops(l1, l1->part, l1->part_len);
    memcpy(grads + l1->part, l1->ptr[l1->out_id[0]], (size_t)l1->part_len * sizeof(float));
    if (d->size == 1) {
        watchdog_leave(prev);
        return;
    }
    fault_point("allgather");
    t0 = prof_start();
    level_allgather(d, l1, grads);
    level_allgather(d, l0, grads);
    prof_add(PROF_COMM, t0);
    watchdog_leave(prev);
}
