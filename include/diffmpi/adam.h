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

/* The exponential moving average of the weights after optimizer step t
 * (ema_decay > 0), as the diffusers examples' EMAModel keeps it: the decay
 * of step t is min(decay, (1 + t) / (10 + t)), so the first steps weigh
 * in while the average is young; avg -= (1 - d) * (avg - x) in float. */
double ema_decay_at(double decay, long t);
void ema_update(float *avg, const float *x, long n, double d);

#endif
