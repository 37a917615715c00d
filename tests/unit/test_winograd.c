/* test_winograd.c: the F(2x2, 3x3) convolutions of winograd.c against a
 * direct 3x3 convolution with padding 1 summed in double here:
 *  - forward (overwrite) and ADDED output, for even, odd and rectangular
 *    images, channel counts that differ, groups of one image and of all;
 *  - the backward: the weight gradient, against the direct sum of dout x in
 *    over images and positions, OVERWRITING dw; the input gradient ADDED to
 *    dx, against the direct loop run as a transposed convolution (flipped
 *    weights); and with dx NULL (the network's input);
 *  - the error stays at fp32 level (a few 1e-7 of sum |w x|), and a wrong
 *    transform (one tap's weight changed) is caught. */
#include "diffmpi/gemm.h"
#include "diffmpi/layers.h"
#include "diffmpi/rng.h"
#include "test_util.h"

#include <stdlib.h>
#include <string.h>

static dm_rng trng;

/* ref[o][n][y][x] = sum_c sum_ij w(o, c, i, j) in[c][n][y+i-1][x+j-1], with
 * w(o, c) = w[o][c] or, for flip, w[c][o] rotated by 180 degrees; mag the
 * same sum of absolute values. */
static void direct(double *ref, double *mag, const float *in, const float *w, int flip, int N,
                   int Cin, int H, int W, int Cout) {
    for (int o = 0; o < Cout; o++)
        for (int n = 0; n < N; n++)
            for (int y = 0; y < H; y++)
                for (int x = 0; x < W; x++) {
                    double s = 0, m = 0;
                    for (int c = 0; c < Cin; c++)
                        for (int i = 0; i < 3; i++)
                            for (int j = 0; j < 3; j++) {
                                int yy = y + i - 1, xx = x + j - 1;
                                if (yy < 0 || yy >= H || xx < 0 || xx >= W) continue;
                                float wv = flip ? w[((long)c * Cout + o) * 9 + 8 - (i * 3 + j)]
                                                : w[((long)o * Cin + c) * 9 + i * 3 + j];
                                double v = (double)wv * in[(((long)c * N + n) * H + yy) * W + xx];
                                s += v, m += fabs(v);
                            }
                    long at = (((long)o * N + n) * H + y) * W + x;
                    ref[at] = s, mag[at] = m;
                }
}

/* Largest |got - (base + ref)| / (mag + base + 1e-30): the sum's own
 * rounding scale, the added base included. */
static double worst(const float *got, const double *ref, const double *mag, long n, float base) {
    double e = 0;
    for (long i = 0; i < n; i++) {
        double d = fabs(got[i] - (base + ref[i])) / (mag[i] + base + 1e-30);
        if (d > e) e = d;
    }
    return e;
}

/* n normal numbers times scale, in a new array. */
static float *randn_array(long n, float scale) {
    float *x = malloc(sizeof(float) * n);
    for (long i = 0; i < n; i++) x[i] = scale * rng_normal(&trng);
    return x;
}

/* The error bounds, relative to the sum of absolute terms: F(2x2)'s
 * transformed values are sums of up to 4 inputs (and of up to 4 output
 * gradients in the backward), F(4x4)'s weighted sums of up to 6 with
 * weights up to 5 (8 in A), so its rounding is about ten times larger. */
static double tol_forward(int m) { return m == 2 ? 2e-6 : 2e-5; }
static double tol_backward(int m) { return m == 2 ? 1e-5 : 3e-5; }

static void check(int N, int Cin, int H, int W, int Cout, int acc, long group_floats, int m) {
    long saved = conv_group_floats;
    conv_group_floats = group_floats;
    long nout = (long)Cout * N * H * W;
    float *in = randn_array((long)Cin * N * H * W, 1.0f), *w = randn_array(Cout * Cin * 9L, 0.2f);
    float *out = malloc(sizeof(float) * nout);
    /* the forward's own scratch, which is smaller: overruns show under ASan */
    float *scratch = malloc(sizeof(float) * winograd_scratch_floats(N, Cin, Cout, H, W, m, 0));
    double *ref = malloc(sizeof(double) * nout), *mag = malloc(sizeof(double) * nout);
    const float base = acc ? 0.5f : 0.0f;
    for (long i = 0; i < nout; i++) out[i] = acc ? base : 123.0f;
    winograd_conv3x3(out, acc, in, w, scratch, N, Cin, H, W, Cout, m);
    direct(ref, mag, in, w, 0, N, Cin, H, W, Cout);
    double e = worst(out, ref, mag, nout, base);
    char what[128];
    snprintf(what, sizeof what, "F(%d) N%d Cin%d %dx%d Cout%d acc%d group %ld", m, N, Cin, H, W,
             Cout, acc, group_floats);
    if (getenv("WINO_PRINT")) printf("%s: %.3g\n", what, e);
    EXPECT(e < tol_forward(m), "%s: error %.3g of sum |w x|", what, e);
    /* The check can fail: one tap of one weight changed is far outside. */
    w[4] += 0.5f;
    direct(ref, mag, in, w, 0, N, Cin, H, W, Cout);
    EXPECT(worst(out, ref, mag, nout, base) > 1e-3, "%s: a changed weight went unnoticed", what);
    free(in), free(w), free(out), free(scratch), free(ref), free(mag);
    conv_group_floats = saved;
}

/* The backward: dw[o][c][i][j] = sum over n, y, x of dout[o][n][y][x]
 * in[c][n][y+i-1][x+j-1] (OVERWRITTEN), and dx (ADDED to 0.5, unless
 * with_dx is 0) the input gradient: the direct loop with flipped weights. */
static void check_backward(int N, int Cin, int H, int W, int Cout, int with_dx,
                           long group_floats, int m) {
    long saved = conv_group_floats;
    conv_group_floats = group_floats;
    const long nw = (long)Cout * Cin * 9, nx = (long)Cin * N * H * W;
    float *in = randn_array(nx, 1.0f), *w = randn_array(nw, 0.2f);
    float *dout = randn_array((long)Cout * N * H * W, 1.0f), *dw = malloc(sizeof(float) * nw);
    float *dx = malloc(sizeof(float) * nx);
    float *scratch = malloc(sizeof(float) * winograd_scratch_floats(N, Cin, Cout, H, W, m, 1));
    for (long i = 0; i < nw; i++) dw[i] = 123.0f; /* OVERWRITTEN */
    for (long i = 0; i < nx; i++) dx[i] = 0.5f;   /* ADDED */
    winograd_conv3x3_backward(with_dx ? dx : NULL, dw, dout, in, w, scratch, N, Cin, H, W, Cout,
                              m);
    double e = 0, big = 0;
    for (int o = 0; o < Cout; o++)
        for (int c = 0; c < Cin; c++)
            for (int i = 0; i < 3; i++)
                for (int j = 0; j < 3; j++) {
                    double s = 0, sa = 0;
                    for (int n = 0; n < N; n++)
                        for (int y = 0; y < H; y++)
                            for (int x = 0; x < W; x++) {
                                int yy = y + i - 1, xx = x + j - 1;
                                if (yy < 0 || yy >= H || xx < 0 || xx >= W) continue;
                                double v = (double)dout[(((long)o * N + n) * H + y) * W + x] *
                                           in[(((long)c * N + n) * H + yy) * W + xx];
                                s += v, sa += fabs(v);
                            }
                    double got = dw[((long)(o * Cin + c) * 3 + i) * 3 + j];
                    if (fabs(got - s) / (sa + 1e-30) > e) e = fabs(got - s) / (sa + 1e-30);
                    if (fabs(s) > big) big = fabs(s);
                }
    char what[128];
    snprintf(what, sizeof what, "backward F(%d) N%d Cin%d %dx%d Cout%d dx%d group %ld", m, N, Cin,
             H, W, Cout, with_dx, group_floats);

    /* The sums run in the transformed domain, whose entries are sums of up
     * to 4 inputs times sums of up to 4 output gradients: a few times the
     * direct terms, so a few times the forward's rounding. */
    EXPECT(e < tol_backward(m) && big > 0.1, "%s: dw error %.3g of sum |dout x in| (largest %.3g)", what, e,
           big);
    double *ref = malloc(sizeof(double) * nx), *mag = malloc(sizeof(double) * nx);
    direct(ref, mag, dout, w, 1, N, Cout, H, W, Cin);
    if (getenv("WINO_PRINT"))
        printf("%s: dw %.3g dx %.3g\n", what, e, with_dx ? worst(dx, ref, mag, nx, 0.5f) : 0.0);
    if (with_dx) {
        EXPECT(worst(dx, ref, mag, nx, 0.5f) < tol_backward(m), "%s: dx error %.3g of sum |w dout|", what,
               worst(dx, ref, mag, nx, 0.5f));
        /* the check can fail: one tap of one weight changed */
        w[4] += 0.5f;
        direct(ref, mag, dout, w, 1, N, Cout, H, W, Cin);
        EXPECT(worst(dx, ref, mag, nx, 0.5f) > 1e-3, "%s: a changed weight went unnoticed", what);
    } else {
        int same = 1;
        for (long i = 0; i < nx; i++) same &= dx[i] == 0.5f;
        EXPECT(same, "%s: dx was written", what);
    }
    free(in), free(w), free(dout), free(dw), free(dx), free(scratch), free(ref), free(mag);
    conv_group_floats = saved;
}

int main(void) {
    rng_init(&trng, 20261203, DM_STREAM_EVAL, 11, 0);
    EXPECT(gemm_setup(DM_ENGINE_AUTO, DM_PREC_FP32, 1) == DM_OK, "engine");
    EXPECT(winograd_applies(3, 1, 1, 28) && !winograd_applies(3, 2, 1, 28) &&
               !winograd_applies(1, 1, 0, 28) && !winograd_applies(3, 1, 0, 28),
           "applies to 3x3 stride 1 padding 1 only");
    static const int shapes[][5] = {
        /* N, Cin, H, W, Cout */
        {2, 3, 6, 6, 4}, {3, 5, 7, 7, 2}, {1, 4, 5, 8, 6}, {2, 1, 1, 1, 3},
        {2, 6, 2, 3, 5}, {4, 16, 14, 14, 8},
        /* 16 tiles per image, rows of 4 run as 8: with one image the junk
         * past a channel's last row lands on the next channel's first */
        {1, 3, 8, 8, 2}, {3, 2, 10, 10, 3},
        /* F(4x4): 28x28 (7 tiles a row), odd and rectangular; 16 tiles per
         * image at 16x16, rows of 4 run as 8, junk on the next channel */
        {2, 3, 28, 28, 2}, {1, 2, 9, 13, 3}, {1, 3, 16, 16, 2},
    };
    EXPECT(winograd_tile_ok(2) && winograd_tile_ok(4) && !winograd_tile_ok(3) &&
               !winograd_tile_ok(6),
           "tiles 2 and 4 only");
    for (int m = 2; m <= 4; m += 2) {
        for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
            for (int acc = 0; acc < 2; acc++)
                for (int big = 0; big < 2; big++) /* one image per group, or all */
                    check(shapes[s][0], shapes[s][1], shapes[s][2], shapes[s][3], shapes[s][4],
                          acc, big ? 1L << 20 : 1, m);
        for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
            for (int with_dx = 0; with_dx < 2; with_dx++)
                for (int big = 0; big < 2; big++)
                    check_backward(shapes[s][0], shapes[s][1], shapes[s][2], shapes[s][3],
                                   shapes[s][4], with_dx, big ? 1L << 20 : 1, m);
    }
    gemm_teardown();
    return test_finish("test_winograd");
}
