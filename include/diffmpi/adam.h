/* adam.h: Adam with PyTorch's semantics (torch.optim.Adam, no weight decay,
 * not amsgrad), over the flat parameter array.
 *
 *   adam_step(p, g, m, v, n, lr, t);   // t: step count after this update
 *
 * m += (1-b1)*(g-m); v = b2*v + (1-b2)*g^2;
 * p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps)
 * with b1 0.9, b2 0.999, eps 1e-8; the bias corrections are computed in
 * double as Python does, the update in float as PyTorch's float tensors.
 */
#ifndef DIFFMPI_ADAM_H
#define DIFFMPI_ADAM_H

#define ADAM_BETA1 0.9
#define ADAM_BETA2 0.999
#define ADAM_EPS 1e-8

void adam_step(float *p, const float *g, float *m, float *v, long n, double lr,
               long t);

#endif
