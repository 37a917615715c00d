/* score.h: sample quality as numbers, measured by a judge - a classifier
 * trained by diffmpi itself (objective = classify, jobs/configs/judge.ini).
 *
 * For a set of images the judge gives
 *   accuracy    the share of class-conditioned images it assigns to their
 *               intended digit (overall and per digit), and its mean
 *               confidence (softmax probability of the intended digit);
 *   coverage    the histogram of predicted digits over all images and its
 *               entropy (natural log; log 10 = 2.3026 when even);
 *   Frechet distance between the Gaussian fits of the judge's pooled
 *               features (its penultimate layer, 2D values per image) of
 *               the images and of a reference set (the MNIST test set):
 *               |mu1 - mu2|^2 + tr C1 + tr C2 - 2 tr (C1^1/2 C2 C1^1/2)^1/2,
 *               covariances with 1/(n-1). An FID on this judge's features,
 *               not Inception's: comparable only between scores made with
 *               the same judge (the CRC-32 of its weights is reported
 *               with every score).
 * The matrix square roots come from symmetric eigendecompositions
 * (LAPACK's dsyev, which Debian's OpenBLAS carries); negative eigenvalues
 * of rounding are clamped to 0.
 *
 * Images are cut into chunks of the judge's micro-batch, chunk boundaries
 * fixed by the image index; every rank classifies its chunks and the
 * results are gathered, so every figure is the same for any rank count and
 * the same on every rank.
 *
 *   dm_judge j;
 *   judge_open(&j, "runs/judge/checkpoints/ckpt-1407.h5", 0);   // collective
 *   judge_reference(&j, "MNIST test", test.images, test.n);  // collective
 *   dm_score s;
 *   judge_score(&j, "samples.h5", images, labels, n, &s);    // collective
 *   judge_close(&j);
 */
#ifndef DIFFMPI_SCORE_H
#define DIFFMPI_SCORE_H

#include <stdint.h>
#include "diffmpi/common.h"
#include "diffmpi/config.h"
#include "diffmpi/engine.h"
#include "diffmpi/unet.h"

typedef struct {
    unet net;            /* the judge, evaluation mode */
    dm_config cfg;       /* its training configuration */
    char path[4096];
    uint32_t crc;        /* zlib CRC-32 of the weights and statistics loaded
                            (the same judge gives the same CRC in any file) */
    int F, K;            /* feature width (2D) and classes */
    int ema;             /* the judge's weight average is in use */
    dm_precision prec;   /* of the judge's convolutions: fp32 (judge_open),
                            whatever the run around it uses */
    int ref_n;           /* reference images (0: none yet) */
    double *ref_mu;      /* [F] */
    double *ref_cov;     /* [F][F] */
    float *feats;        /* [cap][F] and [cap][K] of the last images scored */
    float *logits;
    int cap;
} dm_judge;

typedef struct {
    int n;               /* images scored */
    int conditioned;     /* of which with an intended digit (label >= 0) */
    double acc, conf;    /* over the conditioned images (NaN: none) */
    double acc_digit[10];
    int n_digit[10];
    double hist[10];     /* share of all images predicted as each digit */
    double entropy;      /* of hist, natural log */
    double fd;           /* Frechet distance to the reference */
    int ref_n;
} dm_score;

/* Load a judge (a checkpoint of objective = classify) on every rank, its
 * weights as ckpt_read_weights's `weights` (a ckpt_weights) says. Not a
 * classifier: DM_EUSAGE; unreadable or damaged: DM_EIO; one line each.
 * Collective; the status is the same on every rank. */
dm_status judge_open(dm_judge *j, const char *path, int weights);
/* Feature statistics of the n reference images [n][784] (n >= 2, every
 * pixel finite; else one line naming `what` and DM_EUSAGE or DM_EIO). */
dm_status judge_reference(dm_judge *j, const char *what, const float *images, int n);
/* Score n images [n][784] (the same conditions; labels [n] with -1 = no
 * intended digit, or NULL). Needs judge_reference first. */
dm_status judge_score(dm_judge *j, const char *what, const float *images,
                      const int32_t *labels, int n, dm_score *s);
void judge_close(dm_judge *j);

/* The judge's logits [n][K] and features [n][F] of n images, on every
 * rank (collective). The buffers are the judge's, valid until the next
 * call. */
void judge_features(dm_judge *j, const float *images, int n, const float **logits,
                    const float **feats);

/* mu [F] and covariance cov [F][F] (1/(n-1)) of n rows x [n][F], in
 * double, in a fixed order. */
void feature_stats(const float *x, int n, int F, double *mu, double *cov);
/* Frechet distance between N(mu1, c1) and N(mu2, c2), F-dimensional.
 * Returns NaN if LAPACK fails. */
double frechet_distance(const double *mu1, const double *c1, const double *mu2,
                        const double *c2, int F);

/* Index of the first non-finite value of x [n], or -1. */
long first_nonfinite(const float *x, long n);

#endif
