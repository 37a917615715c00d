/* xent.c: softmax cross-entropy over class logits for one micro-batch, the
 * loss of a classifier (objective = classify, the judge of `diffmpi score`).
 * Logits are class-major, [K][N] (the activation layout [C][N][H][W] with a
 * 1x1 plane), so the network's last 1x1 layer writes them without a
 * transpose; targets are class probabilities per image, [N][K] (one-hot for
 * a label), as PyTorch's CrossEntropyLoss takes them. */
#include "diffmpi/layers.h"

#include <math.h>

/* Per image: the largest logit is taken out before exp and the sum of exps
 * is in double, so logits far above exp's float range are fine. */
double xent_forward_backward(float *dlogits, int *correct, const float *logits,
                             const float *target, int K, int N, float scale) {
    double loss = 0.0;
    int right = 0;
    for (int n = 0; n < N; n++) {
        const float *tn = target + (long)n * K;
        int arg = 0, want = 0;
        float mx = logits[n];
        for (int k = 1; k < K; k++) {
            if (logits[(long)k * N + n] > mx) mx = logits[(long)k * N + n], arg = k;
            if (tn[k] > tn[want]) want = k;
        }
        double z = 0.0, tsum = 0.0, tl = 0.0;
        for (int k = 0; k < K; k++) {
            double l = (double)logits[(long)k * N + n] - mx;
            z += exp(l);
            tsum += tn[k];
            tl += tn[k] * l;
        }
        double lz = log(z);
        loss += tsum * lz - tl;
        for (int k = 0; k < K; k++) {
            double p = exp((double)logits[(long)k * N + n] - mx - lz);
            dlogits[(long)k * N + n] = (float)(scale * (p * tsum - tn[k]));
        }
        right += arg == want;
    }
    if (correct) *correct = right;
    return loss;
}
