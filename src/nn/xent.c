/* xent.c: softmax cross-entropy over class logits for one micro-batch, the
 * loss of a classifier (issue 11's judge network). Logits are class-major,
 * [K][N] (the activation layout [C][N][H][W] with a 1x1 plane), so the
 * network's last 1x1 layer writes them without a transpose. */
#include "diffmpi/layers.h"

#include <math.h>

/* logits, dlogits [K][N]; labels [N] in 0..K-1. Returns sum over images of
 * -log softmax(logits)[label] in double; dlogits OVERWRITTEN with the
 * gradient of scale * that sum: scale * (softmax - onehot). *correct (if
 * not NULL) gets the number of images whose largest logit is their label
 * (the first largest on ties). Per image: the largest logit is taken out
 * before exp, the sum of exps is in double. */
double xent_forward_backward(float *dlogits, int *correct, const float *logits,
                             const int32_t *labels, int K, int N, float scale) {
    double loss = 0.0;
    int right = 0;
    for (int n = 0; n < N; n++) {
        int arg = 0;
        float mx = logits[n];
        for (int k = 1; k < K; k++)
            if (logits[(long)k * N + n] > mx) mx = logits[(long)k * N + n], arg = k;
        double z = 0.0;
        for (int k = 0; k < K; k++) z += exp((double)logits[(long)k * N + n] - mx);
        const int y = labels[n];
        loss += log(z) - ((double)logits[(long)y * N + n] - mx);
        for (int k = 0; k < K; k++) {
            double p = exp((double)logits[(long)k * N + n] - mx) / z;
            dlogits[(long)k * N + n] = (float)(scale * (p - (k == y)));
        }
        right += arg == y;
    }
    if (correct) *correct = right;
    return loss;
}
