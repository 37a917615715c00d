/* layers.h: the network's building blocks as forward/backward pairs over
 * plain float arrays. No layer allocates; every buffer is owned by the caller.
 *
 * Activation layout: channel-major over one micro-batch, [C][N][H][W]
 * ("CNHW"). With this layout a convolution over a whole micro-batch is one
 * GEMM, BatchNorm touches contiguous channel planes, and a channel concat is
 * two adjacent regions of one buffer, so producers write straight into it.
 *
 * Argument order everywhere: outputs, inputs, weights, scratch, dimensions.
 * Weight layouts are PyTorch's: Conv2d [Cout][Cin][k][k], ConvTranspose2d
 * [Cin][Cout][k][k], Linear [out][in].
 *
 * Backward conventions:
 *  - weight/bias gradients (dw, db, dgamma, ...) are OVERWRITTEN: each call
 *    yields the gradient of one micro-batch, a leaf of the reduction tree;
 *  - input gradients (din) are ADDED to, so fan-out (skip connections) needs
 *    only one zeroing per step; din may be NULL when nobody needs it.
 */
#ifndef DIFFMPI_LAYERS_H
#define DIFFMPI_LAYERS_H

#include <stdint.h>

#include "diffmpi/engine.h"

/* The elementwise kernels are compiled three times (AVX-512 as x86-64-v4,
 * i.e. with AVX512BW, whose word operations make float -> bf16 rounding
 * much faster than AVX512F alone; AVX2; plain x86-64) and the loader picks the
 * best the CPU has. The build is ISO C
 * (-std=c11), so GCC contracts no a*b+c into an FMA and every kernel is
 * elementwise or sums in a fixed order: all three give bitwise the same
 * results, and mixed clusters stay reproducible. DM_NO_CLONES builds them
 * once (tools/fuzz.sh: clang's clones do not link under libFuzzer). */
#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) && !defined(DM_NO_CLONES)
#define DM_VECTOR_CLONES __attribute__((target_clones("arch=x86-64-v4", "avx2", "default")))
#else
#define DM_VECTOR_CLONES
#endif

/* ---- Conv2d (kernel k, stride s, padding p), via im2col + sgemm ----------
 * in [Cin][N][H][W], out [Cout][N][Ho][Wo], Ho = (H + 2p - k)/s + 1.
 * col: scratch of conv2d_scratch_floats(...) floats: im2col's
 * [Cin*k*k][N*Ho*Wo] (conv2d_col_floats), and for stride 1 also room for
 * the input gradient as a convolution of dout.
 * b may be NULL (no bias); db may be NULL. */
long conv2d_col_floats(int N, int Cin, int H, int W, int k, int s, int p);
long conv2d_scratch_floats(int N, int Cin, int H, int W, int Cout, int k,
                           int s, int p);
void conv2d_forward(float *out, const float *in, const float *w, const float *b,
                    float *col, int N, int Cin, int H, int W, int Cout, int k,
                    int s, int p);
void conv2d_backward(float *din, float *dw, float *db, const float *dout,
                     const float *in, const float *w, float *col, int N,
                     int Cin, int H, int W, int Cout, int k, int s, int p);

/* ---- 3x3, stride 1, padding 1 convolutions by Winograd F(m x m, 3x3) ----
 * (winograd.c; fp32; tile m = 2 or 4, winograd_tile_ok). out [Cout][N][H][W]
 * = conv(in [Cin][N][H][W], w), overwritten, or ADDED with acc; w is
 * [Cout][Cin][3][3]. The backward of that convolution: dw [Cout][Cin][3][3]
 * OVERWRITTEN with the sum over images and positions of dout x in, and
 * (unless dx is NULL) dx ADDED with the input gradient, both from one
 * transform of dout. scratch: winograd_scratch_floats(N, Cin, Cout, H, W,
 * m, backward) floats, with backward = 0 enough for the forward only. */
int winograd_applies(int k, int s, int p, int W);
int winograd_tile_ok(int m);
long winograd_scratch_floats(int N, int Cin, int Cout, int H, int W, int m, int backward);
void winograd_conv3x3(float *out, int acc, const float *in, const float *w, float *scratch,
                      int N, int Cin, int H, int W, int Cout, int m);
void winograd_conv3x3_backward(float *dx, float *dw, const float *dout, const float *in,
                               const float *w, float *scratch, int N, int Cin, int H, int W,
                               int Cout, int m);

/* im2col / col2im for the CNHW layout: col [Cin*k*k][N*Ho*Wo].
 * col2im ADDS into im. The _part forms cover images [n0, n1) of the N in
 * im, with col [Cin*k*k][(n1-n0)*Ho*Wo]. */
void im2col(float *col, const float *im, int N, int C, int H, int W, int k,
            int s, int p);
void col2im(float *im, const float *col, int N, int C, int H, int W, int k,
            int s, int p);
void im2col_part(float *col, const float *im, int N, int n0, int n1, int C,
                 int H, int W, int k, int s, int p);
/* im2col_part into a column matrix of element type t: float, or bf16 bits
 * (each pixel rounded to nearest even), which bf16 products take as is.
 * bf16 needs stage: im2col_stage_floats(C, n1 - n0, H, W) floats of scratch
 * (every channel's planes of the group, rounded once); NULL for float. The convolutions'
 * scratch sizes include it. */
void im2col_part_typed(void *col, dm_dtype t, unsigned short *stage, const float *im, int N,
                       int n0, int n1, int C, int H, int W, int k, int s, int p);
long im2col_stage_floats(int C, int g, int H, int W);
void col2im_part(float *im, const float *col, int N, int n0, int n1, int C,
                 int H, int W, int k, int s, int p);

/* The convolutions build their column matrices for groups of images of
 * about conv_group_floats floats (default 1 << 20: 4 MiB, cache-sized):
 * conv_group is the number of images per group (at least 1, at most N)
 * when one image's columns take floats_per_image floats. Tests lower
 * conv_group_floats to force one image per group; set it before sizing
 * any scratch. */
extern long conv_group_floats;
/* The bias gradient of both convolution kinds: db[c] = the sum of
 * dout [C][plane] over channel c's plane, in double; db OVERWRITTEN. */
void conv_bias_grad(float *db, const float *dout, int C, long plane);
/* out[c][i] += b[c] over planes of `plane` floats. */
void conv_bias_add(float *out, const float *b, int C, long plane);
/* im2col of 'same' stride-1 convolutions as one shifted plane copy per
 * image: -1 (default) where the CPU has AVX-512, 0 never, 1 always. The
 * results are identical; tests set it to cover both paths. */
extern int im2col_plane_copy;
int conv_group(int N, long floats_per_image);

/* ---- ConvTranspose2d (kernel k, stride s, padding p) ---------------------
 * in [Cin][N][H][W], out [Cout][N][Ho][Wo], Ho = (H-1)*s - 2p + k.
 * w [Cin][Cout][k][k]; col: scratch of convt2d_col_floats floats,
 * [Cout*k*k][g*H*W] for a group of g images (conv_group), then the bf16
 * staging of im2col. */
long convt2d_col_floats(int N, int Cout, int H, int W, int k, int s, int p);
void convt2d_forward(float *out, const float *in, const float *w,
                     const float *b, float *col, int N, int Cin, int H, int W,
                     int Cout, int k, int s, int p);
void convt2d_backward(float *din, float *dw, float *db, const float *dout,
                      const float *in, const float *w, float *col, int N,
                      int Cin, int H, int W, int Cout, int k, int s, int p);

/* ---- BatchNorm2d, split so that statistics can be combined across
 * micro-batches and ranks in a fixed order (see dist.h).
 * x, y, dx, dy: [C][M] with M = N*H*W elements per channel (CNHW). */
/* Per-channel sums of one micro-batch: s1[c] = sum x, s2[c] = sum x^2. */
void bn2d_stats(double *s1, double *s2, const float *x, int C, int M);
/* Turn global sums over count elements into mean and 1/sqrt(var_biased+eps).*/
void bn2d_finish_stats(float *mean, float *invstd, const double *s1,
                       const double *s2, double count, int C, float eps);
/* Running statistics, PyTorch semantics: unbiased variance, momentum. */
void bn2d_update_running(float *run_mean, float *run_var, const double *s1,
                         const double *s2, double count, int C,
                         float momentum);
/* y = gamma * (x - mean) * invstd + beta (train: batch stats; eval: pass
 * running mean and 1/sqrt(running_var + eps)). */
void bn2d_forward(float *y, const float *x, const float *mean,
                  const float *invstd, const float *gamma, const float *beta,
                  int C, int M);
/* Per-channel backward sums of one micro-batch:
 * g1[c] = sum dy, g2[c] = sum dy * xhat, xhat = (x - mean) * invstd.
 * They are also this micro-batch's parameter gradients (OVERWRITTEN):
 * dbeta[c] = g1[c], dgamma[c] = g2[c]; there is no separate kernel. */
void bn2d_backward_stats(double *g1, double *g2, const float *dy,
                         const float *x, const float *mean,
                         const float *invstd, int C, int M);
/* dx (ADDED) = gamma*invstd*(dy - G1/count - xhat*G2/count), with the global
 * sums G1, G2 over count elements. */
void bn2d_backward(float *dx, const float *dy, const float *x,
                   const float *mean, const float *invstd, const float *gamma,
                   const double *G1, const double *G2, double count, int C,
                   int M);

/* ---- BatchNorm2d + GELU fused (bn_gelu.c) --------------------------------
 * The same values as bn2d_forward then gelu_forward, in one pass:
 * a = gelu(bn(x)) OVERWRITTEN. Backward, first half: dz = da * gelu'(bn(x))
 * OVERWRITTEN and this micro-batch's sums g1 = sum dz, g2 = sum dz*xhat
 * OVERWRITTEN (what bn2d_backward_stats gives for dz); the second half is
 * bn2d_backward with the summed G1, G2. */
void bn_gelu_forward(float *a, const float *x, const float *mean,
                     const float *invstd, const float *gamma, const float *beta,
                     int C, int M);
void bn_gelu_backward_stats(float *dz, double *g1, double *g2, const float *da,
                            const float *x, const float *mean,
                            const float *invstd, const float *gamma,
                            const float *beta, int C, int M);

/* ---- GroupNorm + GELU fused (gn_gelu.c) ----------------------------------
 * nn.GroupNorm(G, C) then GELU: statistics per image over each group of C/G
 * channels, so nothing crosses micro-batches. x, a, da, dz, dx [C][N][HW];
 * mean, invstd [N][G]; gamma, beta [C]. gn_stats OVERWRITES mean, invstd;
 * gn_gelu_forward OVERWRITES a = gelu(gn(x)); gn_gelu_backward_stats
 * OVERWRITES dz = da * gelu'(gn(x)) and this micro-batch's parameter
 * gradients g1 = dbeta = sum dz, g2 = dgamma = sum dz*xhat; gn_backward ADDS
 * the input gradient from dz (dx NULL: none). */
void gn_stats(float *mean, float *invstd, const float *x, int C, int N, int HW, int G,
              float eps);
void gn_gelu_forward(float *a, const float *x, const float *mean, const float *invstd,
                     const float *gamma, const float *beta, int C, int N, int HW, int G);
void gn_gelu_backward_stats(float *dz, double *g1, double *g2, const float *da,
                            const float *x, const float *mean, const float *invstd,
                            const float *gamma, const float *beta, int C, int N, int HW,
                            int G);
void gn_backward(float *dx, const float *dz, const float *x, const float *mean,
                 const float *invstd, const float *gamma, int C, int N, int HW, int G);

/* ---- GELU, exact erf form: y = x/2 * (1 + erf(x/sqrt(2))) ---------------- */
void gelu_forward(float *y, const float *x, long n);
/* dx (ADDED) += dy * gelu'(x) */
void gelu_backward(float *dx, const float *dy, const float *x, long n);
/* Phi(x), the standard normal cdf as gelu_forward evaluates it. */
float gelu_cdf(float x);

/* ---- AvgPool over the full HxW plane (AvgPool2d(7) on 7x7) ---------------
 * in [C][N][HW], out [C][N] */
void avgpool_forward(float *out, const float *in, int C, int N, int HW);
void avgpool_backward(float *din, const float *dout, int C, int N, int HW);

/* ---- Linear: out[N][Fout] = in[N][Fin] * w[Fout][Fin]^T + b[Fout] --------
 * (not "I"/"O": <complex.h>, pulled in by OpenBLAS's cblas.h, defines I). */
void linear_forward(float *out, const float *in, const float *w,
                    const float *b, int N, int Fin, int Fout);
void linear_backward(float *din, float *dw, float *db, const float *dout,
                     const float *in, const float *w, int N, int Fin, int Fout);

/* ---- MSE against a target, for one micro-batch of n elements -------------
 * Returns sum (y - t)^2 in double; dy[i] = 2 (y - t) * scale (OVERWRITTEN),
 * where scale = 1 / (elements in the whole global batch). */
double mse_forward_backward(float *dy, const float *y, const float *t, long n,
                            float scale);

/* ---- Softmax cross-entropy over class logits (xent.c) ---------------------
 * logits, dlogits [K][N] (class-major, like the activations); target [N][K]
 * class probabilities (one-hot for labels). Returns sum over images of
 * -sum_k target_k log softmax_k in double (PyTorch's CrossEntropyLoss times
 * N); dlogits = scale * (softmax * sum_k target_k - target) OVERWRITTEN;
 * *correct (or NULL) = images whose first largest logit is at their first
 * largest target. */
double xent_forward_backward(float *dlogits, int *correct, const float *logits,
                             const float *target, int K, int N, float scale);

/* ---- PyTorch default initialisation --------------------------------------
 * kaiming_uniform(a=sqrt(5)) => U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight
 * and bias alike. fan_in: Conv2d Cin*k*k; ConvTranspose2d: PyTorch computes it
 * from weight.size(1)*k*k = Cout*k*k; Linear: in. */
struct dm_rng;
void init_uniform(float *w, long n, float bound, struct dm_rng *rng);

#endif
