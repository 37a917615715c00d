/* pool.c: average pooling over the whole H x W plane (the UNet's
 * AvgPool2d(7) on 7 x 7 maps), in CNHW layout. */
#include "diffmpi/layers.h"

/* in [C][N][HW] -> out [C][N] (overwritten): the mean of each plane. */
void avgpool_forward(float *out, const float *in, int C, int N, int HW) {
    for (long j = 0; j < (long)C * N; j++) {
        double acc = 0.0;
        for (int i = 0; i < HW; i++) acc += in[j * HW + i];
        out[j] = (float)(acc / HW);
    }
}

/* dout [C][N] -> din [C][N][HW], ADDED (NULL: nothing to do). */
void avgpool_backward(float *din, const float *dout, int C, int N, int HW) {
    if (!din) return;
    for (long j = 0; j < (long)C * N; j++) {
        const float g = dout[j] / (float)HW;
        for (int i = 0; i < HW; i++) din[j * HW + i] += g;
    }
}
