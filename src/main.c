/* main.c: the diffmpi command line. Every rank parses the same arguments and
 * so fails together; only rank 0 prints usage errors. */
#include <errno.h>
#include <hdf5.h>
#include <limits.h>
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "diffmpi/common.h"
#include "diffmpi/config.h"
#include "diffmpi/inspect.h"
#include "diffmpi/sample_cmd.h"
#include "diffmpi/train.h"

static const char *usage_main =
    "usage: diffmpi COMMAND [OPTIONS]   (run under mpirun for several ranks)\n"
    "\n"
    "commands:\n"
    "  train     train a model (diffmpi train --help)\n"
    "  predict   run a checkpoint's network on images from an HDF5 file\n"
    "  sample    draw images from a diffusion checkpoint (DDPM or flow)\n"
    "  bench     measure training or sampling speed against the sgemm peak\n"
    "  inspect   show what a checkpoint, log or samples file holds\n"
    "\n"
    "exit codes: 0 success, 1 runtime failure, 2 usage error,\n"
    "            3 stopped by SIGTERM/SIGUSR1 after writing a checkpoint\n";

static const char *usage_train =
    "usage: diffmpi train --out DIR [--config FILE] [--set KEY=VALUE]...\n"
    "                     [--resume PATH|auto]\n"
    "\n"
    "  --config FILE     INI file of settings (see jobs/configs/)\n"
    "  --set KEY=VALUE   override one setting; repeatable, applied after --config\n"
    "  --out DIR         output directory: checkpoints/, log.h5, samples.h5, PNGs\n"
    "  --resume PATH     continue from a checkpoint file; 'auto' picks the newest\n"
    "                    complete checkpoint in DIR/checkpoints\n"
    "\n"
    "keys: objective (denoise|pure_noise), conditioning (none), hidden, epochs,\n"
    "      batch, micro_batch, lr, lr_decay (none|exp), sigma, seed, data_dir,\n"
    "      train_limit, eval_limit, checkpoint_every, keep, threads,\n"
    "      bn_sync (global|rank),\n"
    "      log_every, p_uncond.  See README.md for meanings and defaults.\n"
    "SIGTERM or SIGUSR1: finish the step, checkpoint, exit with code 3.\n";

static const char *usage_predict =
    "usage: diffmpi predict --checkpoint FILE --input IN.h5 --output OUT.h5\n"
    "\n"
    "  IN.h5 holds /x [N,1,28,28] float32; OUT.h5 receives /y [N,1,28,28],\n"
    "  the network's output in evaluation mode (BatchNorm running statistics).\n";

static const char *usage_sample =
    "usage: diffmpi sample --checkpoint FILE --out OUT.h5 [--n N] [--class K|all]\n"
    "                      [--guidance G] [--steps S] [--seed S] [--trajectory]\n"
    "\n"
    "  --n N          images to draw (default 40)\n"
    "  --class K|all  class models: digit K for every image, or 'all' (equal\n"
    "                 runs of each digit, 4 of each for 40 images; the default)\n"
    "  --guidance G   classifier-free guidance scale (default: the run's, 5)\n"
    "  --steps S      sampler steps (default: 300 DDPM, 50 flow with time,\n"
    "                 300 flow with class, or the run's sample_steps)\n"
    "  --seed S       noise seed (default: the run's seed)\n"
    "  --trajectory   also store intermediate images (/trajectory [F,N,28,28])\n"
    "OUT.h5 gets /images [N,28,28] and /labels [N]; OUT.h5.png a grid. Under\n"
    "mpirun the images are spread over the ranks; the result does not depend\n"
    "on their number.\n";

static const char *usage_bench =
    "usage: diffmpi bench [--config FILE] [--set KEY=VALUE]... [--steps N]\n"
    "                     [--sample] [--verbose]\n"
    "\n"
    "  Measures the configured model on synthetic data (no files written):\n"
    "  every rank first runs a conv-shaped sgemm at the same time (the\n"
    "  machine's own peak), then a warm-up and N timed training steps\n"
    "  (default 5), or with --sample N sampler steps of 40 images. Rank 0\n"
    "  prints images/s, GFLOP/s (analytic GEMM FLOPs), the share of the peak,\n"
    "  the time per phase and the peak memory per rank; --verbose adds the\n"
    "  FLOP count per layer. Run it under mpirun like train.\n";

static const char *usage_inspect =
    "usage: diffmpi inspect FILE\n"
    "\n"
    "  Prints what a diffmpi checkpoint, log.h5 or samples.h5 holds (or, for\n"
    "  any other HDF5 file, its datasets and shapes).\n";

static int rank0(void) {
    int r = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &r);
    return r == 0;
}

static int usage_error(const char *usage, const char *fmt, const char *arg) {
    if (rank0()) {
        char msg[512];
        snprintf(msg, sizeof msg, fmt, arg);
        dm_error("%s (see --help)", msg);
        (void)usage;
    }
    return DM_EXIT_USAGE;
}

static int wants_help(int argc, char **argv) {
    for (int i = 0; i < argc; i++)
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) return 1;
    return 0;
}

/* Value of option argv[*i]; NULL (and an error) when it is missing. */
static const char *value(int argc, char **argv, int *i) {
    if (*i + 1 >= argc) return NULL;
    return argv[++*i];
}

/* --config FILE, then every --set in command-line order, then the
 * cross-key checks. A --config file that cannot be read is a usage error. */
static dm_status load_config(int argc, char **argv, const char *cfg, dm_config *c) {
    dm_status st = cfg ? config_load_file(c, cfg) : DM_OK;
    for (int i = 0; st == DM_OK && i + 1 < argc; i++)
        if (strcmp(argv[i], "--set") == 0) st = config_set(c, argv[++i]);
    if (st == DM_OK) st = config_validate(c);
    return st;
}

/* Strict integer parsing for command-line values. */
static int parse_long(const char *s, long lo, long hi, long *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) return 0;
    *out = v;
    return 1;
}

static int cmd_train(int argc, char **argv) {
    if (wants_help(argc, argv)) {
        if (rank0()) fputs(usage_train, stdout);
        return DM_EXIT_OK;
    }
    dm_config c;
    config_defaults(&c);
    const char *out = NULL, *resume = NULL, *cfg = NULL;
    /* Two passes: --config first, then --set in command-line order. */
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *v;
        if (strcmp(a, "--config") == 0 || strcmp(a, "--out") == 0 ||
            strcmp(a, "--resume") == 0 || strcmp(a, "--set") == 0) {
            if (!(v = value(argc, argv, &i)) || !*v)
                return usage_error(usage_train, "option %s needs a value", a);
            if (strcmp(a, "--config") == 0) cfg = v;
            else if (strcmp(a, "--out") == 0) out = v;
            else if (strcmp(a, "--resume") == 0) resume = v;
        } else {
            return usage_error(usage_train, "train: unknown argument '%s'", a);
        }
    }
    if (!out) return usage_error(usage_train, "train: --out DIR is required%s", "");
    if (load_config(argc, argv, cfg, &c) != DM_OK) return DM_EXIT_USAGE;
    dm_set_quiet(0);
    return train_run(&c, out, resume);
}

static int cmd_bench(int argc, char **argv) {
    if (wants_help(argc, argv)) {
        if (rank0()) fputs(usage_bench, stdout);
        return DM_EXIT_OK;
    }
    dm_config c;
    config_defaults(&c);
    const char *cfg = NULL;
    int sample = 0, verbose = 0;
    long steps = 5;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *v;
        if (strcmp(a, "--sample") == 0) {
            sample = 1;
        } else if (strcmp(a, "--verbose") == 0) {
            verbose = 1;
        } else if (strcmp(a, "--config") == 0 || strcmp(a, "--set") == 0 ||
                   strcmp(a, "--steps") == 0) {
            if (!(v = value(argc, argv, &i)) || !*v)
                return usage_error(usage_bench, "option %s needs a value", a);
            if (strcmp(a, "--config") == 0) cfg = v;
            if (strcmp(a, "--steps") == 0 && !parse_long(v, 1, 1000000, &steps))
                return usage_error(usage_bench, "--steps: expected an integer >= 1, got '%s'", v);
        } else {
            return usage_error(usage_bench, "bench: unknown argument '%s'", a);
        }
    }
    if (load_config(argc, argv, cfg, &c) != DM_OK) return DM_EXIT_USAGE;
    dm_set_quiet(0);
    return bench_run(&c, (int)steps, sample, verbose);
}

static int cmd_predict(int argc, char **argv) {
    if (wants_help(argc, argv)) {
        if (rank0()) fputs(usage_predict, stdout);
        return DM_EXIT_OK;
    }
    const char *ck = NULL, *in = NULL, *out = NULL;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *v;
        const char **dst = strcmp(a, "--checkpoint") == 0 ? &ck
                           : strcmp(a, "--input") == 0    ? &in
                           : strcmp(a, "--output") == 0   ? &out
                                                          : NULL;
        if (!dst) return usage_error(usage_predict, "predict: unknown argument '%s'", a);
        if (!(v = value(argc, argv, &i)) || !*v)
            return usage_error(usage_predict, "option %s needs a value", a);
        *dst = v;
    }
    if (!ck || !in || !out)
        return usage_error(usage_predict,
                           "predict: --checkpoint, --input and --output are required%s", "");
    dm_set_quiet(0);
    return predict_run(ck, in, out);
}

static int cmd_sample(int argc, char **argv) {
    if (wants_help(argc, argv)) {
        if (rank0()) fputs(usage_sample, stdout);
        return DM_EXIT_OK;
    }
    sample_args a = {.n = 40, .class_label = SAMPLE_CLASS_NONE, .guidance = -1};
    for (int i = 0; i < argc; i++) {
        const char *o = argv[i], *v;
        long lv;
        if (strcmp(o, "--trajectory") == 0) {
            a.trajectory = 1;
            continue;
        }
        if (!(v = value(argc, argv, &i)) || !*v)
            return usage_error(usage_sample, "option %s needs a value (or is unknown)", o);
        if (strcmp(o, "--checkpoint") == 0) a.checkpoint = v;
        else if (strcmp(o, "--out") == 0) a.out = v;
        else if (strcmp(o, "--n") == 0 && parse_long(v, 1, 100000, &lv)) a.n = (int)lv;
        else if (strcmp(o, "--steps") == 0 && parse_long(v, 1, 100000, &lv)) a.steps = (int)lv;
        else if (strcmp(o, "--class") == 0 && strcmp(v, "all") == 0) a.class_label = SAMPLE_CLASS_ALL;
        else if (strcmp(o, "--class") == 0 && parse_long(v, 0, 9, &lv)) a.class_label = (int)lv;
        else if (strcmp(o, "--seed") == 0 && v[0] != '-' && parse_long(v, 0, LONG_MAX, &lv)) {
            a.seed = (uint64_t)lv;
            a.has_seed = 1;
        } else if (strcmp(o, "--guidance") == 0) {
            char *end;
            a.guidance = strtod(v, &end);
            if (end == v || *end || !(a.guidance >= 0 && a.guidance <= 1000))
                return usage_error(usage_sample, "--guidance: expected a number in [0, 1000], got '%s'", v);
        } else {
            char msg[300];
            snprintf(msg, sizeof msg, "%s '%s'", o, v);
            return usage_error(usage_sample, "sample: unknown option or bad value: %s", msg);
        }
    }
    if (!a.checkpoint || !a.out)
        return usage_error(usage_sample, "sample: --checkpoint and --out are required%s", "");
    dm_set_quiet(0);
    return sample_run(&a);
}

static int cmd_inspect(int argc, char **argv) {
    if (wants_help(argc, argv)) {
        if (rank0()) fputs(usage_inspect, stdout);
        return DM_EXIT_OK;
    }
    if (argc != 1 || argv[0][0] == '-')
        return usage_error(usage_inspect, "inspect: expected one FILE argument%s", "");
    dm_set_quiet(0);
    if (!rank0()) return DM_EXIT_OK;
    return inspect_file(argv[0]) == DM_OK ? DM_EXIT_OK : DM_EXIT_RUNTIME;
}

int main(int argc, char **argv) {
    /* A file whose close failed (disk full) stays in HDF5's tables, and the
     * library's own atexit clean-up then crashes on it; every file we write
     * is closed explicitly, so that clean-up is not needed. */
    H5dont_atexit();
    MPI_Init(&argc, &argv);
    /* Usage errors are the same on every rank: let rank 0 alone print. */
    dm_set_quiet(!rank0());
    int code;
    if (argc < 2) {
        /* One line like every other usage error; the usage is on --help. */
        code = usage_error(usage_main,
                           "no command given: expected train, predict, sample, bench or inspect%s", "");
    } else if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
               strcmp(argv[1], "help") == 0) {
        if (rank0()) fputs(usage_main, stdout);
        code = DM_EXIT_OK;
    } else if (strcmp(argv[1], "train") == 0) {
        code = cmd_train(argc - 2, argv + 2);
    } else if (strcmp(argv[1], "predict") == 0) {
        code = cmd_predict(argc - 2, argv + 2);
    } else if (strcmp(argv[1], "bench") == 0) {
        code = cmd_bench(argc - 2, argv + 2);
    } else if (strcmp(argv[1], "sample") == 0) {
        code = cmd_sample(argc - 2, argv + 2);
    } else if (strcmp(argv[1], "inspect") == 0) {
        code = cmd_inspect(argc - 2, argv + 2);
    } else {
        code = usage_error(usage_main, "unknown command '%s'", argv[1]);
    }
    fflush(stdout);
    MPI_Finalize();
    return code;
}
