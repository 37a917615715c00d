/* bench.c: `diffmpi bench` (see bench.h): the trainer of train.h on
 * synthetic data, timed per phase against a GEMM peak measured in the same
 * run on the run's engine and precision. */
#include "diffmpi/bench.h"

#include <cblas.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "diffmpi/autotune.h"
#include "diffmpi/gemm.h"
#include "diffmpi/layers.h"
#include "diffmpi/prof.h"
#include "diffmpi/sampler.h"
#include "diffmpi/samples.h"
#include "diffmpi/train.h"

/* Every rank runs the same conv-shaped product for `secs` at the same time,
 * on the run's engine and precision (dm_gemm): the machine's own peak for
 * this job's ranks x threads. Returns this rank's GFLOP/s. */
static double gemm_rate(int M, int N, int K, double secs) {
    /* B in the type the convolutions build their columns in (bf16 in bf16
     * precision), so that the peak does not include rounding a column
     * matrix that no convolution rounds. */
    const dm_dtype bt = gemm_operand_type();
    float *a = dm_calloc((size_t)M * K, sizeof(float)), *b = dm_calloc((size_t)K * N, sizeof(float));
    float *c = dm_calloc((size_t)M * N, sizeof(float));
    for (long i = 0; i < (long)M * K; i++) a[i] = (float)(i % 7) * 0.01f;
    for (long i = 0; i < (long)K * N; i++) b[i] = (float)(i % 5) * 0.01f;
    unsigned short *b16 = NULL;
    if (bt == DM_T_BF16) {
        b16 = dm_malloc(sizeof *b16 * (size_t)K * N);
        dm_round_bf16(b16, b, (long)K * N);
    }
    const void *B = bt == DM_T_BF16 ? (const void *)b16 : (const void *)b;
    /* A [M x K] times B [K x N] into C [M x N], no transposes: the shape of
     * a convolution's forward GEMM (weights x im2col columns). */
    dm_gemm_typed(CblasNoTrans, CblasNoTrans, M, N, K, a, DM_T_F32, K, B, bt, N, 0.0f, c, N);
    MPI_Barrier(MPI_COMM_WORLD);
    double t0 = dm_now(), t;
    long calls = 0;
    do {
        dm_gemm_typed(CblasNoTrans, CblasNoTrans, M, N, K, a, DM_T_F32, K, B, bt, N, 0.0f, c, N);
        calls++;
    } while ((t = dm_now() - t0) < secs);
    free(a), free(b), free(c), free(b16);
    return 2.0 * M * (double)N * K * calls / t / 1e9;
}

static void cpu_name(char *buf, size_t size) {
    FILE *f = fopen("/proc/cpuinfo", "r");
    char line[512];
    snprintf(buf, size, "unknown CPU");
    while (f && fgets(line, sizeof line, f)) {
        char *p = strchr(line, ':');
        if (strncmp(line, "model name", 10) == 0 && p) {
            p += 2;
            p[strcspn(p, "\n")] = '\0';
            snprintf(buf, size, "%s", p);
            break;
        }
    }
    if (f) fclose(f);
}

static void bench_layers(const unet *u, double images) {
    printf("per-layer analytic FLOP per image (forward / backward, GFLOP):\n");
    for (int i = 0; i < u->nunits; i++) {
        double f, b;
        unet_unit_flops(u, i, &f, &b);
        if (f > 0) printf("  %-10s %8.4f / %8.4f\n", u->units[i].name, f / 1e9, b / 1e9);
    }
    double f, b;
    unet_fc_flops(u, &f, &b);
    if (f > 0) printf("  %-10s %8.4f / %8.4f\n", "FCBlocks", f / 1e9, b / 1e9);
    printf("  total      %8.4f / %8.4f  (x %.0f images)\n", unet_forward_flops(u) / 1e9,
           (unet_train_flops(u) - unet_forward_flops(u)) / 1e9, images);
}

/* Timed training steps (or sampler steps): wall seconds, or -1 when a
 * training step failed (its message is printed; every rank agrees). */
static double bench_timed(dm_trainer *t, int steps, int sample, int profiled) {
    const dm_config *c = &t->cfg;
    double loss;
    int B;
    int32_t labels[SAMPLES_N];
    for (int i = 0; i < SAMPLES_N; i++)
        labels[i] = c->conditioning == CONDITIONING_CLASS ? i / 4 : -1;
    sampler_request q;
    sampler_request_init(&q, c);
    q.n = SAMPLES_N;
    q.labels = labels;
    q.steps = steps;
    float *img = dm_calloc((size_t)SAMPLES_N * DM_PIX, sizeof(float));
    MPI_Barrier(MPI_COMM_WORLD);
    prof_reset();
    dm_dist *d = &t->dist;
    dist_zero_counters(d);
    prof_enable(profiled);
    double t0 = dm_now();
    if (sample) {
        sampler_run(&t->sampler, c, &q, img, NULL, NULL);
    } else {
        for (int s = 0; s < steps; s++) {
            if (t->st.batch_in_epoch == t->steps_per_epoch) t->st.batch_in_epoch = 0;
            if (trainer_step(t, &loss, &B) != DM_OK) {
                prof_enable(0);
                free(img);
                return -1;
            }
        }
    }
    MPI_Barrier(MPI_COMM_WORLD);
    double secs = dm_now() - t0;
    prof_enable(0);
    free(img);
    return secs;
}

static void bench_report(const dm_trainer *t, int steps, int sample, double secs,
                         double psecs, double peak_rank, double peak_sum) {
    const dm_config *c = &t->cfg;
    double ph[PROF_NPHASES], avg[PROF_NPHASES];
    MPI_Reduce(prof_total, ph, PROF_NPHASES, MPI_DOUBLE, MPI_SUM, 0, MPI_COMM_WORLD);
    double mine = dm_peak_rss_mib(), mem = 0;
    MPI_Reduce(&mine, &mem, 1, MPI_DOUBLE, MPI_MAX, 0, MPI_COMM_WORLD);
    const dm_dist *d = &t->dist;
    /* segments sent early and late, between nodes (level 1) and within */
    const dist_level *l1 = &d->lv[1], *l0 = &d->lv[0];
    long sent[4] = {l1->sent_early, l1->sent_late, l0->sent_early, l0->sent_late};
    long sent_all[4] = {0, 0, 0, 0};
    MPI_Reduce(sent, sent_all, 4, MPI_LONG, MPI_SUM, 0, MPI_COMM_WORLD);
    /* rank 0's traffic per step; the gradient's is the largest rank's */
    long tr[6] = {l1->n_msgs, l1->msg_floats, l1->allgather_floats,
                  l0->n_msgs, l0->msg_floats, l0->allgather_floats};
    long tr_max[6] = {0, 0, 0, 0, 0, 0};
    MPI_Reduce(tr, tr_max, 6, MPI_LONG, MPI_MAX, 0, MPI_COMM_WORLD);
    if (t->rank != 0) return;
    int rows = sample && c->conditioning == CONDITIONING_CLASS && c->guidance != 1.0 ? 2 : 1;
    sampler_request q;
    sampler_request_init(&q, c);
    int evals = sample ? solver_evals(q.sampler, steps) : 0;
    double work = sample ? (double)evals * SAMPLES_N * rows * unet_forward_flops(&t->net)
                         : (double)steps * c->batch * unet_train_flops(&t->net);
    double gflops = work / secs / 1e9;
    /* At least four significant digits, so that the rate can be checked
     * against the time printed beside it even for tiny runs. */
    int dec = secs >= 1.0 ? 3 : 5;
    if (sample) {
        printf("sampling: %d steps of %d images%s in %.*f s: %.1f image-steps/s\n", steps,
               SAMPLES_N, rows == 2 ? " (x2 for guidance)" : "", dec, secs,
               steps * SAMPLES_N / secs);
        printf("  sampler %s: %d network evaluations per image\n", solver_get(q.sampler)->name,
               evals);
        int full = solver_evals(q.sampler, q.steps);
        printf("  projected: %d images with %d steps in %.1f s\n", SAMPLES_N, q.steps,
               secs / evals * full);
    } else {
        printf("training: %d steps of %d images in %.*f s: %.2f images/s\n", steps, c->batch,
               dec, secs, steps * (double)c->batch / secs);
    }
    printf("  %.1f GFLOP/s (analytic GEMM FLOPs), %.1f %% of the measured GEMM peak "
           "(%.1f GFLOP/s = %d rank(s) x %.1f)\n",
           gflops, 100.0 * gflops / peak_sum, peak_sum, t->size, peak_rank);
    double acc = 0;
    if (psecs != secs)
        printf("  time per phase (average over ranks, %% of the wall time of %d more steps, "
               "%.*f s, timed again with a barrier before each collective to tell\n"
               "  waiting from communication):\n", steps, dec, psecs);
    else
        printf("  time per phase (average over ranks, %% of wall time):\n");
    for (int p = 0; p < PROF_NPHASES; p++) {
        avg[p] = ph[p] / t->size;
        acc += avg[p];
        printf("    %-22s %8.3f s  %5.1f %%\n", prof_name((prof_phase)p), avg[p],
               100.0 * avg[p] / psecs);
    }
    printf("    %-22s %8.3f s  %5.1f %%\n", "other (unaccounted)", psecs - acc,
           100.0 * (psecs - acc) / psecs);
    if (!sample && t->size > 1) {
        /* for tools/scaling.py: what one step moves over the network */
        double ps = steps > 0 ? steps : 1;
        printf("  traffic per step: %.1f gathers of %.0f bytes (BatchNorm sums, losses); "
               "gradient between nodes: %.1f messages, %.0f bytes sent, %.0f bytes "
               "allgathered (largest rank); within nodes: %.1f messages, %.0f bytes sent, "
               "%.0f bytes allgathered (largest rank); %ld parameters; %d node(s) x %d "
               "rank(s)\n",
               d->n_small / ps, d->n_small ? 8.0 * d->small_doubles / d->n_small : 0.0,
               tr_max[0] / ps, 4.0 * tr_max[1] / ps, 4.0 * tr_max[2] / ps, tr_max[3] / ps,
               4.0 * tr_max[4] / ps, 4.0 * tr_max[5] / ps, d->nparams, d->nodes,
               d->node_ranks);
        printf("  gradient segments sent while backward ran: between nodes %ld of %ld; "
               "within nodes %ld of %ld\n", sent_all[0], sent_all[0] + sent_all[1],
               sent_all[2], sent_all[2] + sent_all[3]);
    }
    printf("  peak memory per rank: %.0f MiB (largest rank)\n", mem);
}

int bench_run(const dm_config *cfg, int steps, int sample, int verbose) {
    dm_trainer t;
    dm_status st = trainer_setup(&t, cfg, NULL, NULL);
    if (st == DM_OK && sample && !objective_get(cfg->objective)->diffusion) {
        if (t.rank == 0) dm_error("--sample needs a diffusion model (objective ddpm or flow)");
        st = DM_EUSAGE;
    }
    dm_config timed = *cfg; /* --steps N sampler steps are what is timed */
    timed.sample_steps = steps;
    const char *why = st == DM_OK && sample ? config_sampler_problem(&timed) : NULL;
    if (why) {
        if (t.rank == 0) dm_error("--sample --steps %d: %s", steps, why);
        st = DM_EUSAGE;
    }
    if (st != DM_OK) {
        trainer_teardown(&t);
        return dm_exit_code(st);
    }
    if (sample) trainer_sync_sampler(&t);
    if (t.rank == 0) {
        char cpu[256];
        cpu_name(cpu, sizeof cpu);
        printf("diffmpi bench: %d rank(s) x %d thread(s); %s\n", t.size, cfg->threads, cpu);
        printf("OpenBLAS %s, core %s\n", openblas_get_config(), openblas_get_corename());
        autotune_print(&t.cfg, t.auto_note, t.conv_note);
        printf("model: objective=%s conditioning=%s D=%d, batch %d, micro_batch %d; "
               "%.3f GFLOP per training image\n",
               config_objective_name(cfg->objective),
               config_conditioning_name(cfg->conditioning), cfg->hidden, cfg->batch,
               cfg->micro_batch, unet_train_flops(&t.net) / 1e9);
        if (verbose) bench_layers(&t.net, 1);
        fflush(stdout);
    }
    /* The peak: the network's most common GEMM, a 3x3 conv D -> D at 28x28,
     * over the image group the convolutions use (conv_group), whose column
     * matrix stays in cache: the best shape the step has. */
    int D = cfg->hidden, m = cfg->micro_batch;
    int group = conv_group(m, 9L * D * DM_PIX);
    double rate = gemm_rate(D, group * DM_PIX, 9 * D, 1.5), sum = 0;
    MPI_Allreduce(&rate, &sum, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
    double per = sum / t.size;
    /* A warm-up, then the timed steps. With several ranks, the phases come
     * from as many steps again, timed with a barrier before each
     * collective (prof.h), which the headline figure must not pay. */
    double secs = bench_timed(&t, sample ? 1 : 2, sample, 0), psecs = 0;
    if (secs >= 0) secs = bench_timed(&t, steps, sample, t.size == 1);
    if (secs >= 0) psecs = t.size == 1 ? secs : bench_timed(&t, steps, sample, 1);
    if (secs < 0 || psecs < 0) {
        trainer_teardown(&t);
        return DM_EXIT_RUNTIME;
    }
    bench_report(&t, steps, sample, secs, psecs, per, sum);
    trainer_teardown(&t);
    return DM_EXIT_OK;
}
