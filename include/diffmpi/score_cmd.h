/* score_cmd.h: `diffmpi score`, the judge's figures for a samples file
 * (see score.h), under mpirun like `sample`. */
#ifndef DIFFMPI_SCORE_CMD_H
#define DIFFMPI_SCORE_CMD_H

typedef struct {
    const char *judge;      /* --judge: a checkpoint of objective = classify */
    const char *samples;    /* --samples: /images [N,28,28] (+ /labels [N]) or a
                               run's samples.h5 (/samples/epoch_NNNN groups) */
    const char *out;        /* --out SCORE.h5, or NULL */
    const char *ref;        /* --ref: reference /images instead of MNIST test */
    const char *data;       /* --data: MNIST directory (default: the judge's) */
    int features;           /* --features: SCORE.h5 also gets the judge's
                               features and logits of every image */
    int epoch;              /* --epoch: one epoch of a run's samples (0: all) */
    int precision;          /* --precision: dm_precision, < 0: the judge's */
    int weights;            /* --weights: the judge's, a ckpt_weights */
} score_args;

/* Returns the exit code; collective. */
int score_run(const score_args *a);

#endif
