/* recalibrate.c: BatchNorm statistics recomputed at an epoch end
 * (bn_recalibrate = K; recalibrate.h). */
#include "diffmpi/recalibrate.h"

#include <stdio.h>

#include "diffmpi/watchdog.h"

/* bn_recalibrate = K: at an epoch end the running statistics become the
 * plain average of the batch statistics of K training batches under the
 * epoch's final weights (train-mode forwards without backward, momentum
 * 1/(k+1): a cumulative average, what PyTorch's momentum = None keeps),
 * instead of an exponential average over weights that kept moving
 * ("precise BN"). The batches are the first K of the epoch's order, their
 * noise, times and dropped labels drawn under keys past every training
 * step, so the statistics are the same for any rank count and on resume.
 * With ema_decay the weight average gets its own statistics the same way.
 * Collective; the weights and Adam's state are not touched. */
#define BNCAL_KEY ((int64_t)1 << 62)

static void recalibrate_pass(dm_trainer *t, int K) {
    for (int k = 0; k < K; k++) {
        watchdog_beat(t->st.step, "BatchNorm recalibration");
        int nloc;
        long bn_n;
        trainer_load_batch(t, k % t->steps_per_epoch, BNCAL_KEY + t->st.epoch * (int64_t)K + k, &nloc,
                   &bn_n);
        unet_forward(&t->net, 1, nloc, t->n, bn_n, dist_combine, &t->dist,
                     1.0f / (float)(k + 1));
    }
}

static void swap_floats(float *a, float *b, long n) {
    for (long i = 0; i < n; i++) {
        float x = a[i];
        a[i] = b[i];
        b[i] = x;
    }
}

void train_bn_recalibrate(dm_trainer *t, int epoch) {
    int K = t->cfg.bn_recalibrate;
    if (K == 0 || t->cfg.norm != NORM_BATCH) return;
    double t0 = dm_now();
    recalibrate_pass(t, K);
    if (t->ema.p) {
        /* The average's weights and statistics into the model and back. */
        swap_floats(t->net.p, t->ema.p, t->net.nparams);
        swap_floats(t->net.bufs, t->ema.bufs, t->net.nbuffers);
        recalibrate_pass(t, K);
        swap_floats(t->net.p, t->ema.p, t->net.nparams);
        swap_floats(t->net.bufs, t->ema.bufs, t->net.nbuffers);
    }
    if (t->rank == 0) {
        printf("epoch %d/%d: BatchNorm statistics recomputed over %d training batch%s%s "
               "(%.1f s)\n", epoch, t->cfg.epochs, K, K == 1 ? "" : "es",
               t->ema.p ? " for the weights and their average" : "", dm_now() - t0);
        fflush(stdout);
    }
}
