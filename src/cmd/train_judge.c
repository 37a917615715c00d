/* train_judge.c: a run's samples scored by its judge after every sampling
 * epoch (train_judge.h). */
#include "diffmpi/train_judge.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "diffmpi/sampler.h"

/* The judge's samples draw their noise with seed + SCORE_SEED, a stream
 * apart from the figure's 40 (seed). */
#define SCORE_SEED 0x9E3779B97F4A7C15ull

/* judge = PATH: the judge and its reference statistics, the whole MNIST
 * test set (whatever eval_limit says, so that the distance is the one
 * `diffmpi score` reports). */
dm_status train_judge_open(dm_trainer *t) {
    const dm_config *c = &t->cfg;
    dm_status st = judge_open(&t->judge, c->judge, CKPT_WEIGHTS_AUTO);
    if (st != DM_OK) return st;
    /* eval_limit = 0: the run already holds the whole test set. */
    dm_dataset ref = {0}, *all = &t->test;
    if (c->eval_limit != 0) {
        dm_set_quiet(t->rank != 0);
        st = trainer_agree_read(t, data_load(&ref, c->data_dir, "t10k", 0), c->data_dir);
        if (st != DM_OK) return st;
        all = &ref;
    }
    double t0 = dm_now();
    dm_set_quiet(t->rank != 0);
    st = dm_agree(judge_reference(&t->judge, "the MNIST test set", all->images, all->n));
    dm_set_quiet(0);
    if (all == &ref) data_free(&ref);
    if (st == DM_OK && t->rank == 0) {
        printf("judge: %s (crc32 %08x, %d features; reference: %d MNIST test images, "
               "%.1f s); %d samples scored per sampling epoch\n", c->judge,
               (unsigned)t->judge.crc, t->judge.F, t->judge.ref_n, dm_now() - t0, c->score_n);
        fflush(stdout);
    }
    return st;
}

/* judge = PATH: score_n fresh samples (class models: equal runs of each
 * digit), their noise a stream of its own (not the figure's 40), judged;
 * the figures go to the eval row and the progress line. Collective. */
dm_status train_judge_epoch(dm_trainer *t, int epoch, dm_eval_row *row) {
    const dm_config *c = &t->cfg;
    int n = c->score_n, cls = c->conditioning == CONDITIONING_CLASS;
    int32_t *labels = dm_malloc(sizeof(int32_t) * (size_t)n);
    float *img = dm_malloc(sizeof(float) * (size_t)n * DM_PIX);
    for (int i = 0; i < n; i++) labels[i] = cls ? (int32_t)((long)i * 10 / n) : -1;
    char what[96];
    snprintf(what, sizeof what, "epoch %d: sampling %d images for the judge", epoch, n);
    sampler_request q;
    sampler_request_init(&q, c);
    q.n = n;
    q.labels = labels;
    q.seed = c->seed + SCORE_SEED;
    q.progress = what;
    double t0 = dm_now();
    sampler_run(&t->sampler, c, &q, img, NULL, NULL);
    MPI_Bcast(img, n * DM_PIX, MPI_FLOAT, 0, MPI_COMM_WORLD);
    dm_score s;
    snprintf(what, sizeof what, "epoch %d samples", epoch);
    dm_set_quiet(t->rank != 0);
    dm_status st = dm_agree(judge_score(&t->judge, what, img, labels, n, &s));
    dm_set_quiet(0);
    if (st != DM_OK) {
        /* Samples the judge cannot score (a non-finite pixel) say something
         * about the model, not the run: the scores stay NaN, training goes
         * on. */
        if (t->rank == 0)
            dm_error("warning: epoch %d: samples not scored (above); training goes on", epoch);
        row->sample_acc = row->sample_fd = NAN;
        st = DM_OK;
    } else {
        row->sample_acc = t->score_acc = s.acc;
        row->sample_fd = t->score_fd = s.fd;
        if (t->rank == 0) {
            printf("epoch %d/%d samples: ", epoch, c->epochs);
            if (cls) printf("judge accuracy %.4f (confidence %.3f), ", s.acc, s.conf);
            printf("Frechet distance %.3f, digit entropy %.3f, over %d images (%.0f s)\n",
                   s.fd, s.entropy, n, dm_now() - t0);
            fflush(stdout);
        }
    }
    free(labels);
    free(img);
    return st;
}
