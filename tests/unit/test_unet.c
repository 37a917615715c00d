/* test_unet.c: the whole UNet's gradient (train-mode BatchNorm over two
 * micro-batches, the fixed-order gradient tree) against central finite
 * differences of the loss, at tiny width; parameter count against SPEC.md. */
#include <math.h>
#include <mpi.h>
#include <stdlib.h>
#include <string.h>

#include "diffmpi/dist.h"
#include "diffmpi/layers.h"
#include "diffmpi/rng.h"
#include "diffmpi/unet.h"
#include "test_util.h"

enum { D = 2, M = 2, NMB = 2, B = 3 }; /* micro-batches of 2 and 1 image */

static float x[NMB][M * 784], tgt[NMB][M * 784];
static const int sizes[NMB] = {2, 1};

/* Loss of the current parameters (train-mode forward), and optionally the
 * full backward into grads. */
static double loss_and_grad(unet *u, dm_dist *d, float *grads) {
    dist_set_batch(d, NMB);
    for (int j = 0; j < NMB; j++)
        memcpy(unet_slot(u, u->in_buf, j), x[j], sizeof(float) * sizes[j] * 784);
    unet_zero_grad(u, NMB);
    unet_forward(u, 1, NMB, sizes, B, dist_combine, d, 0.1f);
    double sse = 0;
    for (int j = 0; j < NMB; j++) {
        float *dy = u->act[u->out_buf].grad + (long)j * u->act[u->out_buf].mb_stride;
        sse += mse_forward_backward(dy, unet_slot(u, u->out_buf, j), tgt[j],
                                    (long)sizes[j] * 784, 1.0f / (B * 784));
    }
    if (grads) {
        unet_backward(u, NMB, sizes, B, dist_combine, d, dist_leaf_dst, dist_leaf_done);
        dist_reduce_grads(d, grads);
    }
    return sse / (B * 784.0);
}

static void check_param_count(void) {
    int Ds[2] = {128, 64};
    double want[2] = {7.89e6, 1.98e6};
    for (int i = 0; i < 2; i++) {
        unet u;
        unet_init(&u, Ds[i], 1, 0);
        EXPECT(fabs(u.nparams - want[i]) < 0.006e6, "D=%d: %ld parameters, SPEC %.2fM",
               Ds[i], u.nparams, want[i] / 1e6);
        const unet_param *h = unet_find(&u, "head/weight");
        EXPECT(h && h->shape[0] == 1 && h->shape[1] == Ds[i] && h->shape[2] == 3,
               "head weight [1,D,3,3]");
        const unet_param *t = unet_find(&u, "up1/0/weight");
        EXPECT(t && t->shape[0] == 4 * Ds[i] && t->shape[1] == Ds[i] && t->shape[2] == 4,
               "ConvTranspose weight [in,out,k,k]");
        EXPECT(unet_find(&u, "unflatten/bn_running_var") != NULL, "running var named");
        unet_free(&u);
    }
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    check_param_count();
    dm_rng r;
    rng_init(&r, 7, 99, 0, 0);
    for (int j = 0; j < NMB; j++)
        for (int i = 0; i < M * 784; i++) {
            x[j][i] = rng_uniform(&r);
            tgt[j][i] = rng_uniform(&r);
        }
    unet u;
    unet_init(&u, D, M, NMB);
    unet_init_params(&u, 3);
    dm_dist d;
    dist_init(&d, MPI_COMM_WORLD, u.nparams, NMB, 8 * D, 0);
    float *g = calloc((size_t)u.nparams, sizeof(float));
    loss_and_grad(&u, &d, g);
    /* A few entries of every trainable tensor, step h in float. The loss
     * is smooth except at GELU/BN kinks that a small h does not cross. */
    int checked = 0, bad = 0;
    for (int q = 0; q < u.nparams_t; q++) {
        const unet_param *p = &u.params[q];
        if (!p->trainable) continue;
        for (int e = 0; e < 3; e++) {
            long i = p->offset + (long)(rng_below(&r, (uint32_t)p->size));
            float keep = u.p[i], h = 1e-2f * (fabsf(keep) > 1 ? fabsf(keep) : 1);
            u.p[i] = keep + h;
            double lp = loss_and_grad(&u, &d, NULL);
            u.p[i] = keep - h;
            double lm = loss_and_grad(&u, &d, NULL);
            u.p[i] = keep;
            double fd = (lp - lm) / (2.0 * h);
            double err = fabs(fd - g[i]), tol = 2e-5 + 5e-2 * fabs(fd);
            checked++;
            if (err > tol) {
                bad++;
                fprintf(stderr, "%s[%ld]: backprop %.6g, finite difference %.6g\n",
                        p->name, i - p->offset, g[i], fd);
            }
        }
    }
    /* Finite differences in float can miss one entry near a kink; more than
     * that is a real error. */
    EXPECT(bad <= 1, "%d of %d gradient entries disagree with finite differences",
           bad, checked);
    /* The gradient must not be trivially zero. */
    double norm = 0;
    for (long i = 0; i < u.nparams; i++) norm += (double)g[i] * g[i];
    EXPECT(norm > 1e-8, "gradient norm %g", norm);
    free(g);
    dist_free(&d);
    unet_free(&u);
    int rc = test_finish("test_unet");
    MPI_Finalize();
    return rc;
}
