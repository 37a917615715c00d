/* im2col_impl.h (private to src/nn): the column rows of one channel, for
 * one element type, included by conv2d.c once per type with
 *   IM2COL_T        the element type of both the images and the columns
 *                   (float, or bf16 bits: a copy moves bits unchanged),
 *   IM2COL_NAME(n)  the name of function n for this type.
 * bf16 products get bf16 columns: conv2d.c rounds each channel's planes
 * once into a staging buffer and copies taps from there, so the k*k taps
 * of a pixel cost one rounding, and the copies move half the bytes. */

/* One image's plane of column row (ki, kj) for stride 1 and Wo == W (the
 * 'same' 3x3 convolutions and their input gradients): the row is then the
 * input plane shifted by d = (ki-p)*W + (kj-p), so it is one long copy
 * plus zeroing the padding rows and edge columns, instead of a short copy
 * per output row (faster with AVX-512; with SSE the per-row loop is, so
 * plane_copy_pays picks this only on AVX-512 CPUs). */
DM_PLAIN_LOOPS DM_VECTOR_CLONES
static void IM2COL_NAME(plane_s1)(IM2COL_T *restrict dst, const IM2COL_T *restrict plane,
                                  int H, int W, int ki, int kj, int p, int lo, int hi) {
    const int Ho = H, Wo = W; /* stride 1 and 2p = k-1: the plane keeps its size */
    int rlo = p - ki, rhi = H + p - ki;
    if (rlo < 0) rlo = 0;
    if (rhi > Ho) rhi = Ho;
    if (rhi < rlo) rhi = rlo;
    for (long j = 0; j < (long)rlo * Wo; j++) dst[j] = 0;
    for (long j = (long)rhi * Wo; j < (long)Ho * Wo; j++) dst[j] = 0;
    if (rhi == rlo) return;
    const long d = (long)(ki - p) * W + (kj - p), end = (long)H * W;
    long a = (long)rlo * Wo, b = (long)rhi * Wo;
    /* Indices clipped here lie in the edge columns zeroed below. */
    if (a + d < 0) a = -d;
    if (b + d > end) b = end - d;
    for (long j = a; j < b; j++) dst[j] = plane[j + d];
    if (lo == 0 && hi == Wo) return;
    for (int r = rlo; r < rhi; r++) {
        IM2COL_T *row = dst + (long)r * Wo;
        for (int ow = 0; ow < lo; ow++) row[ow] = 0;
        for (int ow = hi; ow < Wo; ow++) row[ow] = 0;
    }
}

/* The k*k column rows of one channel: planes [g][H][W] of that channel (g
 * images) -> rows [k*k][g*Ho*Wo] (overwritten). */
DM_PLAIN_LOOPS
static void IM2COL_NAME(channel)(IM2COL_T *restrict rows, const IM2COL_T *restrict planes,
                                 int g, int H, int W, int k, int s, int p) {
    const int Ho = conv_out(H, k, s, p), Wo = conv_out(W, k, s, p);
    const long P = (long)g * Ho * Wo;
    for (int ki = 0; ki < k; ki++)
        for (int kj = 0; kj < k; kj++) {
            IM2COL_T *row = rows + ((long)ki * k + kj) * P;
            int lo, hi;
            valid_cols(&lo, &hi, W, Wo, kj, s, p);
            if (s == 1 && Wo == W && Ho == H && plane_copy_pays()) {
                for (int n = 0; n < g; n++)
                    IM2COL_NAME(plane_s1)(row + (long)n * Ho * Wo, planes + (long)n * H * W,
                                          H, W, ki, kj, p, lo, hi);
                continue;
            }
            for (int n = 0; n < g; n++)
                for (int oh = 0; oh < Ho; oh++) {
                    IM2COL_T *restrict dst = row + ((long)n * Ho + oh) * Wo;
                    const int ih = oh * s - p + ki;
                    if (ih < 0 || ih >= H) {
                        for (int ow = 0; ow < Wo; ow++) dst[ow] = 0;
                        continue;
                    }
                    /* src[ow * s + off] is the tap of output column ow. */
                    const IM2COL_T *restrict src = planes + ((long)n * H + ih) * W;
                    const int off = kj - p;
                    for (int ow = 0; ow < lo; ow++) dst[ow] = 0;
                    if (s == 1)
                        for (int ow = lo; ow < hi; ow++) dst[ow] = src[ow + off];
                    else
                        for (int ow = lo; ow < hi; ow++) dst[ow] = src[ow * s + off];
                    for (int ow = hi; ow < Wo; ow++) dst[ow] = 0;
                }
        }
}

#undef IM2COL_T
#undef IM2COL_NAME
