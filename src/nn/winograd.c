/* winograd.c: 3x3 convolutions with stride 1 and padding 1 by Winograd's
 * minimal filtering F(2x2, 3x3) (Lavin and Gray, 2015), for fp32.
 *
 * Each 2x2 block of outputs (a tile) comes from the 4x4 input patch around
 * it: Y = A^T [ (G g G^T) .* (B^T d B) ] A. The 16 elementwise products,
 * summed over input channels, are 16 independent GEMMs
 *
 *     M[e] (Cout x T) = U[e] (Cout x Cin) x V[e] (Cin x T),   e = 0..15,
 *
 * with U = G g G^T the transformed weights and V = B^T d B the transformed
 * input patches of T tiles. That is 16 * Cout * Cin * T multiply-adds for
 * 4 T outputs per channel, against 9 * Cout * Cin per output directly:
 * 2.25x fewer. The transforms are additions only (and halvings in G).
 *
 * Layout: in [Cin][N][H][W] (CNHW, as every layer here), out [Cout][N][H][W].
 * Tiles run over the images of a group (as the im2col path's groups), tile
 * rows, tile columns; H or W odd gives a last tile half outside the image,
 * whose input reads as zero and whose outside outputs are dropped. Scratch
 * per group: U [16][Cout][Cin], then V [16][Cin][ld] and M [16][Cout][ld]
 * with planes padded by 16 floats, so that the 16 planes a transform
 * writes or reads at once do not fall on the same cache sets (with
 * Cin * T a multiple of 1024 they would, 4 KiB apart).
 *
 * The backward follows from Y = A^T M A with M = U .* V: the transformed
 * output gradient Z = dM = A dY A^T per tile serves both gradients. The
 * weights': dU = sum over tiles of Z .* V (16 GEMMs, Cout x T times T x Cin,
 * accumulated over the groups), dg = G^T dU G. The input's: dV = U^T Z (16
 * GEMMs, Cin x Cout times Cout x T), then each tile's B dV B^T added back
 * where its patch was read (the adjoint of the input transform). So dY is
 * transformed once, not once for each gradient, and the input gradient
 * needs no transform of its own weights.
 *
 * The products run on the engine (dm_gemm), so they are timed as GEMM and
 * the transforms as im2col by `diffmpi bench`. */
#include "diffmpi/layers.h"

#include <string.h>

#include "diffmpi/gemm.h"

#define WINO_MAX_W 512 /* widest row a transform stages (the UNet's is 28) */

static int tiles(int n) { return (n + 1) / 2; }

static long plane_ld(long T) { return (T + 15) / 16 * 16; }

/* The transforms' loops over a row of tiles run to tw rounded up to 8, so
 * that they are whole vectors, not one vector and a scalar tail (14 tiles at
 * 28x28). The extra tiles are junk: written past a row's tw tiles, where the
 * next row of tiles (or the next channel's, or a plane's 16 floats of
 * padding) is written after it, and read past a row only into values that
 * are then dropped. */
#define ROUND8(n) (((n) + 7) & ~7)

/* Images per group: V and M of a group take about conv_group_floats. */
static int wino_group(int N, int Cin, int Cout, int H, int W) {
    long per = 16L * (Cin + Cout) * plane_ld((long)tiles(H) * tiles(W));
    return conv_group(N, per);
}

int winograd_applies(int k, int s, int p, int W) {
    return k == 3 && s == 1 && p == 1 && W <= WINO_MAX_W;
}

/* The scratch for a group of images [n0, n1): nu blocks of 16 transformed
 * weights [16][Cout][Cin] at 0 (the forward's U; the backward's U and the
 * gradient dU after it), the 16 planes of the transformed input [Cin][ld] at
 * v_at, those of the output (or of its gradient) [Cout][ld] at m_at, each
 * plane padded by 16 floats; T tiles, `floats` in all. */
typedef struct {
    long T, ld, es_in, es_out, v_at, m_at, floats;
} group_layout;

static group_layout layout_of(int g, int Cin, int Cout, int H, int W, int nu) {
    group_layout L;
    L.T = (long)g * tiles(H) * tiles(W);
    L.ld = plane_ld(L.T);
    L.es_in = (long)Cin * L.ld + 16, L.es_out = (long)Cout * L.ld + 16;
    L.v_at = 16L * nu * Cout * Cin, L.m_at = L.v_at + 16 * L.es_in;
    L.floats = L.m_at + 16 * L.es_out;
    return L;
}

/* the backward's, which holds the forward's */
long winograd_scratch_floats(int N, int Cin, int Cout, int H, int W) {
    return layout_of(wino_group(N, Cin, Cout, H, W), Cin, Cout, H, W, 2).floats;
}

/* U[e][o][c] = (G g G^T)[e] for g = w[o][c] (3x3). */
static void weights(float *U, const float *w, int Cout, int Cin) {
    for (int o = 0; o < Cout; o++)
        for (int c = 0; c < Cin; c++) {
            const float *g = w + ((long)o * Cin + c) * 9;
            float t[4][3];
            for (int j = 0; j < 3; j++) {
                t[0][j] = g[j];
                t[1][j] = 0.5f * (g[j] + g[3 + j] + g[6 + j]);
                t[2][j] = 0.5f * (g[j] - g[3 + j] + g[6 + j]);
                t[3][j] = g[6 + j];
            }
            for (int i = 0; i < 4; i++) {
                const float u[4] = {t[i][0], 0.5f * (t[i][0] + t[i][1] + t[i][2]),
                                    0.5f * (t[i][0] - t[i][1] + t[i][2]), t[i][2]};
                for (int j = 0; j < 4; j++) U[((long)(i * 4 + j) * Cout + o) * Cin + c] = u[j];
            }
        }
}

/* V[e][c][t] (plane stride es, row stride ld) = (B^T d B)[e] for the tiles of
 * images [n0, n1). Tile tx reads input columns 2tx-1 .. 2tx+2; each staged
 * row is split into its odd columns E[k] = col 2k-1 and even ones O[k] =
 * col 2k (k = 0..tw, zero outside the image), so that every loop below
 * runs over consecutive floats and vectorises. */
DM_VECTOR_CLONES
static void input(float *V, long es, long ld, const float *in, int N, int n0, int n1, int C,
                  int H, int W) {
    const int th = tiles(H), tw = tiles(W), tp = ROUND8(tw);
    float E[4][WINO_MAX_W / 2 + 16], O[4][WINO_MAX_W / 2 + 16];
    float bE[4][WINO_MAX_W / 2 + 16], bO[4][WINO_MAX_W / 2 + 16];
    for (int c = 0; c < C; c++)
        for (int n = n0; n < n1; n++)
            for (int ty = 0; ty < th; ty++) {
                /* The 4 input rows 2ty-1 .. 2ty+2, zero outside, read
                 * straight from the image (a staged copy read back with
                 * wider loads than it was written stalls store forwarding). */
                for (int r = 0; r < 4; r++) {
                    const int y = 2 * ty - 1 + r;
                    int k = 0, kE = 1;
                    if (y >= 0 && y < H) {
                        const float *row = in + (((long)c * N + n) * H + y) * W;
                        for (; 2 * k < W; k++) O[r][k] = row[2 * k];
                        for (; 2 * kE - 1 < W; kE++) E[r][kE] = row[2 * kE - 1];
                    }
                    E[r][0] = 0.0f;
                    for (; k <= tp; k++) O[r][k] = 0.0f;
                    for (; kE <= tp; kE++) E[r][kE] = 0.0f;
                }
                /* B^T d: combinations of the four rows. */
                for (int k = 0; k <= tp; k++) {
                    bE[0][k] = E[0][k] - E[2][k], bO[0][k] = O[0][k] - O[2][k];
                    bE[1][k] = E[1][k] + E[2][k], bO[1][k] = O[1][k] + O[2][k];
                    bE[2][k] = E[2][k] - E[1][k], bO[2][k] = O[2][k] - O[1][k];
                    bE[3][k] = E[1][k] - E[3][k], bO[3][k] = O[1][k] - O[3][k];
                }
                /* (B^T d) B: columns 2tx .. 2tx+3 of each combined row. */
                float *v = V + (long)c * ld + ((long)(n - n0) * th + ty) * tw;
                for (int i = 0; i < 4; i++) {
                    float *v0 = v + (4 * i) * es, *v1 = v0 + es, *v2 = v1 + es, *v3 = v2 + es;
                    const float *e = bE[i], *o = bO[i];
                    for (int tx = 0; tx < tp; tx++) {
                        v0[tx] = e[tx] - e[tx + 1];
                        v1[tx] = o[tx] + e[tx + 1];
                        v2[tx] = e[tx + 1] - o[tx];
                        v3[tx] = o[tx] - o[tx + 1];
                    }
                }
            }
}

/* out (+)= A^T M A for the tiles of images [n0, n1); outputs outside H x W
 * dropped. */
DM_VECTOR_CLONES
static void output(float *out, int acc, const float *M, long es, long ld, int N, int n0, int n1,
                   int C, int H, int W) {
    const int th = tiles(H), tw = tiles(W), tp = ROUND8(tw);
    float r[2][4][WINO_MAX_W / 2 + 16], y[2][WINO_MAX_W + 32];
    for (int o = 0; o < C; o++)
        for (int n = n0; n < n1; n++)
            for (int ty = 0; ty < th; ty++) {
                const float *m = M + (long)o * ld + ((long)(n - n0) * th + ty) * tw;
                /* A^T M: rows 0 and 1 of each tile, for the four columns. */
                for (int j = 0; j < 4; j++) {
                    const float *m0 = m + j * es, *m1 = m0 + 4 * es, *m2 = m1 + 4 * es,
                                *m3 = m2 + 4 * es;
                    for (int tx = 0; tx < tp; tx++) {
                        r[0][j][tx] = m0[tx] + m1[tx] + m2[tx];
                        r[1][j][tx] = m1[tx] - m2[tx] - m3[tx];
                    }
                }
                /* (A^T M) A: the two output columns of each tile. */
                for (int i = 0; i < 2; i++)
                    for (int tx = 0; tx < tp; tx++) {
                        y[i][2 * tx] = r[i][0][tx] + r[i][1][tx] + r[i][2][tx];
                        y[i][2 * tx + 1] = r[i][1][tx] - r[i][2][tx] - r[i][3][tx];
                    }
                for (int i = 0; i < 2 && 2 * ty + i < H; i++) {
                    float *dst = out + (((long)o * N + n) * H + 2 * ty + i) * W;
                    if (acc)
                        for (int x = 0; x < W; x++) dst[x] += y[i][x];
                    else
                        memcpy(dst, y[i], sizeof(float) * (size_t)W);
                }
            }
}

void winograd_conv3x3(float *out, int acc, const float *in, const float *w, float *scratch,
                      int N, int Cin, int H, int W, int Cout) {
    const int g = wino_group(N, Cin, Cout, H, W);
    float *U = scratch;
    double t0 = prof_start();
    weights(U, w, Cout, Cin);
    prof_add(PROF_IM2COL, t0);
    for (int n0 = 0; n0 < N; n0 += g) {
        const int n1 = N - n0 < g ? N : n0 + g;
        const group_layout L = layout_of(n1 - n0, Cin, Cout, H, W, 1);
        float *V = scratch + L.v_at, *M = scratch + L.m_at;
        t0 = prof_start();
        input(V, L.es_in, L.ld, in, N, n0, n1, Cin, H, W);
        prof_add(PROF_IM2COL, t0);
        for (int e = 0; e < 16; e++)
            dm_gemm(CblasNoTrans, CblasNoTrans, Cout, (int)L.T, Cin, U + (long)e * Cout * Cin,
                    Cin, V + e * L.es_in, (int)L.ld, 0.0f, M + e * L.es_out, (int)L.ld);
        t0 = prof_start();
        output(out, acc, M, L.es_out, L.ld, N, n0, n1, Cout, H, W);
        prof_add(PROF_IM2COL, t0);
    }
}

/* Z[e][o][t] (plane stride es, row stride ld) = (A y A^T)[e] for each tile's
 * 2x2 block y of dout (zero outside H x W): the gradient of the
 * transformed products M, as Y = A^T M A. */
DM_VECTOR_CLONES
static void grad_output(float *Z, long es, long ld, const float *dout, int N, int n0, int n1,
                        int C, int H, int W) {
    const int th = tiles(H), tw = tiles(W), tp = ROUND8(tw);
    float ye[2][WINO_MAX_W / 2 + 16], yo[2][WINO_MAX_W / 2 + 16]; /* columns 2k, 2k+1 */
    for (int o = 0; o < C; o++)
        for (int n = n0; n < n1; n++)
            for (int ty = 0; ty < th; ty++) {
                for (int i = 0; i < 2; i++) {
                    const int row = 2 * ty + i;
                    int k = 0, ko = 0;
                    if (row < H) {
                        const float *src = dout + (((long)o * N + n) * H + row) * W;
                        for (; 2 * k < W; k++) ye[i][k] = src[2 * k];
                        for (; 2 * ko + 1 < W; ko++) yo[i][ko] = src[2 * ko + 1];
                    }
                    for (; k < tp; k++) ye[i][k] = 0.0f;
                    for (; ko < tp; ko++) yo[i][ko] = 0.0f;
                }
                float *z = Z + (long)o * ld + ((long)(n - n0) * th + ty) * tw;
                for (int tx = 0; tx < tp; tx++) {
                    const float a0 = ye[0][tx], a1 = yo[0][tx];
                    const float b0 = ye[1][tx], b1 = yo[1][tx];
                    /* t = A y (4 x 2), then Z = t A^T (4 x 4). */
                    const float t[4][2] = {{a0, a1}, {a0 + b0, a1 + b1}, {a0 - b0, a1 - b1},
                                           {-b0, -b1}};
                    for (int i = 0; i < 4; i++) {
                        z[(4 * i + 0) * es + tx] = t[i][0];
                        z[(4 * i + 1) * es + tx] = t[i][0] + t[i][1];
                        z[(4 * i + 2) * es + tx] = t[i][0] - t[i][1];
                        z[(4 * i + 3) * es + tx] = -t[i][1];
                    }
                }
            }
}

/* dx (ADDED) += the adjoint of `input` for the tiles of images [n0, n1):
 * each tile's B dV B^T (4x4) added to the input rows 2ty-1 .. 2ty+2 and
 * columns 2tx-1 .. 2tx+2 it was read from; parts outside H x W dropped.
 * Neighbouring tiles overlap by two rows and two columns: per tile row, the
 * four rows are assembled whole (column x at y[r][x + 1]), and rows 2ty+1
 * and 2ty+2 wait for the next tile row's rows 0 and 1 (carry), so that each
 * row of dx is added to once. */
DM_VECTOR_CLONES
static void input_adjoint(float *dx, const float *dV, long es, long ld, int N, int n0, int n1,
                          int C, int H, int W) {
    const int th = tiles(H), tw = tiles(W), tp = ROUND8(tw);
    enum { LEN = WINO_MAX_W / 2 + 16 };
    float r[4][4][LEN], y[4][2 * LEN + 2], carry[2][2 * LEN + 2];
    for (int c = 0; c < C; c++)
        for (int n = n0; n < n1; n++) {
            for (int x = 0; x < 2 * tp + 2; x++) carry[0][x] = carry[1][x] = 0.0f;
            for (int ty = 0; ty <= th; ty++) {
                if (ty < th) {
                    const float *v = dV + (long)c * ld + ((long)(n - n0) * th + ty) * tw;
                    /* B dV: the four rows of each tile, for column j */
                    for (int j = 0; j < 4; j++) {
                        const float *v0 = v + j * es, *v1 = v0 + 4 * es, *v2 = v1 + 4 * es,
                                    *v3 = v2 + 4 * es;
                        for (int tx = 0; tx < tp; tx++) {
                            r[0][j][tx] = v0[tx];
                            r[1][j][tx] = v1[tx] - v2[tx] + v3[tx];
                            r[2][j][tx] = v1[tx] + v2[tx] - v0[tx];
                            r[3][j][tx] = -v3[tx];
                        }
                        r[0][j][tw] = r[1][j][tw] = r[2][j][tw] = r[3][j][tw] = 0.0f; /* junk */
                    }
                    /* (B dV) B^T: column 2tx-1 (at y[2tx]) takes tile tx's
                     * column 0 and tile tx-1's column 2; column 2tx (at
                     * y[2tx+1]) tile tx's 1 and tile tx-1's 3 */
                    for (int i = 0; i < 4; i++) {
                        const float *a = r[i][0], *b = r[i][1], *cc = r[i][2], *d = r[i][3];
                        y[i][0] = a[0];
                        y[i][1] = b[0] - cc[0] + d[0];
                        for (int tx = 1; tx <= tw; tx++) {
                            y[i][2 * tx] = a[tx] + (b[tx - 1] + cc[tx - 1] - a[tx - 1]);
                            y[i][2 * tx + 1] = (b[tx] - cc[tx] + d[tx]) - d[tx - 1];
                        }
                    }
                } else
                    for (int i = 0; i < 4; i++)
                        for (int x = 0; x < 2 * tw + 2; x++) y[i][x] = 0.0f;
                for (int q = 0; q < 2; q++) {
                    const int row = 2 * ty - 1 + q;
                    if (row >= 0 && row < H) {
                        float *dst = dx + (((long)c * N + n) * H + row) * W;
                        for (int x = 0; x < W; x++) dst[x] += carry[q][x + 1] + y[q][x + 1];
                    }
                    for (int x = 0; x < W; x++) carry[q][x + 1] = y[2 + q][x + 1];
                }
            }
        }
}

void winograd_conv3x3_backward(float *dx, float *dw, const float *dout, const float *in,
                               const float *w, float *scratch, int N, int Cin, int H, int W,
                               int Cout) {
    const int g = wino_group(N, Cin, Cout, H, W);
    const long plane = (long)Cout * Cin;
    float *U = scratch, *dU = scratch + 16 * plane; /* dU summed over the groups */
    double t0 = prof_start();
    if (dx) weights(U, w, Cout, Cin);
    prof_add(PROF_IM2COL, t0);
    for (int n0 = 0; n0 < N; n0 += g) {
        const int n1 = N - n0 < g ? N : n0 + g;
        const group_layout L = layout_of(n1 - n0, Cin, Cout, H, W, 2);
        float *V = scratch + L.v_at, *Z = scratch + L.m_at;
        t0 = prof_start();
        input(V, L.es_in, L.ld, in, N, n0, n1, Cin, H, W);
        grad_output(Z, L.es_out, L.ld, dout, N, n0, n1, Cout, H, W);
        prof_add(PROF_IM2COL, t0);
        for (int e = 0; e < 16; e++) {
            /* dU[e] (+)= Z[e] (Cout x T) V[e]^T (T x Cin) */
            dm_gemm(CblasNoTrans, CblasTrans, Cout, Cin, (int)L.T, Z + e * L.es_out, (int)L.ld,
                    V + e * L.es_in, (int)L.ld, n0 ? 1.0f : 0.0f, dU + e * plane, Cin);
            /* dV[e] = U[e]^T (Cin x Cout) Z[e] (Cout x T), over V[e], now read */
            if (dx)
                dm_gemm(CblasTrans, CblasNoTrans, Cin, (int)L.T, Cout, U + e * plane, Cin,
                        Z + e * L.es_out, (int)L.ld, 0.0f, V + e * L.es_in, (int)L.ld);
        }
        t0 = prof_start();
        if (dx) input_adjoint(dx, V, L.es_in, L.ld, N, n0, n1, Cin, H, W);
        prof_add(PROF_IM2COL, t0);
    }
    /* dw[o][c] = G^T dU[o][c] G (3x3 from 4x4). */
    t0 = prof_start();
    for (int o = 0; o < Cout; o++)
        for (int c = 0; c < Cin; c++) {
            float x[4][4], s[3][4];
            for (int e = 0; e < 16; e++) x[e / 4][e % 4] = dU[e * plane + (long)o * Cin + c];
            for (int j = 0; j < 4; j++) {
                s[0][j] = x[0][j] + 0.5f * (x[1][j] + x[2][j]);
                s[1][j] = 0.5f * (x[1][j] - x[2][j]);
                s[2][j] = 0.5f * (x[1][j] + x[2][j]) + x[3][j];
            }
            float *d = dw + ((long)o * Cin + c) * 9;
            for (int a = 0; a < 3; a++) {
                d[3 * a + 0] = s[a][0] + 0.5f * (s[a][1] + s[a][2]);
                d[3 * a + 1] = 0.5f * (s[a][1] - s[a][2]);
                d[3 * a + 2] = 0.5f * (s[a][1] + s[a][2]) + s[a][3];
            }
        }
    prof_add(PROF_IM2COL, t0);
}
