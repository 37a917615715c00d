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

void dist_init(dm_dist *d, MPI_Comm comm, long nparams, int max_nmb,
               int max_width, int rank_local_bn) {
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
    d->slot = NULL;
    dist_set_threads(d, 1);
    long whole = nparams;
    dist_set_segments(d, 1, (long[]){0}, &whole);
}

static void free_blocks(dm_dist *d) {
    free(d->block_rank), free(d->blocks), free(d->block_local);
    free(d->local_slot), free(d->local_op_l), free(d->local_op_r);
    free(d->thread_bk), free(d->thread_slot);
    free(d->op_l), free(d->op_r), free(d->ptr), free(d->recv);
    for (int s = 0; d->slot && s < d->nthreads * d->nslots; s++) free(d->slot[s]);
    free(d->slot);
}

void dist_set_threads(dm_dist *d, int nthreads) {
    DM_CHECK(nthreads >= 1 && d->nreq == 0, "dist_set_threads(%d) between steps", nthreads);
    if (d->slot) free_blocks(d);
    d->nthreads = nthreads;
    /* Slots: a stack of nslots per thread. What travels are the rank's
     * canonical blocks (at most nslots), built from the threads' blocks by
     * at most nthreads * nslots local ops; all blocks, the tree's ops and
     * the messages are bounded by size * nslots. */
    int per = nthreads * d->nslots;
    int cap = d->size * d->nslots + 4;
    d->block_rank = dm_calloc((size_t)cap, sizeof(int));
    d->blocks = dm_calloc((size_t)cap, sizeof(tree_node));
    d->block_local = dm_calloc((size_t)cap, sizeof(int));
    d->local_slot = dm_calloc((size_t)per, sizeof(int));
    d->local_op_l = dm_calloc((size_t)per, sizeof(int));
    d->local_op_r = dm_calloc((size_t)per, sizeof(int));
    d->thread_bk = dm_calloc((size_t)per, sizeof(tree_node));
    d->thread_slot = dm_calloc((size_t)per, sizeof(int));
    d->op_l = dm_calloc((size_t)cap, sizeof(int));
    d->op_r = dm_calloc((size_t)cap, sizeof(int));
    d->ptr = dm_calloc((size_t)cap, sizeof(float *));
    d->cap = cap;
    d->slot = dm_calloc((size_t)per, sizeof(float *));
    for (int s = 0; s < per; s++) d->slot[s] = dm_calloc((size_t)d->nparams, sizeof(float));
    /* Other ranks' blocks for this rank's slice of the parameters. */
    long slice = d->nparams / d->size + 1;
    d->recv = dm_calloc((size_t)slice * (size_t)((d->size - 1) * d->nslots + 1), sizeof(float));
    if (d->nseg > 0) {
        d->max_req = 2 * d->nseg * d->cap;
        free(d->reqs);
        d->reqs = dm_calloc((size_t)d->max_req, sizeof(MPI_Request));
    }
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
    DM_CHECK((long)d->nslots * nseg <= 32767, "%d gradient segments are too many", nseg);
    free(d->seg_off), free(d->seg_len), free(d->seg_done), free(d->reqs);
    d->nseg = nseg;
    d->seg_off = dm_calloc((size_t)nseg, sizeof(long));
    d->seg_len = dm_calloc((size_t)nseg, sizeof(long));
    d->seg_done = dm_calloc((size_t)nseg, sizeof(long));
    memcpy(d->seg_off, off, (size_t)nseg * sizeof(long));
    memcpy(d->seg_len, len, (size_t)nseg * sizeof(long));
    /* Receives: one per segment and remote block; sends: one per segment,
     * local block and other owner; both at most nseg * cap. */
    d->max_req = 2 * nseg * d->cap;
    d->reqs = dm_calloc((size_t)d->max_req, sizeof(MPI_Request));
}

void dist_free(dm_dist *d) {
    free(d->counts), free(d->displs), free(d->gather);
    free(d->leaf_slot), free(d->leaf_merges);
    free_blocks(d);
    free(d->reqs), free(d->seg_off), free(d->seg_len), free(d->seg_done);
    memset(d, 0, sizeof *d);
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

void dist_set_batch(dm_dist *d, int nmb) {
    DM_CHECK(nmb >= 1 && nmb <= d->max_nmb, "batch of %d micro-batches", nmb);
    d->nmb = nmb;
    dist_range(nmb, d->size, d->rank, &d->lo, &d->hi);
    local_blocks(d);
    /* Every rank's canonical blocks, in rank order; a block's tag is its
     * index among its rank's. */
    tree_node bk[TREE_MAX_DEPTH];
    d->nblocks = 0;
    for (int r = 0; r < d->size; r++) {
        int lo, hi;
        dist_range(nmb, d->size, r, &lo, &hi);
        int nb = tree_fold(lo, hi, bk, NULL, NULL, NULL);
        for (int b = 0; b < nb; b++) {
            d->block_rank[d->nblocks] = r;
            d->blocks[d->nblocks] = bk[b];
            d->block_local[d->nblocks] = b;
            d->nblocks++;
        }
    }
    d->nops = 0;
    d->root = tree_ops(nmb, 0, tree_top(nmb), d->blocks, NULL, d->nblocks, d->op_l, d->op_r,
                       &d->nops, d->cap);
    DM_CHECK(d->nreq == 0 && !d->recvs_posted, "gradient messages of the last step pending");
    for (int s = 0; s < d->nseg; s++) d->seg_done[s] = 0;
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

static void slice_of(const dm_dist *d, int r, long *off, long *len) {
    long lo = d->nparams * r / d->size, hi = d->nparams * (r + 1) / d->size;
    *off = lo, *len = hi - lo;
}

/* [a, a+n) intersected with [b, b+m): start in *o, length returned. */
static long overlap(long a, long n, long b, long m, long *o) {
    long lo = a > b ? a : b, hi = a + n < b + m ? a + n : b + m;
    *o = lo;
    return hi > lo ? hi - lo : 0;
}

static int tag_of(const dm_dist *d, int block_local, int seg) {
    return block_local * d->nseg + seg;
}

/* Post the receives of this rank's slice from every remote block, segment
 * by segment, into d->recv; and point d->ptr at every block's slice. */
static void post_recvs(dm_dist *d) {
    if (d->recvs_posted) return;
    d->recvs_posted = 1;
    long off, len, pos = 0;
    slice_of(d, d->rank, &off, &len);
    for (int b = 0; b < d->nblocks; b++) {
        int r = d->block_rank[b];
        if (r == d->rank) {
            d->ptr[b] = d->slot[d->local_slot[d->block_local[b]]] + off;
            continue;
        }
        d->ptr[b] = d->recv + pos;
        for (int s = 0; s < d->nseg; s++) {
            long o, n = overlap(d->seg_off[s], d->seg_len[s], off, len, &o);
            if (n == 0) continue;
            DM_CHECK(d->nreq < d->max_req, "gradient receives exceed %d", d->max_req);
            MPI_Irecv(d->recv + pos + (o - off), (int)n, MPI_FLOAT, r,
                      tag_of(d, d->block_local[b], s), d->comm, &d->reqs[d->nreq++]);
        }
        pos += len;
    }
}

/* Segment s of every local block is final: send it to the other owners. */
static void send_segment(dm_dist *d, int s, int early) {
    if (d->size > 1 && d->nblocks_local > 0) {
        if (early) d->sent_early++;
        else d->sent_late++;
    }
    for (int r = 0; r < d->size; r++) {
        if (r == d->rank) continue;
        long so, sl, o;
        slice_of(d, r, &so, &sl);
        long n = overlap(d->seg_off[s], d->seg_len[s], so, sl, &o);
        for (int b = 0; n > 0 && b < d->nblocks_local; b++) {
            DM_CHECK(d->nreq < d->max_req, "gradient sends exceed %d", d->max_req);
            MPI_Isend(d->slot[d->local_slot[b]] + o, (int)n, MPI_FLOAT, r, tag_of(d, b, s),
                      d->comm, &d->reqs[d->nreq++]);
            d->n_msgs++;
            d->msg_floats += n;
        }
    }
    d->seg_done[s] = d->seg_len[s] + 1; /* sent */
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
    /* That range of the rank's blocks is final. Send each segment as soon
     * as all of it is. */
    t0 = prof_start();
    post_recvs(d);
    if (d->seg_done[s] == d->seg_len[s]) send_segment(d, s, 1);
    int flag;
    MPI_Testall(d->nreq, d->reqs, &flag, MPI_STATUSES_IGNORE);
    prof_add(PROF_COMM, t0);
}

void dist_leaf_done(void *ctx, int j, long off, long len) {
    dm_dist *d = ctx;
    dist_leaf_merge(ctx, j, off, len);
    /* j counts this rank's micro-batches from 0. */
    if (j == d->hi - d->lo - 1) dist_segment_done(ctx, off, len);
}

void dist_reduce_grads(dm_dist *d, float *grads) {
    long off, len;
    slice_of(d, d->rank, &off, &len);
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
        if (d->seg_done[s] <= d->seg_len[s]) send_segment(d, s, 0);
    }
    fault_point("reduce");
    MPI_Waitall(d->nreq, d->reqs, MPI_STATUSES_IGNORE);
    d->nreq = 0;
    d->recvs_posted = 0;
    prof_add(PROF_COMM, t0);
    t0 = prof_start();
    for (int o = 0; o < d->nops; o++) {
        add_into(d->ptr[d->op_l[o]], d->ptr[d->op_r[o]], len);
    }
    memcpy(grads + off, d->ptr[d->root], (size_t)len * sizeof(float));
    prof_add(PROF_ELEM, t0);
    if (d->size == 1) {
        watchdog_leave(prev);
        return;
    }
    for (int r = 0; r < d->size; r++) {
        long so, sl;
        slice_of(d, r, &so, &sl);
        d->counts[r] = (int)sl;
        d->displs[r] = (int)so;
    }
    fault_point("allgather");
    d->allgather_floats += d->nparams - len;
    t0 = prof_start();
    MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, grads, d->counts,
                   d->displs, MPI_FLOAT, d->comm);
    prof_add(PROF_COMM, t0);
    watchdog_leave(prev);
}
