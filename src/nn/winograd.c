/* winograd.c: 3x3 convolutions with stride 1 and padding 1 by Winograd's
 * minimal filtering F(2x2, 3x3) or F(4x4, 3x3) (Lavin and Gray, 2015), for
 * fp32. F(2x2) is described here; F(4x4), below its own heading, differs
 * in the transforms and in 36 products instead of 16, and the drivers at
 * the end run either (a row of the table wino_row).
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
#include "diffmpi/par.h"

#define WINO_MAX_W 512 /* widest row a transform stages (the UNet's is 28) */

static int tiles(int n, int m) { return (n + m - 1) / m; }

/* A plane's row stride: T tiles and at least 7 floats of slack (rounded to
 * 16), so that the junk a channel's last row of tiles writes past T (see
 * ROUND8) stays in its own plane, and channels can be transformed on
 * different threads. */
static long plane_ld(long T) { return (T + 7 + 15) / 16 * 16; }

/* The transforms' loops over a row of tiles run to tw rounded up to 8, so
 * that they are whole vectors, not one vector and a scalar tail (14 tiles at
 * 28x28). The extra tiles are junk: written past a row's tw tiles, where the
 * next row of tiles (or the next channel's, or a plane's 16 floats of
 * padding) is written after it, and read past a row only into values that
 * are then dropped. */
#define ROUND8(n) (((n) + 7) & ~7)

/* Images per group: V and M of a group take about conv_group_floats, four
 * times that for F(4x4), whose products would otherwise be too narrow (one
 * 28x28 image is 49 tiles; the measured gain of 2-4 images a group is in
 * docs/performance-log.md). */
static int wino_group(int N, int Cin, int Cout, int H, int W, int m) {
    const int a = m + 2;
    long per = (long)a * a * (Cin + Cout) * plane_ld((long)tiles(H, m) * tiles(W, m));
    return conv_group(N, m == 4 ? (per + 3) / 4 : per);
}

int winograd_applies(int k, int s, int p, int W) {
    return k == 3 && s == 1 && p == 1 && W <= WINO_MAX_W;
}

/* The scratch for a group of images [n0, n1) and tile m (a = m + 2, a^2
 * planes): nu blocks of the a^2 transformed weights [a^2][Cout][Cin] at 0
 * (the forward's U; the backward's U and the gradient dU after it), the
 * planes of the transformed input [Cin][ld] at v_at, those of the output (or
 * of its gradient) [Cout][ld] at m_at, each plane padded by 16 floats; T
 * tiles, `floats` in all. */
typedef struct {
    long T, ld, es_in, es_out, v_at, m_at, floats;
} group_layout;

static group_layout layout_of(int g, int Cin, int Cout, int H, int W, int m, int nu) {
    const long a2 = (long)(m + 2) * (m + 2);
    group_layout L;
    L.T = (long)g * tiles(H, m) * tiles(W, m);
    L.ld = plane_ld(L.T);
    L.es_in = (long)Cin * L.ld + 16, L.es_out = (long)Cout * L.ld + 16;
    L.v_at = a2 * nu * Cout * Cin, L.m_at = L.v_at + a2 * L.es_in;
    L.floats = L.m_at + a2 * L.es_out;
    return L;
}

/* the forward's, or the backward's, which holds the forward's */
long winograd_scratch_floats(int N, int Cin, int Cout, int H, int W, int m, int backward) {
    return layout_of(wino_group(N, Cin, Cout, H, W, m), Cin, Cout, H, W, m, backward ? 2 : 1)
        .floats;
}

int winograd_tile_ok(int m) { return m == 2 || m == 4; }

/* U[e][o][c] = (G g G^T)[e] for g = w[o][c] (3x3). */
static void weights2(float *U, const float *w, int Cout, int Cin, int o0, int o1) {
    for (int o = o0; o < o1; o++)
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
static void input2(float *V, long es, long ld, const float *in, int N, int n0, int n1, int C,
                  int H, int W) {
    const int th = tiles(H, 2), tw = tiles(W, 2), tp = ROUND8(tw);
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
static void output2(float *out, int acc, const float *M, long es, long ld, int N, int n0, int n1,
                   int C, int H, int W) {
    const int th = tiles(H, 2), tw = tiles(W, 2), tp = ROUND8(tw);
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

/* Z[e][o][t] (plane stride es, row stride ld) = (A y A^T)[e] for each tile's
 * 2x2 block y of dout (zero outside H x W): the gradient of the
 * transformed products M, as Y = A^T M A. */
DM_VECTOR_CLONES
static void grad_output2(float *Z, long es, long ld, const float *dout, int N, int n0, int n1,
                        int C, int H, int W) {
    const int th = tiles(H, 2), tw = tiles(W, 2), tp = ROUND8(tw);
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
static void input_adjoint2(float *dx, const float *dV, long es, long ld, int N, int n0, int n1,
                          int C, int H, int W) {
    const int th = tiles(H, 2), tw = tiles(W, 2), tp = ROUND8(tw);
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

/* dw[o][c] = G^T dU[o][c] G (3x3 from 4x4), OVERWRITTEN. */
static void weight_grad2(float *dw, const float *dU, int Cout, int Cin, int o0, int o1) {
    const long plane = (long)Cout * Cin;
    for (int o = o0; o < o1; o++)
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
}

/* ---- F(4x4, 3x3) -------------------------------------------------------
 * Each 4x4 block of outputs from the 6x6 input patch around it, with
 * (Lavin and Gray's points 0, 1, -1, 2, -2 and infinity)
 *
 *   B^T = [4  0 -5  0 1 0]   G = [ 1/4     0    0 ]   A^T = [1 1  1 1  1 0]
 *         [0 -4 -4  1 1 0]       [-1/6 -1/6 -1/6 ]          [0 1 -1 2 -2 0]
 *         [0  4 -4 -1 1 0]       [-1/6  1/6 -1/6 ]          [0 1  1 4  4 0]
 *         [0 -2 -1  2 1 0]       [1/24 1/12  1/6 ]          [0 1 -1 8 -8 1]
 *         [0  2 -1 -2 1 0]       [1/24 -1/12 1/6 ]
 *         [0  4  0 -5 0 1]       [   0     0    1 ]
 *
 * 36 products for 16 outputs: 4x fewer multiplies than direct at 28x28
 * (3.1x at 14x14 and 7x7, whose last tiles are partly outside), against
 * F(2x2)'s 2.25x, and 2.25 transformed values per output against 4. The
 * transformed values are larger (up to 10x an input per dimension), so the
 * rounding is about ten times F(2x2)'s, still far below bf16's.
 *
 * Every transform below applies one of these 1-D maps along one axis, then
 * along the other; each map is written once, over arrays of n lanes (a row
 * of tiles), n a multiple of 8, in blocks of 8 that vectorise whole (a loop
 * of 8 or 9 left to the compiler runs as 16-wide vectors that never fill
 * and a scalar tail). */

enum { LEN4 = WINO_MAX_W / 4 + 16 };

/* 8 lanes as one value (GCC's vector extension): the maps below load,
 * combine and store whole blocks of 8, so they vectorise however the
 * compiler judges the pointers (as separate loops over planes they often
 * did not) and whatever the clone's vector width. */
typedef float v8 __attribute__((vector_size(32)));
/* The helpers pass v8 by value, which the default (pre-AVX) target passes
 * differently from the clones' targets: they are always inlined, so no v8
 * crosses a call (without that, a Debug build's clones called them with
 * the wrong convention and crashed), and GCC's warning about that
 * convention does not apply. */
#pragma GCC diagnostic ignored "-Wpsabi"
#define V8_HELPER static inline __attribute__((always_inline))
V8_HELPER v8 ld8(const float *p) {
    v8 v;
    memcpy(&v, p, sizeof v);
    return v;
}
V8_HELPER void st8(float *p, v8 v) { memcpy(p, &v, sizeof v); }

/* B^T d: d0..d5 -> b0..b5 */
V8_HELPER void bt6(float *const b[6], const float *const d[6], int n) {
    for (int k = 0; k < n; k += 8) {
        const v8 d0 = ld8(d[0] + k), d1 = ld8(d[1] + k), d2 = ld8(d[2] + k), d3 = ld8(d[3] + k),
                 d4 = ld8(d[4] + k), d5 = ld8(d[5] + k);
        st8(b[0] + k, 4.0f * d0 - 5.0f * d2 + d4);
        st8(b[1] + k, (d3 + d4) - 4.0f * (d1 + d2));
        st8(b[2] + k, (d4 - d3) + 4.0f * (d1 - d2));
        st8(b[3] + k, (d4 - d2) + 2.0f * (d3 - d1));
        st8(b[4] + k, (d4 - d2) - 2.0f * (d3 - d1));
        st8(b[5] + k, 4.0f * d1 - 5.0f * d3 + d5);
    }
}

/* B v (the adjoint of B^T): v0..v5 -> s0..s5 */
V8_HELPER void b6(float *const s[6], const float *const v[6], int n) {
    for (int k = 0; k < n; k += 8) {
        const v8 v0 = ld8(v[0] + k), v1 = ld8(v[1] + k), v2 = ld8(v[2] + k), v3 = ld8(v[3] + k),
                 v4 = ld8(v[4] + k), v5 = ld8(v[5] + k);
        st8(s[0] + k, 4.0f * v0);
        st8(s[1] + k, 4.0f * (v2 - v1) + 2.0f * (v4 - v3) + 4.0f * v5);
        st8(s[2] + k, -5.0f * v0 - 4.0f * (v1 + v2) - (v3 + v4));
        st8(s[3] + k, (v1 - v2) + 2.0f * (v3 - v4) - 5.0f * v5);
        st8(s[4] + k, v0 + v1 + v2 + v3 + v4);
        st8(s[5] + k, v5);
    }
}

/* A^T m: m0..m5 -> y0..y3 */
V8_HELPER void at6(float *const y[4], const float *const m[6], int n) {
    for (int k = 0; k < n; k += 8) {
        const v8 m0 = ld8(m[0] + k), m1 = ld8(m[1] + k), m2 = ld8(m[2] + k), m3 = ld8(m[3] + k),
                 m4 = ld8(m[4] + k), m5 = ld8(m[5] + k);
        st8(y[0] + k, m0 + (m1 + m2) + (m3 + m4));
        st8(y[1] + k, (m1 - m2) + 2.0f * (m3 - m4));
        st8(y[2] + k, (m1 + m2) + 4.0f * (m3 + m4));
        st8(y[3] + k, (m1 - m2) + 8.0f * (m3 - m4) + m5);
    }
}

/* A y (the adjoint of A^T): y0..y3 -> t0..t5 */
V8_HELPER void a6(float *const t[6], const float *const y[4], int n) {
    for (int k = 0; k < n; k += 8) {
        const v8 y0 = ld8(y[0] + k), y1 = ld8(y[1] + k), y2 = ld8(y[2] + k), y3 = ld8(y[3] + k);
        st8(t[0] + k, y0);
        st8(t[1] + k, (y0 + y2) + (y1 + y3));
        st8(t[2] + k, (y0 + y2) - (y1 + y3));
        st8(t[3] + k, (y0 + 4.0f * y2) + 2.0f * (y1 + 4.0f * y3));
        st8(t[4] + k, (y0 + 4.0f * y2) - 2.0f * (y1 + 4.0f * y3));
        st8(t[5] + k, y3);
    }
}

/* Four blocks of 8 consecutive floats x[0..31] split by phase:
 * q[p][k] = x[4k + p], k = 0..7. */
V8_HELPER void split4(float *const q[4], v8 a, v8 b, v8 c, v8 d) {
    typedef int i8 __attribute__((vector_size(32)));
    const i8 lo = {0, 4, 8, 12, 1, 5, 9, 13}, hi = {2, 6, 10, 14, 3, 7, 11, 15};
    const i8 first = {0, 1, 2, 3, 8, 9, 10, 11}, second = {4, 5, 6, 7, 12, 13, 14, 15};
    const v8 ab01 = __builtin_shuffle(a, b, lo), cd01 = __builtin_shuffle(c, d, lo);
    const v8 ab23 = __builtin_shuffle(a, b, hi), cd23 = __builtin_shuffle(c, d, hi);
    st8(q[0], __builtin_shuffle(ab01, cd01, first));
    st8(q[1], __builtin_shuffle(ab01, cd01, second));
    st8(q[2], __builtin_shuffle(ab23, cd23, first));
    st8(q[3], __builtin_shuffle(ab23, cd23, second));
}

/* The inverse of split4: x[4k + p] = q[p][k] for k = 0..7, as four blocks
 * of 8 floats x[0..31]. */
V8_HELPER void merge4(v8 x[4], v8 q0, v8 q1, v8 q2, v8 q3) {
    typedef int i8 __attribute__((vector_size(32)));
    const i8 lo = {0, 8, 1, 9, 2, 10, 3, 11}, hi = {4, 12, 5, 13, 6, 14, 7, 15};
    const i8 first = {0, 1, 8, 9, 2, 3, 10, 11}, second = {4, 5, 12, 13, 6, 7, 14, 15};
    const v8 a = __builtin_shuffle(q0, q1, lo), b = __builtin_shuffle(q0, q1, hi);
    const v8 c = __builtin_shuffle(q2, q3, lo), d = __builtin_shuffle(q2, q3, hi);
    x[0] = __builtin_shuffle(a, c, first), x[1] = __builtin_shuffle(a, c, second);
    x[2] = __builtin_shuffle(b, d, first), x[3] = __builtin_shuffle(b, d, second);
}

/* The 8 floats after the first of (a, b): a[1..7], b[0]. */
V8_HELPER v8 next1(v8 a, v8 b) {
    typedef int i8 __attribute__((vector_size(32)));
    const i8 m = {1, 2, 3, 4, 5, 6, 7, 8};
    return __builtin_shuffle(a, b, m);
}

/* The 8 floats before the last of (a, b): a[7], b[0..6]. */
V8_HELPER v8 prev1(v8 a, v8 b) {
    typedef int i8 __attribute__((vector_size(32)));
    const i8 m = {7, 8, 9, 10, 11, 12, 13, 14};
    return __builtin_shuffle(a, b, m);
}

/* The 8 floats x[0..7] of row (x from at, W long), zero outside 0..W-1.
 * Across an end of a row of at least 8, the 8 floats at that end, moved by
 * one shuffle (lane 8 of the pair is the zero vector's); shorter rows lane
 * by lane. */
V8_HELPER v8 row8(const float *row, int at, int W) {
    if (at >= 0 && at + 8 <= W) return ld8(row + at);
    const v8 zero = {0};
    if (W >= 8) {
        typedef int i8 __attribute__((vector_size(32)));
        const int base = at < 0 ? 0 : W - 8, off = at - base;
        i8 m;
        for (int l = 0; l < 8; l++) m[l] = l + off >= 0 && l + off < 8 ? l + off : 8;
        return __builtin_shuffle(ld8(row + base), zero, m);
    }
    v8 v = zero;
    for (int l = 0; l < 8; l++)
        if (at + l >= 0 && at + l < W) v[l] = row[at + l];
    return v;
}

/* A row split by column phase: P[p][k] = row[4k + p + shift] for k < n (a
 * multiple of 8), zero outside the row or with row NULL; read straight
 * from the image (a copy read back with wider loads than it was written
 * stalls store forwarding). */
V8_HELPER void split_row(float *const P[4], const float *row, int W, int shift, int n) {
    for (int k = 0; k < n; k += 8) {
        float *q[4] = {P[0] + k, P[1] + k, P[2] + k, P[3] + k};
        if (!row) {
            const v8 z = {0};
            for (int p = 0; p < 4; p++) st8(q[p], z);
            continue;
        }
        const int at = 4 * k + shift;
        split4(q, row8(row, at, W), row8(row, at + 8, W), row8(row, at + 16, W),
               row8(row, at + 24, W));
    }
}

/* G g: g0..g2 -> u0..u5 */
V8_HELPER void g6(v8 u[6], v8 g0, v8 g1, v8 g2) {
    u[0] = 0.25f * g0;
    u[1] = -(g0 + g1 + g2) / 6.0f;
    u[2] = -(g0 - g1 + g2) / 6.0f;
    u[3] = (g0 + 2.0f * g1 + 4.0f * g2) / 24.0f;
    u[4] = (g0 - 2.0f * g1 + 4.0f * g2) / 24.0f;
    u[5] = g2;
}

/* G^T x (the adjoint of G): x0..x5 -> s0..s2 */
V8_HELPER void gt6(v8 s[3], const v8 x[6]) {
    s[0] = 0.25f * x[0] - (x[1] + x[2]) / 6.0f + (x[3] + x[4]) / 24.0f;
    s[1] = (x[2] - x[1]) / 6.0f + (x[3] - x[4]) / 12.0f;
    s[2] = (x[3] + x[4] - x[1] - x[2]) / 6.0f + x[5];
}

/* U[e][o][c] = (G g G^T)[e] for g = w[o][c], 8 input channels at a time
 * (the last block partly empty), so that the 36 planes are written whole
 * vectors at a time. */
DM_VECTOR_CLONES
static void weights4(float *U, const float *w, int Cout, int Cin, int o0, int o1) {
    const long plane = (long)Cout * Cin;
    for (int o = o0; o < o1; o++)
        for (int c0 = 0; c0 < Cin; c0 += 8) {
            const int nl = Cin - c0 < 8 ? Cin - c0 : 8;
            v8 g[9] = {{0}};
            for (int l = 0; l < nl; l++)
                for (int q = 0; q < 9; q++) g[q][l] = w[((long)o * Cin + c0 + l) * 9 + q];
            v8 t[3][6], u[6]; /* t[j] = G (column j of g) */
            for (int j = 0; j < 3; j++) g6(t[j], g[j], g[3 + j], g[6 + j]);
            for (int i = 0; i < 6; i++) {
                g6(u, t[0][i], t[1][i], t[2][i]);
                for (int j = 0; j < 6; j++) {
                    float *dst = U + (6 * i + j) * plane + (long)o * Cin + c0;
                    if (nl == 8)
                        st8(dst, u[j]);
                    else
                        for (int l = 0; l < nl; l++) dst[l] = u[j][l];
                }
            }
        }
}

/* dw[o][c] = G^T dU[o][c] G (3x3 from 6x6), OVERWRITTEN; 8 input channels
 * at a time, as weights4. */
DM_VECTOR_CLONES
static void weight_grad4(float *dw, const float *dU, int Cout, int Cin, int o0, int o1) {
    const long plane = (long)Cout * Cin;
    for (int o = o0; o < o1; o++)
        for (int c0 = 0; c0 < Cin; c0 += 8) {
            const int nl = Cin - c0 < 8 ? Cin - c0 : 8;
            v8 x[6][6], s[3][6], col[6], r[3];
            for (int e = 0; e < 36; e++) {
                const float *src = dU + e * plane + (long)o * Cin + c0;
                if (nl == 8)
                    x[e / 6][e % 6] = ld8(src);
                else {
                    x[e / 6][e % 6] = (v8){0};
                    for (int l = 0; l < nl; l++) x[e / 6][e % 6][l] = src[l];
                }
            }
            for (int j = 0; j < 6; j++) {
                for (int i = 0; i < 6; i++) col[i] = x[i][j];
                gt6(r, col);
                for (int a = 0; a < 3; a++) s[a][j] = r[a];
            }
            for (int a = 0; a < 3; a++) {
                gt6(r, s[a]);
                for (int l = 0; l < nl; l++)
                    for (int b = 0; b < 3; b++) dw[((long)o * Cin + c0 + l) * 9 + 3 * a + b] = r[b][l];
            }
        }
}

/* V[e][c][t] = (B^T d B)[e] for the tiles of images [n0, n1); tile (ty, tx)
 * reads rows 4ty-1 .. 4ty+4 and columns 4tx-1 .. 4tx+4. The six rows are
 * split by column phase, transformed down (B^T d, every phase), then across
 * (columns 4tx-1+j: phases 0..3 of tile tx, and phases 0 and 1 of tx + 1).
 * (Transforming each row across first, in registers, then down, was
 * slower in `perf`.) */
DM_VECTOR_CLONES
static void input4(float *V, long es, long ld, const float *in, int N, int n0, int n1, int C,
                   int H, int W) {
    const int th = tiles(H, 4), tw = tiles(W, 4), tp = ROUND8(tw);
    /* P[r][j][tx] = row r, column 4tx-1+j: phases 0..3 of tile tx, and
     * (split again from 4 columns on) phases 0 and 1 of tile tx + 1 */
    float P[6][6][LEN4], R[6][6][LEN4], unused[2][LEN4];
    for (int c = 0; c < C; c++)
        for (int n = n0; n < n1; n++)
            for (int ty = 0; ty < th; ty++) {
                for (int r = 0; r < 6; r++) {
                    const int y = 4 * ty - 1 + r;
                    const float *row =
                        y >= 0 && y < H ? in + (((long)c * N + n) * H + y) * W : NULL;
                    float *const q[4] = {P[r][0], P[r][1], P[r][2], P[r][3]};
                    float *const q4[4] = {P[r][4], P[r][5], unused[0], unused[1]};
                    split_row(q, row, W, -1, tp);
                    split_row(q4, row, W, 3, tp);
                }
                for (int j = 0; j < 6; j++) { /* B^T d down the rows, column j */
                    const float *d[6] = {P[0][j], P[1][j], P[2][j], P[3][j], P[4][j], P[5][j]};
                    float *b[6] = {R[0][j], R[1][j], R[2][j], R[3][j], R[4][j], R[5][j]};
                    bt6(b, d, tp);
                }
                float *v = V + (long)c * ld + ((long)(n - n0) * th + ty) * tw;
                for (int i = 0; i < 6; i++) { /* (B^T d) B across */
                    const float *d[6] = {R[i][0], R[i][1], R[i][2], R[i][3], R[i][4], R[i][5]};
                    float *b[6];
                    for (int j = 0; j < 6; j++) b[j] = v + (6 * i + j) * es;
                    bt6(b, d, tp);
                }
            }
}

/* out (+)= A^T M A for the tiles of images [n0, n1); outputs outside H x W
 * dropped. */
DM_VECTOR_CLONES
static void output4(float *out, int acc, const float *M, long es, long ld, int N, int n0, int n1,
                    int C, int H, int W) {
    const int th = tiles(H, 4), tw = tiles(W, 4), tp = ROUND8(tw);
    float R[4][6][LEN4], Y[4][4][LEN4], row[4 * LEN4];
    for (int o = 0; o < C; o++)
        for (int n = n0; n < n1; n++)
            for (int ty = 0; ty < th; ty++) {
                const float *m = M + (long)o * ld + ((long)(n - n0) * th + ty) * tw;
                for (int j = 0; j < 6; j++) { /* A^T M down the rows, column j */
                    const float *d[6];
                    for (int i = 0; i < 6; i++) d[i] = m + (6 * i + j) * es;
                    float *y[4] = {R[0][j], R[1][j], R[2][j], R[3][j]};
                    at6(y, d, tp);
                }
                for (int q = 0; q < 4 && 4 * ty + q < H; q++) { /* (A^T M) A, row q */
                    const float *d[6] = {R[q][0], R[q][1], R[q][2], R[q][3], R[q][4], R[q][5]};
                    float *y[4] = {Y[q][0], Y[q][1], Y[q][2], Y[q][3]};
                    at6(y, d, tp);
                    for (int k = 0; k < tp; k += 8) { /* column 4tx+b at row[4tx+b] */
                        v8 x[4];
                        merge4(x, ld8(Y[q][0] + k), ld8(Y[q][1] + k), ld8(Y[q][2] + k),
                               ld8(Y[q][3] + k));
                        for (int b = 0; b < 4; b++) st8(row + 4 * k + 8 * b, x[b]);
                    }
                    float *dst = out + (((long)o * N + n) * H + 4 * ty + q) * W;
                    if (acc)
                        for (int x = 0; x < W; x++) dst[x] += row[x];
                    else
                        memcpy(dst, row, sizeof(float) * (size_t)W);
                }
            }
}

/* Z[e][o][t] = (A y A^T)[e] for each tile's 4x4 block y of dout (zero
 * outside H x W). */
DM_VECTOR_CLONES
static void grad_output4(float *Z, long es, long ld, const float *dout, int N, int n0, int n1,
                         int C, int H, int W) {
    const int th = tiles(H, 4), tw = tiles(W, 4), tp = ROUND8(tw);
    float P[4][4][LEN4], R[6][4][LEN4]; /* P[q][b][k] = row 4ty+q, column 4k+b */
    for (int o = 0; o < C; o++)
        for (int n = n0; n < n1; n++)
            for (int ty = 0; ty < th; ty++) {
                for (int q = 0; q < 4; q++) {
                    const int y = 4 * ty + q;
                    float *const ph[4] = {P[q][0], P[q][1], P[q][2], P[q][3]};
                    split_row(ph, y < H ? dout + (((long)o * N + n) * H + y) * W : NULL, W, 0, tp);
                }
                for (int b = 0; b < 4; b++) { /* A y down the rows, column phase b */
                    const float *y[4] = {P[0][b], P[1][b], P[2][b], P[3][b]};
                    float *t[6] = {R[0][b], R[1][b], R[2][b], R[3][b], R[4][b], R[5][b]};
                    a6(t, y, tp);
                }
                float *z = Z + (long)o * ld + ((long)(n - n0) * th + ty) * tw;
                for (int r = 0; r < 6; r++) { /* (A y) A^T across */
                    const float *y[4] = {R[r][0], R[r][1], R[r][2], R[r][3]};
                    float *t[6];
                    for (int s = 0; s < 6; s++) t[s] = z + (6 * r + s) * es;
                    a6(t, y, tp);
                }
            }
}

/* dx (ADDED) += the adjoint of input4: each tile's B dV B^T (6x6) added to
 * the rows 4ty-1 .. 4ty+4 and columns 4tx-1 .. 4tx+4 it was read from.
 * Neighbouring tiles overlap by two rows and two columns. Per tile row, each
 * of the six rows is assembled whole, column x at Y[s][x] (x = -1 is
 * dropped): tile tx's columns j = 0..3 interleaved, its j = 4, 5 added to
 * tile tx+1's 0, 1, in registers (a row of tiles one block of 8 further
 * when tw is a multiple of 8). Its last two rows wait for the next tile
 * row's first two (the other of the two Y buffers), so each row of dx is
 * added to once, and every buffer is read back as it was written, whole
 * aligned vectors. */
DM_VECTOR_CLONES
static void input_adjoint4(float *dx, const float *dV, long es, long ld, int N, int n0, int n1,
                           int C, int H, int W) {
    const int th = tiles(H, 4), tw = tiles(W, 4), np = ROUND8(tw + 1);
    float R[6][6][LEN4], S[6][6][LEN4], Y[2][6][4 * LEN4 + 8];
    for (int c = 0; c < C; c++)
        for (int n = n0; n < n1; n++) {
            for (int x = 0; x < 4 * np; x++) Y[1][4][x] = Y[1][5][x] = 0.0f; /* ty = 0's carry */
            for (int ty = 0; ty <= th; ty++) {
                float(*y)[4 * LEN4 + 8] = Y[ty & 1], (*carry)[4 * LEN4 + 8] = Y[!(ty & 1)];
                if (ty < th) {
                    const float *v = dV + (long)c * ld + ((long)(n - n0) * th + ty) * tw;
                    for (int j = 0; j < 6; j++) { /* B dV down the rows, column j */
                        const float *d[6];
                        for (int i = 0; i < 6; i++) d[i] = v + (6 * i + j) * es;
                        float *s[6] = {R[0][j], R[1][j], R[2][j], R[3][j], R[4][j], R[5][j]};
                        b6(s, d, np);
                    }
                    for (int s = 0; s < 6; s++) { /* (B dV) B^T across, then assembled */
                        const float *d[6] = {R[s][0], R[s][1], R[s][2], R[s][3], R[s][4], R[s][5]};
                        float *o[6] = {S[s][0], S[s][1], S[s][2], S[s][3], S[s][4], S[s][5]};
                        b6(o, d, np);
                        /* e[j][tx] = column 4tx-1+j: tile tx's j, plus tile tx-1's j+4
                         * for j < 2; tiles from tw on are junk and count as zero */
                        v8 p4 = {0}, p5 = {0}, last = {0};
                        for (int k = 0; k < np; k += 8) {
                            v8 e[4], keep;
                            for (int l = 0; l < 8; l++) keep[l] = k + l < tw ? 1.0f : 0.0f;
                            const v8 o4 = ld8(o[4] + k) * keep, o5 = ld8(o[5] + k) * keep;
                            e[0] = ld8(o[0] + k) * keep + prev1(p4, o4);
                            e[1] = ld8(o[1] + k) * keep + prev1(p5, o5);
                            e[2] = ld8(o[2] + k) * keep;
                            e[3] = ld8(o[3] + k) * keep;
                            p4 = o4, p5 = o5;
                            v8 x[4]; /* columns 4k-1 .. 4k+30 */
                            merge4(x, e[0], e[1], e[2], e[3]);
                            /* stored from column 4k: shifted by one */
                            if (k) st8(y[s] + 4 * k - 8, next1(last, x[0]));
                            for (int b = 0; b < 3; b++) st8(y[s] + 4 * k + 8 * b, next1(x[b], x[b + 1]));
                            last = x[3];
                        }
                        st8(y[s] + 4 * np - 8, next1(last, (v8){0}));
                    }
                } else
                    for (int s = 0; s < 2; s++)
                        for (int x = 0; x < 4 * np; x++) y[s][x] = 0.0f;
                for (int q = 0; q < 4; q++) {
                    const int row = 4 * ty - 1 + q;
                    if (row < 0 || row >= H) continue;
                    float *dst = dx + (((long)c * N + n) * H + row) * W;
                    if (q < 2)
                        for (int x = 0; x < W; x++) dst[x] += carry[4 + q][x] + y[q][x];
                    else
                        for (int x = 0; x < W; x++) dst[x] += y[q][x];
                }
            }
        }
}

/* The two tile sizes as rows of one table: the drivers below are the same
 * for both. */
typedef struct {
    /* output channels [o0, o1) of Cout */
    void (*weights)(float *U, const float *w, int Cout, int Cin, int o0, int o1);
    void (*weight_grad)(float *dw, const float *dU, int Cout, int Cin, int o0, int o1);
    void (*input)(float *V, long es, long ld, const float *in, int N, int n0, int n1, int C,
                  int H, int W);
    void (*output)(float *out, int acc, const float *M, long es, long ld, int N, int n0, int n1,
                   int C, int H, int W);
    void (*grad_output)(float *Z, long es, long ld, const float *dout, int N, int n0, int n1,
                        int C, int H, int W);
    void (*input_adjoint)(float *dx, const float *dV, long es, long ld, int N, int n0, int n1,
                          int C, int H, int W);
} wino_row;

static const wino_row *row_of(int m) {
    static const wino_row rows[2] = {
        {weights2, weight_grad2, input2, output2, grad_output2, input_adjoint2},
        {weights4, weight_grad4, input4, output4, grad_output4, input_adjoint4},
    };
    DM_CHECK(winograd_tile_ok(m), "Winograd tile %d (2 or 4)", m);
    return &rows[m == 4];
}

/* The row's transforms over the rank's threads (par.h): blocks of whole
 * channels (output channels for the weights); channel c of a transformed
 * plane is at c * ld, of an image tensor [C][N][H][W] at c * N*H*W. No
 * transform sums across channels, so the floats do not depend on the cut. */
static void par_weights(const wino_row *k, float *U, const float *w, int Cout, int Cin) {
    PAR_FOR(Cout, (long)Cout * Cin * 36) k->weights(U, w, Cout, Cin, (int)PAR_LO, (int)PAR_HI);
}

static void par_weight_grad(const wino_row *k, float *dw, const float *dU, int Cout, int Cin) {
    PAR_FOR(Cout, (long)Cout * Cin * 36)
        k->weight_grad(dw, dU, Cout, Cin, (int)PAR_LO, (int)PAR_HI);
}

static void par_input(const wino_row *k, float *V, long es, long ld, const float *in, int N,
                      int n0, int n1, int C, int H, int W) {
    const long img = (long)N * H * W;
    PAR_FOR(C, (long)C * (n1 - n0) * H * W * 4) {
        const long c = PAR_LO;
        k->input(V + c * ld, es, ld, in + c * img, N, n0, n1, (int)(PAR_HI - c), H, W);
    }
}

static void par_output(const wino_row *k, float *out, int acc, const float *M, long es,
                       long ld, int N, int n0, int n1, int C, int H, int W) {
    const long img = (long)N * H * W;
    PAR_FOR(C, (long)C * (n1 - n0) * H * W * 4) {
        const long c = PAR_LO;
        k->output(out + c * img, acc, M + c * ld, es, ld, N, n0, n1, (int)(PAR_HI - c), H, W);
    }
}

static void par_grad_output(const wino_row *k, float *Z, long es, long ld, const float *dout,
                            int N, int n0, int n1, int C, int H, int W) {
    const long img = (long)N * H * W;
    PAR_FOR(C, (long)C * (n1 - n0) * H * W * 4) {
        const long c = PAR_LO;
        k->grad_output(Z + c * ld, es, ld, dout + c * img, N, n0, n1, (int)(PAR_HI - c), H, W);
    }
}

static void par_input_adjoint(const wino_row *k, float *dx, const float *dV, long es, long ld,
                              int N, int n0, int n1, int C, int H, int W) {
    const long img = (long)N * H * W;
    PAR_FOR(C, (long)C * (n1 - n0) * H * W * 4) {
        const long c = PAR_LO;
        k->input_adjoint(dx + c * img, dV + c * ld, es, ld, N, n0, n1, (int)(PAR_HI - c), H, W);
    }
}

void winograd_conv3x3(float *out, int acc, const float *in, const float *w, float *scratch,
                      int N, int Cin, int H, int W, int Cout, int m) {
    const wino_row *k = row_of(m);
    const int g = wino_group(N, Cin, Cout, H, W, m), a2 = (m + 2) * (m + 2);
    float *U = scratch;
    double t0 = prof_start();
    par_weights(k, U, w, Cout, Cin);
    prof_add(PROF_IM2COL, t0);
    for (int n0 = 0; n0 < N; n0 += g) {
        const int n1 = N - n0 < g ? N : n0 + g;
        const group_layout L = layout_of(n1 - n0, Cin, Cout, H, W, m, 1);
        float *V = scratch + L.v_at, *M = scratch + L.m_at;
        t0 = prof_start();
        par_input(k, V, L.es_in, L.ld, in, N, n0, n1, Cin, H, W);
        prof_add(PROF_IM2COL, t0);
        for (int e = 0; e < a2; e++)
            dm_gemm(CblasNoTrans, CblasNoTrans, Cout, (int)L.T, Cin, U + (long)e * Cout * Cin,
                    Cin, V + e * L.es_in, (int)L.ld, 0.0f, M + e * L.es_out, (int)L.ld);
        t0 = prof_start();
        par_output(k, out, acc, M, L.es_out, L.ld, N, n0, n1, Cout, H, W);
        prof_add(PROF_IM2COL, t0);
    }
}

void winograd_conv3x3_backward(float *dx, float *dw, const float *dout, const float *in,
                               const float *w, float *scratch, int N, int Cin, int H, int W,
                               int Cout, int m) {
    const wino_row *k = row_of(m);
    const int g = wino_group(N, Cin, Cout, H, W, m), a2 = (m + 2) * (m + 2);
    const long plane = (long)Cout * Cin;
    float *U = scratch, *dU = scratch + a2 * plane; /* dU summed over the groups */
    double t0 = prof_start();
    if (dx) par_weights(k, U, w, Cout, Cin);
    prof_add(PROF_IM2COL, t0);
    for (int n0 = 0; n0 < N; n0 += g) {
        const int n1 = N - n0 < g ? N : n0 + g;
        const group_layout L = layout_of(n1 - n0, Cin, Cout, H, W, m, 2);
        float *V = scratch + L.v_at, *Z = scratch + L.m_at;
        t0 = prof_start();
        par_input(k, V, L.es_in, L.ld, in, N, n0, n1, Cin, H, W);
        par_grad_output(k, Z, L.es_out, L.ld, dout, N, n0, n1, Cout, H, W);
        prof_add(PROF_IM2COL, t0);
        for (int e = 0; e < a2; e++) {
            /* dU[e] (+)= Z[e] (Cout x T) V[e]^T (T x Cin) */
            dm_gemm(CblasNoTrans, CblasTrans, Cout, Cin, (int)L.T, Z + e * L.es_out, (int)L.ld,
                    V + e * L.es_in, (int)L.ld, n0 ? 1.0f : 0.0f, dU + e * plane, Cin);
            /* dV[e] = U[e]^T (Cin x Cout) Z[e] (Cout x T), over V[e], now read */
            if (dx)
                dm_gemm(CblasTrans, CblasNoTrans, Cin, (int)L.T, Cout, U + e * plane, Cin,
                        Z + e * L.es_out, (int)L.ld, 0.0f, V + e * L.es_in, (int)L.ld);
        }
        t0 = prof_start();
        if (dx) par_input_adjoint(k, dx, V, L.es_in, L.ld, N, n0, n1, Cin, H, W);
        prof_add(PROF_IM2COL, t0);
    }
    t0 = prof_start();
    par_weight_grad(k, dw, dU, Cout, Cin);
    prof_add(PROF_IM2COL, t0);
}
