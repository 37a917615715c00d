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
static const float times[B] = {0.1f, 0.55f, 0.9f};
static const int labels[B] = {3, -1, 7};

/* Loss of the current parameters (train-mode forward), and optionally the
 * full backward into grads. */
static double loss_and_grad(unet *u, dm_dist *d, float *grads) {
    dist_set_batch(d, NMB);
    for (int j = 0; j < NMB; j++) {
        memcpy(unet_slot(u, u->in_buf, j), x[j], sizeof(float) * sizes[j] * 784);
        for (int i = 0; u->nemb && i < sizes[j]; i++)
            unet_set_cond(u, j, i, times[j * M + i], labels[j * M + i]);
    }
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
    /* SPEC.md: plain / +time / +class */
    double want[2][3] = {{7.89e6, 7.97e6, 8.06e6}, {1.98e6, 2.00e6, 2.02e6}};
    for (int i = 0; i < 2; i++)
        for (int cond = 0; cond < 3; cond++) {
            unet u;
            cond_mix mixes[3] = {COND_MIX_NONE, COND_MIX_ADD, COND_MIX_FILM};
            unet_shape sh = {.D = Ds[i], .mix = mixes[cond], .m = 1};
            unet_init(&u, &sh);
            EXPECT(fabs(u.nparams - want[i][cond]) < 0.006e6,
                   "D=%d cond=%d: %ld parameters, SPEC %.2fM", Ds[i], cond, u.nparams,
                   want[i][cond] / 1e6);
            if (cond == 2) {
                const unet_param *c1 = unet_find(&u, "c1/fc1/weight");
                EXPECT(c1 && c1->shape[0] == 2 * Ds[i] && c1->shape[1] == 10,
                       "c1/fc1/weight [2D,10] (Linear [out,in])");
                EXPECT(unet_find(&u, "t2/fc2/bias") != NULL, "t2/fc2/bias named");
            }
            unet_free(&u);
        }
    for (int i = 0; i < 2; i++) {
        unet u;
        unet_shape sh = {.D = Ds[i], .m = 1};
        unet_init(&u, &sh);
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

/* Finite differences on a few entries of every trainable tensor. */
static void check_gradient(int key, cond_mix mix, dm_norm norm, const char *what) {
    dm_rng r;
    rng_init(&r, 11, 98, (uint64_t)key, 0);
    unet u;
    unet_shape sh = {.D = D, .mix = mix, .norm = norm, .groups = 2, .m = M, .max_mb = NMB};
    unet_init(&u, &sh);
    unet_init_params(&u, 3);
    dm_dist d;
    dist_init(&d, MPI_COMM_WORLD, u.nparams, NMB, 8 * D, 0);
    float *g = calloc((size_t)u.nparams, sizeof(float));
    loss_and_grad(&u, &d, g);
    /* Exact GELU and BatchNorm are smooth, so the loss is too. */
    int checked = 0, bad = 0;
    for (int q = 0; q < u.nparams_t; q++) {
        const unet_param *p = &u.params[q];
        if (!p->trainable) continue;
        for (int e = 0; e < 3; e++) {
            long i = p->offset + (long)(rng_below(&r, (uint32_t)p->size));
            float keep = u.p[i];
            double fds[2];
            /* Central differences at h and h/2, combined by Richardson
             * extrapolation to cancel the O(h^2) curvature term. */
            for (int k = 0; k < 2; k++) {
                float h = (k ? 5e-3f : 1e-2f) * (fabsf(keep) > 1 ? fabsf(keep) : 1);
                u.p[i] = keep + h;
                double lp = loss_and_grad(&u, &d, NULL);
                u.p[i] = keep - h;
                double lm = loss_and_grad(&u, &d, NULL);
                fds[k] = (lp - lm) / ((double)(keep + h) - (double)(keep - h));
            }
            u.p[i] = keep;
            double fd = (4.0 * fds[1] - fds[0]) / 3.0;
            double err = fabs(fd - g[i]), tol = 2e-5 + 5e-2 * fabs(fd);
            checked++;
            if (err > tol) {
                bad++;
                fprintf(stderr, "%s: %s[%ld]: backprop %.6g, finite difference %.6g\n",
                        what, p->name, i - p->offset, g[i], fd);
            }
        }
    }
    /* Float rounding in the loss can spoil one finite difference; more than
     * that is a real error. */
    EXPECT(bad <= 1, "%s: %d of %d gradient entries disagree with finite differences",
           what, bad, checked);
    double gnorm = 0;
    for (long i = 0; i < u.nparams; i++) gnorm += (double)g[i] * g[i];
    EXPECT(gnorm > 1e-8, "%s: gradient norm %g", what, gnorm);
    free(g);
    dist_free(&d);
    unet_free(&u);
}

/* The benchmark's FLOP count against hand counts. */
static void check_flops(void) {
    unet u;
    unet_shape sh = {.D = 128, .m = 1};
    unet_init(&u, &sh);
    double f, b;
    /* inc/1: Conv2d(128, 128, 3) on 28x28: 2 * 128 * 128 * 9 * 784 per
     * image forward; backward = weight gradient + input gradient. */
    unet_unit_flops(&u, 1, &f, &b);
    EXPECT(f == 231211008.0 && b == 2 * 231211008.0, "inc/1 flops %.0f / %.0f", f, b);
    /* inc/0 reads the data: no input gradient. */
    unet_unit_flops(&u, 0, &f, &b);
    EXPECT(f == 2.0 * 128 * 9 * 784 && b == f, "inc/0 flops %.0f / %.0f", f, b);
    /* up1/0: ConvTranspose2d(512, 128, 4, 2, 1) from 7x7:
     * 2 * 512 * 128 * 16 * 49 per image. */
    unet_unit_flops(&u, 10, &f, &b);
    EXPECT(strcmp(u.units[10].name, "up1/0") == 0 && f == 2.0 * 512 * 128 * 16 * 49,
           "up1/0 flops %.0f", f);
    double train = unet_train_flops(&u);
    EXPECT(train > 6.2e9 && train < 6.6e9, "D=128 training step %.3g FLOP/image (about 6.4e9)",
           train);
    unet_free(&u);
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    check_param_count();
    check_flops();
    dm_rng r;
    rng_init(&r, 7, 99, 0, 0);
    for (int j = 0; j < NMB; j++)
        for (int i = 0; i < M * 784; i++) {
            x[j][i] = rng_uniform(&r);
            tgt[j][i] = rng_uniform(&r);
        }
    check_gradient(0, COND_MIX_NONE, NORM_BATCH, "plain");
    check_gradient(1, COND_MIX_ADD, NORM_BATCH, "time, additive (DDPM)");
    check_gradient(1, COND_MIX_MUL, NORM_BATCH, "time, multiplicative (flow)");
    check_gradient(2, COND_MIX_FILM, NORM_BATCH, "time + class (FiLM)");
    check_gradient(3, COND_MIX_NONE, NORM_GROUP, "plain, GroupNorm (2 groups)");
    check_gradient(4, COND_MIX_FILM, NORM_GROUP, "time + class, GroupNorm (2 groups)");
    int rc = test_finish("test_unet");
    MPI_Finalize();
    return rc;
}
