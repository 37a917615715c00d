/* main.c: the diffmpi command line. Every rank parses the same arguments and
 * so fails together; only rank 0 prints usage errors. */
#include <hdf5.h>
#include <limits.h>
#include <mpi.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "diffmpi/bench.h"
#include "diffmpi/ckpt.h"
#include "diffmpi/common.h"
#include "diffmpi/config.h"
#include "diffmpi/engine.h"
#include "diffmpi/inspect.h"
#include "diffmpi/predict.h"
#include "diffmpi/sample_cmd.h"
#include "diffmpi/score_cmd.h"
#include "diffmpi/solver.h"
#include "diffmpi/train.h"
#include "diffmpi/version.h"

static const char *usage_main =
    "usage: diffmpi COMMAND [OPTIONS]   (run under mpirun for several ranks)\n"
    "\n"
    "commands:\n"
    "  train     train a model (diffmpi train --help)\n"
    "  predict   run a checkpoint's network on images from an HDF5 file\n"
    "  sample    draw images from a diffusion checkpoint (DDPM or flow)\n"
    "  invert    run a deterministic sampler backwards: images to their noise\n"
    "  score     judge samples with a classifier trained by diffmpi: accuracy,\n"
    "            Frechet distance of its features, coverage of the digits\n"
    "  bench     measure training or sampling speed against the sgemm peak\n"
    "  inspect   show what a checkpoint, log or samples file holds\n"
    "  help      this text; 'help keys' lists the configuration keys (with\n"
    "            --markdown: as the table of docs/configuration.md), 'help defaults'\n"
    "            prints the default configuration as an INI file\n"
    "\n"
    "diffmpi --version: the version, git commit and libraries of this build\n"
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
    "SIGTERM or SIGUSR1: finish the step, checkpoint, exit with code 3.\n";

static const char *usage_predict =
    "usage: diffmpi predict --checkpoint FILE --input IN.h5 --output OUT.h5\n"
    "                       [--precision fp32|bf16|auto] [--weights auto|ema|raw]\n"
    "\n"
    "  IN.h5 holds /x [N,1,28,28] float32; OUT.h5 receives /y [N,1,28,28],\n"
    "  the network's output in evaluation mode (BatchNorm: running statistics).\n"
    "  --precision P  of the convolutions (default: the run's; see the\n"
    "                 precision key in diffmpi train --help)\n"
    "  --weights W    ema: the weight average of a run with ema_decay > 0;\n"
    "                 raw: the trained weights; auto (default): ema if stored\n";

static const char *usage_sample =
    "usage: diffmpi sample --checkpoint FILE --out OUT.h5 [--n N] [--class K|all]\n"
    "                      [--guidance G] [--sampler NAME] [--steps S] [--eta E]\n"
    "                      [--spacing uniform|logsnr] [--seed S] [--noise FILE]\n"
    "                      [--trajectory] [--precision fp32|bf16|auto]\n"
    "                      [--weights auto|ema|raw] [--log-every SECONDS]\n"
    "\n"
    "  --n N          images to draw (default 40, or --noise's N)\n"
    "  --class K|all  class models: digit K for every image, or 'all' (equal\n"
    "                 runs of each digit, 4 of each for 40 images; the default)\n"
    "  --guidance G   classifier-free guidance scale (default: the run's, 5)\n"
    "  --sampler NAME ddpm, ddim, dpmpp2m (DDPM models); euler, heun, dpmpp2m\n"
    "                 (flow models); auto (default: the run's sampler key, see\n"
    "                 docs/sampling.md)\n"
    "  --steps S      sampler steps (default: the run's sample_steps, else the\n"
    "                 objective's default, docs/sampling.md, Defaults)\n"
    "  --eta E        ddim's noise in [0,1]: 0 deterministic (the run's sample_eta)\n"
    "  --spacing SP   the time grid: uniform in t, or logsnr (DDPM only)\n"
    "  --seed S       noise seed (default: the run's seed)\n"
    "  --noise FILE   start from /noise [N,1,28,28] float32 of FILE instead of\n"
    "                 noise drawn from the seed (a deterministic sampler then\n"
    "                 redraws the same images)\n"
    "  --trajectory   also store every step's images (/trajectory [F,N,28,28],\n"
    "                 at most 101 frames) and their network times (/trajectory_t)\n"
    "  --noise FILE may be the output of diffmpi invert: its /labels are then\n"
    "                 the default --class of each image\n"
    "  --precision P  of the convolutions (default: the run's; bf16 needs\n"
    "                 AVX512-BF16 or AMX; auto: bf16 where it is faster here)\n"
    "  --weights W    ema: the weight average (ema_decay > 0); raw: the\n"
    "                 trained weights; auto (default): ema if stored\n"
    "  --log-every S  seconds between progress lines (\"sampling N images:\n"
    "                 step s/S\"; default: the run's log_every; 0: every step)\n"
    "OUT.h5 gets /images [N,28,28] and /labels [N]; OUT.h5.png a grid. Under\n"
    "mpirun the images are spread over the ranks; the result does not depend\n"
    "on their number.\n";

static const char *usage_invert =
    "usage: diffmpi invert --checkpoint FILE --input IN.h5 --output OUT.h5\n"
    "                      [--class K] [--guidance G] [--sampler ddim|euler]\n"
    "                      [--steps S] [--spacing uniform|logsnr] [--trajectory]\n"
    "                      [--precision fp32|bf16|auto] [--weights auto|ema|raw]\n"
    "                      [--log-every SECONDS]\n"
    "\n"
    "  Runs a deterministic sampler backwards (DDIM's inversion): from the\n"
    "  images /images [N,28,28] (or [N,1,28,28]) of IN.h5 to the noise that\n"
    "  sampler draws them from. OUT.h5 gets /noise [N,1,28,28], /images (the\n"
    "  inputs) and /labels; `diffmpi sample --noise OUT.h5` with the same\n"
    "  sampler, steps and guidance redraws the images (exactly only in the\n"
    "  limit of many steps; docs/sampling.md).\n"
    "  --class K      class models: the digit of every image (default: IN.h5's\n"
    "                 /labels, else none: the unconditional model)\n"
    "  --guidance G   classifier-free guidance scale (default: the run's)\n"
    "  --sampler S    ddim (DDPM, eta 0) or euler (flow); default: the run's\n"
    "                 where it can run backwards, else these\n"
    "  --steps S      steps (default: the run's sample_steps)\n"
    "  other options as for diffmpi sample\n";

static const char *usage_score =
    "usage: diffmpi score --judge J.h5 --samples S.h5 [--out SCORE.h5] [--features]\n"
    "                     [--epoch N] [--ref REF.h5 | --data DIR]\n"
    "                     [--precision fp32|bf16|auto] [--weights auto|ema|raw]\n"
    "\n"
    "  --judge J.h5    a checkpoint of objective = classify (train one with\n"
    "                  jobs/configs/judge.ini)\n"
    "  --samples S.h5  /images [N,28,28] and /labels [N] (-1: no intended digit)\n"
    "                  as `diffmpi sample` writes them, or a run's samples.h5\n"
    "                  (every /samples/epoch_NNNN group, or --epoch N's)\n"
    "  --out SCORE.h5  the figures, the judge's path and CRC-32, the counts\n"
    "  --features      SCORE.h5 also gets the judge's features and logits of\n"
    "                  every image (/reference_features, <set>/features, ...)\n"
    "  --ref REF.h5    reference images (/images) for the Frechet distance;\n"
    "                  default the MNIST test set in --data DIR (default: the\n"
    "                  judge's data_dir)\n"
    "  --precision P   of the judge's convolutions (default: the judge's)\n"
    "  --weights W     the judge's: auto (default; its average if stored),\n"
    "                  ema or raw\n"
    "Prints one line per figure: accuracy (share of images with an intended\n"
    "digit that the judge assigns to it; overall, per digit) and confidence,\n"
    "frechet_distance (between Gaussian fits of the judge's pooled features of\n"
    "the samples and of the reference: an FID on this judge, not Inception's),\n"
    "entropy and histogram of the predicted digits. Under mpirun the images\n"
    "are spread over the ranks; the figures do not depend on their number.\n";

static const char *usage_bench =
    "usage: diffmpi bench [--config FILE] [--set KEY=VALUE]... [--steps N]\n"
    "                     [--sample] [--verbose]\n"
    "\n"
    "  Measures the configured model on synthetic data (no files written):\n"
    "  every rank first runs a conv-shaped GEMM at the same time (the\n"
    "  machine's own peak), then a warm-up and N timed training steps\n"
    "  (default 5), or with --sample N sampler steps of 40 images. Rank 0\n"
    "  prints images/s, GFLOP/s (analytic GEMM FLOPs), the share of the peak,\n"
    "  the time per phase (with several ranks: from N more steps, timed with a\n"
    "  barrier before each collective), the network traffic per step, and the\n"
    "  peak memory per rank; --verbose adds the FLOP count per layer. Run it\n"
    "  under mpirun like train.\n";

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

/* Prints "diffmpi: <message> (see --help)" on rank 0; returns exit code 2. */
static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int usage_error(const char *fmt, ...) {
    if (rank0()) {
        char msg[512];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof msg, fmt, ap);
        va_end(ap);
        dm_error("%s (see --help)", msg);
    }
    return DM_EXIT_USAGE;
}

/* A command's usage, then the configuration keys it takes (rank 0). */
static int print_usage(const char *usage, int with_keys) {
    if (!rank0()) return DM_EXIT_OK;
    fputs(usage, stdout);
    if (with_keys) {
        fputs("\nconfiguration keys (KEY = VALUE in the --config file, or "
              "--set KEY=VALUE):\n", stdout);
        config_print_keys(stdout, CONFIG_KEYS_TEXT);
    }
    return DM_EXIT_OK;
}

static int wants_help(int argc, char **argv) {
    for (int i = 0; i < argc; i++)
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) return 1;
    return 0;
}

/* --precision fp32|bf16 of sample and predict. */
static int parse_precision(const char *v, int *out) {
    for (int p = 0; gemm_precision_name(p); p++)
        if (strcmp(v, gemm_precision_name(p)) == 0) {
            *out = p;
            return DM_EXIT_OK;
        }
    return usage_error("--precision: expected fp32, bf16 or auto, got '%s'", v);
}

/* --weights auto|ema|raw of sample, predict and score. */
static int parse_weights(const char *v, int *out) {
    for (int w = 0; ckpt_weights_name(w); w++)
        if (strcmp(v, ckpt_weights_name(w)) == 0) {
            *out = w;
            return DM_EXIT_OK;
        }
    return usage_error("--weights: expected auto, ema or raw, got '%s'", v);
}

/* Value of option argv[*i]; NULL (and an error) when it is missing. */
static const char *value(int argc, char **argv, int *i) {
    if (*i + 1 >= argc) return NULL;
    return argv[++*i];
}

/* One option of train or bench other than --config and --set: a flag, or
 * an option with a value kept as text or as an integer in [lo, hi]. */
typedef struct {
    const char *name;
    int *flag;             /* a flag: set to 1 when given */
    const char **text;     /* a value: the text */
    long *number, lo, hi;  /* a value: the integer */
    const char *expected;  /* the integer's range, for the usage error */
    const char *missing;   /* text option: usage error when it is absent */
} cli_option;

static const cli_option *find_option(const cli_option *opts, const char *name) {
    for (; opts->name; opts++)
        if (strcmp(opts->name, name) == 0) return opts;
    return NULL;
}

/* argv against the option tables opts and more (NULL or a second table):
 * flags set, values stored or parsed, then the required options checked.
 * Returns DM_EXIT_OK, or DM_EXIT_USAGE after one error line. */
static int parse_options(const char *cmd, int argc, char **argv, const cli_option *opts,
                         const cli_option *more) {
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *v;
        const cli_option *o = find_option(opts, a);
        if (!o && more) o = find_option(more, a);
        if (!o) return usage_error("%s: unknown argument '%s'", cmd, a);
        if (o->flag) {
            *o->flag = 1;
            continue;
        }
        if (!(v = value(argc, argv, &i)) || !*v)
            return usage_error("option %s needs a value", a);
        if (o->text) *o->text = v;
        if (o->number && !dm_parse_long(v, o->lo, o->hi, o->number))
            return usage_error("%s: expected %s, got '%s'", a, o->expected, v);
    }
    for (const cli_option *o = opts; o->name; o++)
        if (o->missing && !*o->text) return usage_error("%s", o->missing);
    return DM_EXIT_OK;
}

/* The command line of train and bench: the options in opts, --config FILE
 * and --set KEY=VALUE (repeatable) in any order. Then the configuration:
 * the defaults, the --config file, every --set in command-line order and the
 * cross-key checks. A --config file that cannot be read is a usage error.
 * Returns DM_EXIT_OK, or DM_EXIT_USAGE after one error line. */
static int config_command(const char *cmd, int argc, char **argv,
                          const cli_option *opts, dm_config *c) {
    const char *cfg = NULL, *set = NULL; /* each --set: applied in order below */
    const cli_option config_opts[] = {{"--config", .text = &cfg},
                                      {"--set", .text = &set},
                                      {NULL}};
    int code = parse_options(cmd, argc, argv, opts, config_opts);
    if (code != DM_EXIT_OK) return code;
    config_defaults(c);
    dm_status st = cfg ? config_load_file(c, cfg) : DM_OK;
    /* The same walk again, now known to be well formed. */
    for (int i = 0; st == DM_OK && i < argc; i++) {
        const cli_option *o = find_option(opts, argv[i]);
        if (o && o->flag) continue;
        if (strcmp(argv[i], "--set") == 0) st = config_set(c, argv[i + 1]);
        i++; /* the option's value */
    }
    if (st == DM_OK) st = config_validate(c);
    return st == DM_OK ? DM_EXIT_OK : DM_EXIT_USAGE;
}

static int cmd_train(int argc, char **argv) {
    if (wants_help(argc, argv)) return print_usage(usage_train, 1);
    const char *out = NULL, *resume = NULL;
    const cli_option opts[] = {
        {"--out", .text = &out, .missing = "train: --out DIR is required"},
        {"--resume", .text = &resume},
        {NULL}};
    dm_config c;
    int code = config_command("train", argc, argv, opts, &c);
    if (code != DM_EXIT_OK) return code;
    dm_set_quiet(0);
    return train_run(&c, out, resume);
}

static int cmd_bench(int argc, char **argv) {
    if (wants_help(argc, argv)) return print_usage(usage_bench, 1);
    int sample = 0, verbose = 0;
    long steps = 5;
    const cli_option opts[] = {
        {"--sample", .flag = &sample},
        {"--verbose", .flag = &verbose},
        {"--steps", .number = &steps, .lo = 1, .hi = 1000000,
         .expected = "an integer >= 1"},
        {NULL}};
    dm_config c;
    int code = config_command("bench", argc, argv, opts, &c);
    if (code != DM_EXIT_OK) return code;
    dm_set_quiet(0);
    return bench_run(&c, (int)steps, sample, verbose);
}

static int cmd_predict(int argc, char **argv) {
    if (wants_help(argc, argv)) return print_usage(usage_predict, 0);
    const char *ck = NULL, *in = NULL, *out = NULL, *prec = NULL, *wts = NULL;
    static const char required[] = "predict: --checkpoint, --input and --output are required";
    const cli_option opts[] = {{"--checkpoint", .text = &ck, .missing = required},
                               {"--input", .text = &in, .missing = required},
                               {"--output", .text = &out, .missing = required},
                               {"--precision", .text = &prec},
                               {"--weights", .text = &wts},
                               {NULL}};
    int code = parse_options("predict", argc, argv, opts, NULL);
    if (code != DM_EXIT_OK) return code;
    int p = -1, w = CKPT_WEIGHTS_AUTO;
    if (prec && (code = parse_precision(prec, &p)) != DM_EXIT_OK) return code;
    if (wts && (code = parse_weights(wts, &w)) != DM_EXIT_OK) return code;
    dm_set_quiet(0);
    return predict_run(ck, in, out, p, w);
}

/* A number in [lo, hi] of option name into *out. */
static int parse_real(const char *name, const char *v, double lo, double hi, double *out) {
    char *end;
    double d = strtod(v, &end);
    if (end == v || *end || !(d >= lo && d <= hi))
        return usage_error("%s: expected a number in [%g, %g], got '%s'", name, lo, hi, v);
    *out = d;
    return DM_EXIT_OK;
}

/* One of the names fn(0), fn(1), ... of option name into *out. */
static int parse_name(const char *name, const char *v, const char *(*fn)(int), int *out) {
    char list[256] = "";
    for (int i = 0; fn(i); i++) {
        if (strcmp(v, fn(i)) == 0) {
            *out = i;
            return DM_EXIT_OK;
        }
        snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", i ? ", " : "", fn(i));
    }
    return usage_error("%s: expected one of %s, got '%s'", name, list, v);
}

/* --class K|all of sample. */
static int parse_class(const char *v, int *out) {
    long k;
    if (strcmp(v, "all") == 0) *out = SAMPLE_CLASS_ALL;
    else if (dm_parse_long(v, 0, 9, &k)) *out = (int)k;
    else return usage_error("--class: expected a digit 0..9 or all, got '%s'", v);
    return DM_EXIT_OK;
}

/* sample, or (invert) the way back: the options both take, and each its
 * own (sample: --out, --n, --seed, --noise, --eta; invert: --input,
 * --output). */
static int sampling_command(int argc, char **argv, int invert) {
    const char *cmd = invert ? "invert" : "sample";
    if (wants_help(argc, argv)) return print_usage(invert ? usage_invert : usage_sample, 0);
    sample_args a = {.class_label = SAMPLE_CLASS_NONE, .guidance = -1, .precision = -1,
                     .log_every = -1, .sampler = -1, .eta = -1, .spacing = -1,
                     .invert = invert};
    const char *cls = NULL, *guid = NULL, *prec = NULL, *wts = NULL, *every = NULL,
               *smp = NULL, *eta = NULL, *spc = NULL;
    long n = 0, steps = 0, seed = -1;
    const char *required = invert ? "invert: --checkpoint, --input and --output are required"
                                  : "sample: --checkpoint and --out are required";
    cli_option opts[20] = {{"--checkpoint", .text = &a.checkpoint, .missing = required}};
    int k = 1;
    if (invert) {
        opts[k++] = (cli_option){"--input", .text = &a.input, .missing = required};
        opts[k++] = (cli_option){"--output", .text = &a.out, .missing = required};
    } else {
        opts[k++] = (cli_option){"--out", .text = &a.out, .missing = required};
        opts[k++] = (cli_option){"--n", .number = &n, .lo = 1, .hi = 100000,
                                 .expected = "an integer in 1..100000"};
        opts[k++] = (cli_option){"--seed", .number = &seed, .lo = 0, .hi = LONG_MAX,
                                 .expected = "an integer >= 0"};
        opts[k++] = (cli_option){"--noise", .text = &a.noise};
        opts[k++] = (cli_option){"--eta", .text = &eta};
    }
    const cli_option common[] = {
        {"--class", .text = &cls},
        {"--guidance", .text = &guid},
        {"--sampler", .text = &smp},
        {"--steps", .number = &steps, .lo = 1, .hi = 100000,
         .expected = "an integer in 1..100000"},
        {"--spacing", .text = &spc},
        {"--trajectory", .flag = &a.trajectory},
        {"--precision", .text = &prec},
        {"--weights", .text = &wts},
        {"--log-every", .text = &every},
        {NULL}};
    int code = parse_options(cmd, argc, argv, opts, common);
    if (code == DM_EXIT_OK && cls) code = parse_class(cls, &a.class_label);
    if (code == DM_EXIT_OK && guid) code = parse_real("--guidance", guid, 0, 1000, &a.guidance);
    if (code == DM_EXIT_OK && smp) code = parse_name("--sampler", smp, solver_name, &a.sampler);
    if (code == DM_EXIT_OK && eta) code = parse_real("--eta", eta, 0, 1, &a.eta);
    if (code == DM_EXIT_OK && spc)
        code = parse_name("--spacing", spc, solver_spacing_name, &a.spacing);
    if (code == DM_EXIT_OK && prec) code = parse_precision(prec, &a.precision);
    if (code == DM_EXIT_OK && wts) code = parse_weights(wts, &a.weights);
    if (code == DM_EXIT_OK && every) code = parse_real("--log-every", every, 0, 1e6, &a.log_every);
    if (code != DM_EXIT_OK) return code;
    a.n = (int)n;
    a.steps = (int)steps;
    a.has_seed = seed >= 0;
    a.seed = a.has_seed ? (uint64_t)seed : 0;
    dm_set_quiet(0);
    return sample_run(&a);
}

static int cmd_sample(int argc, char **argv) { return sampling_command(argc, argv, 0); }
static int cmd_invert(int argc, char **argv) { return sampling_command(argc, argv, 1); }

static int cmd_score(int argc, char **argv) {
    if (wants_help(argc, argv)) return print_usage(usage_score, 0);
    score_args a = {.precision = -1};
    const char *prec = NULL, *wts = NULL;
    long epoch = 0;
    static const char required[] = "score: --judge and --samples are required";
    const cli_option opts[] = {{"--judge", .text = &a.judge, .missing = required},
                               {"--samples", .text = &a.samples, .missing = required},
                               {"--out", .text = &a.out},
                               {"--ref", .text = &a.ref},
                               {"--data", .text = &a.data},
                               {"--epoch", .number = &epoch, .lo = 1, .hi = 1000000,
                                .expected = "an epoch number >= 1"},
                               {"--precision", .text = &prec},
                               {"--features", .flag = &a.features},
                               {"--weights", .text = &wts},
                               {NULL}};
    int code = parse_options("score", argc, argv, opts, NULL);
    if (code != DM_EXIT_OK) return code;
    if (wts && (code = parse_weights(wts, &a.weights)) != DM_EXIT_OK) return code;
    if (a.ref && a.data) return usage_error("score: --ref and --data exclude each other");
    if (prec && (code = parse_precision(prec, &a.precision)) != DM_EXIT_OK) return code;
    a.epoch = (int)epoch;
    dm_set_quiet(0);
    return score_run(&a);
}

static int cmd_inspect(int argc, char **argv) {
    if (wants_help(argc, argv)) return print_usage(usage_inspect, 0);
    if (argc != 1 || argv[0][0] == '-')
        return usage_error("inspect: expected one FILE argument");
    dm_set_quiet(0);
    if (!rank0()) return DM_EXIT_OK;
    return inspect_file(argv[0]) == DM_OK ? DM_EXIT_OK : DM_EXIT_RUNTIME;
}

/* diffmpi help [keys [--markdown] | defaults]: the configuration keys as
 * --help lists them or as docs/configuration.md's table, or every key at its default
 * as an INI file (config_to_string, as train prints it at start). */
static int cmd_help(int argc, char **argv) {
    if (argc == 0 || wants_help(argc, argv)) return print_usage(usage_main, 0);
    if (strcmp(argv[0], "keys") == 0) {
        int markdown = argc > 1 && strcmp(argv[1], "--markdown") == 0;
        if (argc > 1 + markdown)
            return usage_error("help keys: unknown argument '%s'", argv[1 + markdown]);
        if (rank0()) config_print_keys(stdout, markdown ? CONFIG_KEYS_MARKDOWN
                                                        : CONFIG_KEYS_TEXT);
        return DM_EXIT_OK;
    }
    if (strcmp(argv[0], "defaults") == 0) {
        if (argc > 1)
            return usage_error("help defaults: unknown argument '%s'", argv[1]);
        dm_config c;
        char text[8192];
        config_defaults(&c);
        config_to_string(&c, text, sizeof text);
        if (rank0()) fputs(text, stdout);
        return DM_EXIT_OK;
    }
    return usage_error("help: unknown topic '%s' (expected keys or defaults)",
                       argv[0]);
}

/* The commands: `diffmpi NAME ARGS...` calls fn(argc, argv) on the ARGS. */
static const struct {
    const char *name;
    int (*fn)(int argc, char **argv);
} commands[] = {
    {"help", cmd_help},       {"train", cmd_train},   {"predict", cmd_predict},
    {"bench", cmd_bench},     {"sample", cmd_sample}, {"inspect", cmd_inspect},
    {"score", cmd_score},     {"invert", cmd_invert},
};

int main(int argc, char **argv) {
    /* A file whose close failed (disk full) stays in HDF5's tables, and the
     * library's own atexit clean-up then crashes on it; every file we write
     * is closed explicitly, so that clean-up is not needed. */
    H5dont_atexit();
    MPI_Init(&argc, &argv);
    /* Usage errors are the same on every rank: let rank 0 alone print. */
    dm_set_quiet(!rank0());
    int code = -1;
    if (argc < 2) {
        /* One line like every other usage error; the usage is on --help. */
        code = usage_error("no command given: expected train, predict, sample, invert, score, bench or inspect");
    } else if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        code = print_usage(usage_main, 0);
    } else if (strcmp(argv[1], "--version") == 0) {
        code = argc == 2 ? 0 : usage_error("--version takes no arguments");
        if (code == 0 && rank0()) {
            char v[128], libs[512];
            dm_version_text(v, sizeof v);
            dm_libraries_text(libs, sizeof libs);
            printf("diffmpi %s\nlibraries: %s\n", v, libs);
        }
    } else {
        for (size_t i = 0; i < sizeof commands / sizeof commands[0] && code < 0; i++)
            if (strcmp(argv[1], commands[i].name) == 0)
                code = commands[i].fn(argc - 2, argv + 2);
        if (code < 0) code = usage_error("unknown command '%s'", argv[1]);
    }
    fflush(stdout);
    MPI_Finalize();
    return code;
}
