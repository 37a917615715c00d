/* sample_cmd.h: `diffmpi sample`, drawing images from a diffusion
 * checkpoint under mpirun (see sampler.h for the distribution), and
 * `diffmpi invert`, the way back from images to their noise. */
#ifndef DIFFMPI_SAMPLE_CMD_H
#define DIFFMPI_SAMPLE_CMD_H

#include <stdint.h>

#define SAMPLE_DEFAULT_N 40    /* --n when neither it nor --noise is given */
#define SAMPLE_CLASS_NONE (-2) /* not given: as --class all */
#define SAMPLE_CLASS_ALL (-1)  /* --class all: image i of N gets digit
                                  i*10/N (4 of each digit for N = 40) */

typedef struct {
    const char *checkpoint, *out;
    int n;                  /* --n, 0: --noise's N, else SAMPLE_DEFAULT_N */
    int class_label;        /* --class K (0..9), all, or not given */
    double guidance;        /* --guidance, < 0: the checkpoint's */
    int sampler;            /* --sampler: a dm_sampler, < 0: the run's */
    int steps;              /* --steps, 0: the run's sample_steps */
    double eta;             /* --eta, < 0: the run's sample_eta */
    int spacing;            /* --spacing: a dm_spacing, < 0: the run's */
    const char *noise;      /* --noise FILE: /noise [N,1,28,28] to start from */
    int invert;             /* diffmpi invert: images to their noise */
    const char *input;      /* invert --input FILE: /images [N,28,28] */
    uint64_t seed;          /* --seed */
    int has_seed;
    int trajectory;         /* --trajectory: keep every step's frame, up to 101 */
    int precision;          /* --precision: dm_precision, < 0: the run's */
    int weights;            /* --weights: a ckpt_weights (auto) */
    int used_ema;           /* set by sample_run: the average was used */
    double log_every;       /* --log-every: seconds between progress lines,
                               < 0: the run's log_every */
} sample_args;

/* `sample`, or with a->invert `invert` (the sampler run backwards from
 * --input's images, writing /noise). Returns the exit code; collective. */
int sample_run(sample_args *a);

#endif
