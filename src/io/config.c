/* config.c: dm_config from INI text (libinih) and --set overrides.
 *
 * Every key is one row of `keys` below (name, kind, field offset, allowed
 * range or names, default, meaning), and defaults, parsing, printing,
 * validation and the key list of --help and docs/configuration.md all walk that table,
 * so a key cannot be parsed one way, checked another and documented a third.
 *
 * inih (Debian 12: r55, built with its defaults) is fed through our own line
 * reader rather than ini_parse():
 *  - the handler is built without line numbers (INI_HANDLER_LINENO 0), and
 *    the reader knows which line it handed out, so every error names its
 *    file:line exactly;
 *  - the reader strips leading blanks, so an indented line is an ordinary
 *    line and never a multi-line continuation that would silently replace
 *    the previous key's value (inih's INI_ALLOW_MULTILINE is on);
 *  - a line longer than inih's buffer (INI_MAX_LINE - 1 chars) would be split
 *    in two by inih; the reader reports it instead.
 * inih's other defaults are kept: '#' and ';' start a comment at the start of
 * a line, " ;" starts an inline comment, "key: value" equals "key = value",
 * and a UTF-8 BOM is skipped. Debian's libinih also exports run-time
 * switches (ini_allow_multiline, ...); they are process-wide and exist only
 * in Debian's build, so they are left alone.
 */
#include "diffmpi/config.h"

#include <errno.h>
#include <ini.h>
#include <limits.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#define MAX_LINE (INI_MAX_LINE - 1)
#define PATH_KEY_PREFIX "data_dir = "
/* data_dir must fit one line of config_to_string output, which inih must be
 * able to read back. */
#define MAX_PATH_CHARS ((int)(MAX_LINE - (sizeof PATH_KEY_PREFIX - 1)))
#define MAX_BATCH (1 << 20)
#define MAX_CONFIG_BYTES (1 << 20)
#define MSG_SIZE 1536

typedef enum {
    KEY_INT, KEY_INT32, KEY_U64, KEY_REAL, KEY_ENUM, KEY_PATH, KEY_EPOCHS
} key_kind;

typedef struct {
    const char *name;
    key_kind kind;
    size_t offset;      /* of the field in dm_config */
    double lo, hi;      /* KEY_INT, KEY_INT32, KEY_REAL: allowed range */
    int lo_open;        /* KEY_REAL: lo itself is not allowed */
    int empty_ok;       /* KEY_PATH: the empty value is allowed (off) */
    const char *const *names; /* KEY_ENUM: NULL-terminated, index = value */
    const char *(*name_of)(int); /* KEY_ENUM without names: value's name,
                                    NULL past the last (a module's table) */
    const char *def;    /* default, as a user writes it; config_defaults
                           parses it like any other value */
    const char *help;   /* one line: what the key means (--help, docs/configuration.md) */
} config_key;

static const char *const conditioning_names[] = {"none", "time", "class",
                                                 NULL};
static const char *const lr_decay_names[] = {"none", "exp", NULL};
static const char *const bn_sync_names[] = {"global", "rank", NULL};
static const char *const reduction_names[] = {"node", "flat", NULL};
static const char *const conv_algo_names[] = {"im2col", "winograd", "auto", NULL};

/* Enum fields are read and written as int through memcpy. */
_Static_assert(sizeof(dm_objective) == sizeof(int), "enum size");
_Static_assert(sizeof(dm_norm) == sizeof(int), "enum size");
_Static_assert(sizeof(dm_conditioning) == sizeof(int), "enum size");
_Static_assert(sizeof(dm_lr_decay) == sizeof(int), "enum size");
_Static_assert(sizeof(dm_bn_sync) == sizeof(int), "enum size");
_Static_assert(sizeof(dm_reduction) == sizeof(int), "enum size");
_Static_assert(sizeof(dm_conv_algo) == sizeof(int), "enum size");
_Static_assert(sizeof(dm_precision) == sizeof(int), "enum size");
_Static_assert(sizeof(dm_engine) == sizeof(int), "enum size");
_Static_assert(sizeof(dm_sampler) == sizeof(int), "enum size");
_Static_assert(sizeof(dm_spacing) == sizeof(int), "enum size");
_Static_assert(MAX_PATH_CHARS < (int)sizeof(((dm_config *)0)->data_dir),
               "data_dir buffer");
_Static_assert(sizeof(((dm_config *)0)->judge) == sizeof(((dm_config *)0)->data_dir),
               "path fields");

#define OFF(field) offsetof(dm_config, field)

/* The one description of every key: config_defaults, parsing, validation,
 * config_to_string, `diffmpi train --help` and docs/configuration.md's key table (from
 * `diffmpi help keys --markdown`) all walk it. The order of this table is
 * the order of config_to_string (printed at start, stored in every output
 * file). */
static const config_key keys[] = {
    {.name = "objective", .kind = KEY_ENUM, .offset = OFF(objective),
     .name_of = objective_name, .def = "denoise",
     .help = "what is trained: denoise (z = x + sigma eps, target x), "
             "pure_noise (z = eps, target x), ddpm (T = 300, linear betas "
             "1e-4..0.02, epsilon prediction), flow (linear noise-to-data "
             "path, velocity target) or classify (the judge of diffmpi score: "
             "the UNet's encoder, pooled, to 10 logits; cross-entropy)"},
    {.name = "conditioning", .kind = KEY_ENUM, .offset = OFF(conditioning),
     .names = conditioning_names, .def = "none",
     .help = "none for the denoisers and classify; time, or class (time "
             "and class), for ddpm and flow"},
    {.name = "hidden", .kind = KEY_INT, .offset = OFF(hidden), .lo = 1,
     .hi = 4096, .def = "128", .help = "UNet width D"},
    {.name = "norm", .kind = KEY_ENUM, .offset = OFF(norm),
     .name_of = norm_name, .def = "batch",
     .help = "normalisation after each hidden convolution: batch "
             "(BatchNorm2d, see bn_sync) or group (GroupNorm over each "
             "image)"},
    {.name = "norm_groups", .kind = KEY_INT, .offset = OFF(norm_groups),
     .lo = 1, .hi = 4096, .def = "32",
     .help = "groups of norm = group; must divide hidden"},
    {.name = "epochs", .kind = KEY_INT, .offset = OFF(epochs), .lo = 1,
     .hi = 100000, .def = "5",
     .help = "passes over the (limited) training set"},
    {.name = "batch", .kind = KEY_INT, .offset = OFF(batch), .lo = 1,
     .hi = MAX_BATCH, .def = "256",
     .help = "global batch size; the last batch of an epoch is kept short"},
    {.name = "micro_batch", .kind = KEY_INT, .offset = OFF(micro_batch),
     .lo = 1, .hi = MAX_BATCH, .def = "32",
     .help = "images per micro-batch (at most batch), the unit of all "
             "computation and of the fixed reduction order"},
    {.name = "lr", .kind = KEY_REAL, .offset = OFF(lr), .lo = 0,
     .hi = HUGE_VAL, .lo_open = 1, .def = "1e-4",
     .help = "Adam learning rate (betas 0.9/0.999, eps 1e-8)"},
    {.name = "lr_decay", .kind = KEY_ENUM, .offset = OFF(lr_decay),
     .names = lr_decay_names, .def = "none",
     .help = "none, or exp: multiply the learning rate by 0.1^(1/epochs) "
             "after every epoch"},
    {.name = "sigma", .kind = KEY_REAL, .offset = OFF(sigma), .lo = 0,
     .hi = HUGE_VAL, .def = "0.5",
     .help = "training noise level of denoise"},
    {.name = "seed", .kind = KEY_U64, .offset = OFF(seed), .def = "0",
     .help = "seeds initialisation, data order and all noise"},
    {.name = "data_dir", .kind = KEY_PATH, .offset = OFF(data_dir),
     .def = "data/mnist",
     .help = "directory of the four raw MNIST IDX files"},
    {.name = "train_limit", .kind = KEY_INT32, .offset = OFF(train_limit),
     .lo = 0, .hi = INT32_MAX, .def = "0",
     .help = "use only the first N training images (0 = all 60000)"},
    {.name = "eval_limit", .kind = KEY_INT32, .offset = OFF(eval_limit),
     .lo = 0, .hi = INT32_MAX, .def = "0",
     .help = "test images used for the per-epoch test MSE and the sigma "
             "sweep (0 = all 10000)"},
    {.name = "checkpoint_every", .kind = KEY_INT,
     .offset = OFF(checkpoint_every), .lo = 0, .hi = INT_MAX, .def = "0",
     .help = "also checkpoint every N steps (0 = at epoch ends only)"},
    {.name = "keep", .kind = KEY_INT, .offset = OFF(keep), .lo = 1,
     .hi = INT_MAX, .def = "3",
     .help = "checkpoints kept (ckpt-STEP.h5); older ones are deleted once "
             "a new one is on disk (keep_epochs' files aside)"},
    {.name = "keep_epochs", .kind = KEY_EPOCHS, .offset = OFF(keep_epochs),
     .def = "",
     .help = "the checkpoints written at the end of these epochs are also "
             "kept as checkpoints/epoch-E.h5 (a hard link, or a copy where "
             "links fail), which keep never deletes and --resume auto never "
             "picks: to sample or score an earlier epoch after the run; "
             "empty = none"},
    {.name = "threads", .kind = KEY_INT, .offset = OFF(threads), .lo = 1,
     .hi = 256, .def = "1",
     .help = "threads per rank: they share its micro-batches, one micro-batch "
             "per thread at a time (the same bits for any count; see "
             "docs/design.md, Threads)"},
    {.name = "precision", .kind = KEY_ENUM, .offset = OFF(precision),
     .name_of = gemm_precision_name, .def = "fp32",
     .help = "fp32, or bf16 (operands of the convolutions' products in "
             "bfloat16, accumulated in fp32; needs AVX512-BF16 or AMX); auto: "
             "timed at start-up, bf16 only where it is faster "
             "(docs/configuration.md, Precision and engines)"},
    {.name = "engine", .kind = KEY_ENUM, .offset = OFF(engine),
     .name_of = gemm_engine_name, .def = "auto",
     .help = "what runs the convolutions' matrix products: onednn "
             "(oneDNN's matmul, kernels chosen from the CPU), openblas "
             "(cblas_sgemm, fp32 only), or auto (onednn where built)"},
    {.name = "conv_algo", .kind = KEY_ENUM, .offset = OFF(conv_algo),
     .names = conv_algo_names, .def = "im2col",
     .help = "im2col (every convolution as im2col and a product), winograd "
             "(the 3x3 stride-1 ones by Winograd F(2x2)/F(4x4) from the widths "
             "below; fp32 only) or auto (timed at start-up per image width; "
             "docs/performance.md, How `auto` decides)"},
    {.name = "winograd_min_width", .kind = KEY_INT, .offset = OFF(winograd_min_width),
     .lo = 1, .hi = 512, .def = "1",
     .help = "with conv_algo = winograd, the narrowest images (7, 14 or 28 "
             "in the UNet) whose 3x3 stride-1 convolutions run by Winograd; "
             "narrower ones run by im2col"},
    {.name = "winograd4_min_width", .kind = KEY_INT, .offset = OFF(winograd4_min_width),
     .lo = 0, .hi = 512, .def = "0",
     .help = "with conv_algo = winograd, the narrowest images whose 3x3 "
             "stride-1 convolutions run by F(4x4,3x3) (fewer multiplies, "
             "larger rounding error) instead of F(2x2,3x3); 0: none"},
    {.name = "bn_sync", .kind = KEY_ENUM, .offset = OFF(bn_sync),
     .names = bn_sync_names, .def = "global",
     .help = "global: BatchNorm statistics over the global batch (results "
             "independent of the rank count); rank: over each rank's share "
             "(as DDP does; results then depend on the rank count)"},
    {.name = "reduction", .kind = KEY_ENUM, .offset = OFF(reduction),
     .names = reduction_names, .def = "node",
     .help = "node: the ranks of a node combine their gradients there first "
             "and each node sends its part once (docs/design.md, Gradient "
             "reduction); flat: every rank sends to every other; the same "
             "bits either way"},
    {.name = "log_every", .kind = KEY_REAL, .offset = OFF(log_every), .lo = 0,
     .hi = HUGE_VAL, .lo_open = 1, .def = "10",
     .help = "seconds between progress lines (under mpirun or when stdout "
             "is not a terminal)"},
    {.name = "p_uncond", .kind = KEY_REAL, .offset = OFF(p_uncond), .lo = 0,
     .hi = 1, .def = "0.1",
     .help = "class models: probability of training with the label dropped"},
    {.name = "guidance", .kind = KEY_REAL, .offset = OFF(guidance), .lo = 0,
     .hi = 1000, .def = "5",
     .help = "class models: classifier-free guidance scale when sampling"},
    {.name = "sampler", .kind = KEY_ENUM, .offset = OFF(sampler),
     .name_of = solver_name, .def = "auto",
     .help = "how diffusion models draw images (docs/sampling.md): ddpm "
             "(the course's ancestral steps), ddim (deterministic at "
             "sample_eta = 0), dpmpp2m (DPM-Solver++(2M); ddpm and flow), "
             "euler (the course's flow sampler) or heun (flow, two network "
             "evaluations a step); auto: ddpm for ddpm; flow: euler (time), dpmpp2m (class)"},
    {.name = "sample_steps", .kind = KEY_INT, .offset = OFF(sample_steps),
     .lo = 0, .hi = 100000, .def = "0",
     .help = "sampler steps (at most 300 for ddpm); 0 = the objective's "
             "default (docs/sampling.md, Defaults)"},
    {.name = "sample_spacing", .kind = KEY_ENUM, .offset = OFF(sample_spacing),
     .name_of = solver_spacing_name, .def = "uniform",
     .help = "the sampler's time grid from the last trained time to the "
             "image: uniform in t, or logsnr (ddpm only: even steps of the "
             "log signal-to-noise ratio, rounded to trained times)"},
    {.name = "sample_eta", .kind = KEY_REAL, .offset = OFF(sample_eta), .lo = 0,
     .hi = 1, .def = "0",
     .help = "sampler = ddim: 0 deterministic, 1 the DDPM posterior's "
             "variance (valid for skipped steps)"},
    {.name = "sample_epochs", .kind = KEY_EPOCHS, .offset = OFF(sample_epochs),
     .def = "1,5,10,15,20",
     .help = "diffusion models sample 40 images after these epochs (and "
             "always after the last)"},
    {.name = "watchdog", .kind = KEY_REAL, .offset = OFF(watchdog), .lo = 0,
     .hi = 1e7, .def = "300",
     .help = "seconds without progress after which the job ends, naming the "
             "rank that stopped answering or cannot be reached over the "
             "network (0 = off); time the whole job spends stopped (a "
             "suspended Slurm job) does not count"},
    {.name = "sample_chunk", .kind = KEY_INT, .offset = OFF(sample_chunk),
     .lo = 1, .hi = 4096, .def = "4",
     .help = "images per sampler forward (x2 with guidance), the unit spread "
             "over the ranks"},
    {.name = "ema_decay", .kind = KEY_REAL, .offset = OFF(ema_decay), .lo = 0,
     .hi = 0.999999, .def = "0",
     .help = "exponential moving average of the weights and BatchNorm "
             "statistics (decay min(ema_decay, (1+t)/(10+t)) at step t), "
             "kept in checkpoints as /ema and used by samples, sample, "
             "predict and score; 0 = off"},
    {.name = "bn_recalibrate", .kind = KEY_INT, .offset = OFF(bn_recalibrate),
     .lo = 0, .hi = 100000, .def = "0",
     .help = "at every epoch end, before evaluation, sampling and the "
             "checkpoint: replace BatchNorm's running statistics by the "
             "average over this many training batches under the epoch's final "
             "weights (and the weight average's own, with ema_decay); 0 = "
             "off, the exponential average of PyTorch's BatchNorm2d"},
    {.name = "judge", .kind = KEY_PATH, .offset = OFF(judge), .empty_ok = 1,
     .def = "",
     .help = "a judge checkpoint (objective = classify, "
             "jobs/configs/judge.ini): diffusion runs then score score_n "
             "extra samples after every sampling epoch (log.h5 /eval "
             "sample_acc, sample_fd; diffmpi score); empty = off"},
    {.name = "score_n", .kind = KEY_INT, .offset = OFF(score_n), .lo = 2,
     .hi = 100000, .def = "200",
     .help = "samples scored per sampling epoch with a judge (class models: "
             "evenly over the digits)"},
};
#define N_KEYS ((int)(sizeof keys / sizeof keys[0]))

static void *field(dm_config *c, const config_key *k) {
    return (char *)c + k->offset;
}

static const void *cfield(const dm_config *c, const config_key *k) {
    return (const char *)c + k->offset;
}

static int find_key(const char *name) {
    for (int i = 0; i < N_KEYS; i++)
        if (strcmp(keys[i].name, name) == 0) return i;
    return -1;
}

/* Name of value i of an enum key, NULL past the last. */
static const char *enum_name(const config_key *k, int i) {
    if (k->name_of) return k->name_of(i);
    return k->names[i];
}

static int enum_count(const config_key *k) {
    int n = 0;
    while (enum_name(k, n)) n++;
    return n;
}

/* The allowed values of k in a few words (the key list of --help and
 * docs/configuration.md); enum names joined by '|'. */
static void key_values(const config_key *k, char *buf, size_t size) {
    size_t pos = 0;
    switch (k->kind) {
    case KEY_INT:
    case KEY_INT32:
        if (k->hi >= INT_MAX)
            snprintf(buf, size, "integer >= %.0f", k->lo);
        else
            snprintf(buf, size, "integer in %.0f..%.0f", k->lo, k->hi);
        break;
    case KEY_U64:
        snprintf(buf, size, "integer in 0..%llu", ULLONG_MAX);
        break;
    case KEY_REAL:
        if (isinf(k->hi))
            snprintf(buf, size, "number %s %g", k->lo_open ? ">" : ">=", k->lo);
        else
            snprintf(buf, size, "number in [%g, %g]", k->lo, k->hi);
        break;
    case KEY_ENUM:
        buf[0] = '\0';
        for (int i = 0; enum_name(k, i) && pos < size; i++)
            pos += (size_t)snprintf(buf + pos, size - pos, "%s%s",
                                    i ? "|" : "", enum_name(k, i));
        break;
    case KEY_EPOCHS:
        snprintf(buf, size, "increasing epochs, like 1,5,10");
        break;
    case KEY_PATH:
        snprintf(buf, size, k->empty_ok ? "path or empty" : "path");
        break;
    }
}

/* What a valid value of k looks like, for error messages. */
static void key_expectation(const config_key *k, char *buf, size_t size) {
    char values[200];
    key_values(k, values, sizeof values);
    switch (k->kind) {
    case KEY_INT:
    case KEY_INT32:
    case KEY_U64:
        snprintf(buf, size, "an %s", values);
        break;
    case KEY_REAL:
        snprintf(buf, size, "a %s%s", isinf(k->hi) ? "finite " : "", values);
        break;
    case KEY_ENUM:
        snprintf(buf, size, "one of %s", values);
        break;
    case KEY_EPOCHS:
        snprintf(buf, size, "a comma-separated increasing list of at most %d "
                 "epochs >= 1, like 1,5,10", CONFIG_MAX_SAMPLE_EPOCHS);
        break;
    case KEY_PATH:
        snprintf(buf, size,
                 "%sa path of 1..%d characters, no control characters, no "
                 "';' first or after a blank, no blank at either end",
                 k->empty_ok ? "empty (off) or " : "", MAX_PATH_CHARS);
        break;
    }
}

static int real_ok(const config_key *k, double v) {
    return isfinite(v) && (k->lo_open ? v > k->lo : v >= k->lo) && v <= k->hi;
}

/* Parse "1,5,10" into out[] (increasing, >= 1); returns the count, or -1. */
static int parse_epochs(const char *s, int *out) {
    int n = 0, prev = 0;
    if (strlen(s) >= sizeof ((dm_config *)0)->sample_epochs) return -1;
    while (*s) {
        if (*s < '0' || *s > '9' || n == CONFIG_MAX_SAMPLE_EPOCHS) return -1;
        char *end;
        long v = strtol(s, &end, 10);
        if (v <= prev || v > 100000) return -1;
        out[n++] = (int)v;
        prev = (int)v;
        s = end;
        if (*s == ',') {
            s++;
            if (!*s) return -1;
        } else if (*s) {
            return -1;
        }
    }
    return n;
}

/* The KEY_EPOCHS code reads every such field with sample_epochs' size. */
_Static_assert(sizeof ((dm_config *)0)->keep_epochs == sizeof ((dm_config *)0)->sample_epochs,
               "epoch lists share one size");

static int epoch_listed(const char *list, int epoch) {
    int e[CONFIG_MAX_SAMPLE_EPOCHS];
    int n = parse_epochs(list, e);
    for (int i = 0; i < n; i++)
        if (e[i] == epoch) return 1;
    return 0;
}

int config_keep_epoch(const dm_config *c, int epoch) {
    return epoch <= c->epochs && epoch_listed(c->keep_epochs, epoch);
}

int config_sample_epoch(const dm_config *c, int epoch) {
    if (epoch == c->epochs) return 1;
    return epoch < c->epochs && epoch_listed(c->sample_epochs, epoch);
}

/* A path must come back unchanged through config_to_string and inih.
 * inih ends a value at a ';' that follows a blank (an inline comment), and
 * config_to_string prints "data_dir = <path>", so a leading ';' counts as
 * following a blank too. */
static int path_ok(const char *s) {
    size_t n = strlen(s);
    if (n == 0 || n > (size_t)MAX_PATH_CHARS) return 0;
    if (s[0] == ' ' || s[0] == '\t' || s[n - 1] == ' ' || s[n - 1] == '\t')
        return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch < 0x20 || ch == 0x7f) return 0;
        if (ch == ';' && (i == 0 || s[i - 1] == ' ' || s[i - 1] == '\t'))
            return 0;
    }
    return 1;
}

/* Parses value for key k into c; writes nothing if the value is bad. */
static int key_parse(const config_key *k, const char *value, dm_config *c) {
    long l;
    double d;
    char *end;
    switch (k->kind) {
    case KEY_INT:
        if (!dm_parse_long(value, (long)k->lo, (long)k->hi, &l)) return 0;
        *(int *)field(c, k) = (int)l;
        return 1;
    case KEY_INT32:
        if (!dm_parse_long(value, (long)k->lo, (long)k->hi, &l)) return 0;
        *(int32_t *)field(c, k) = (int32_t)l;
        return 1;
    case KEY_U64: {
        /* strtoull would accept "-1" as 2^64-1: digits only. */
        if (value[0] < '0' || value[0] > '9') return 0;
        errno = 0;
        unsigned long long u = strtoull(value, &end, 10);
        if (*end != '\0' || errno == ERANGE) return 0;
        *(uint64_t *)field(c, k) = (uint64_t)u;
        return 1;
    }
    case KEY_REAL:
        errno = 0;
        d = strtod(value, &end);
        /* ERANGE on overflow or underflow to 0 (a subnormal result is
         * still the nearest double and round-trips). */
        if (end == value || *end != '\0' || !real_ok(k, d) ||
            (errno == ERANGE && d == 0.0))
            return 0;
        *(double *)field(c, k) = d;
        return 1;
    case KEY_ENUM:
        for (int i = 0; enum_name(k, i); i++) {
            if (strcmp(value, enum_name(k, i)) == 0) {
                memcpy(field(c, k), &i, sizeof i);
                return 1;
            }
        }
        return 0;
    case KEY_PATH:
        if (!(k->empty_ok && !*value) && !path_ok(value)) return 0;
        memcpy(field(c, k), value, strlen(value) + 1);
        return 1;
    case KEY_EPOCHS: {
        int e[CONFIG_MAX_SAMPLE_EPOCHS];
        if (parse_epochs(value, e) < 0) return 0;
        memcpy(field(c, k), value, strlen(value) + 1);
        return 1;
    }
    }
    return 0;
}

/* Checks the value stored in c (for config_validate). */
static int key_valid(const config_key *k, const dm_config *c) {
    int iv;
    switch (k->kind) {
    case KEY_INT:
        iv = *(const int *)cfield(c, k);
        return iv >= k->lo && iv <= k->hi;
    case KEY_INT32:
        iv = (int)*(const int32_t *)cfield(c, k);
        return iv >= k->lo && iv <= k->hi;
    case KEY_U64:
        return 1;
    case KEY_REAL:
        return real_ok(k, *(const double *)cfield(c, k));
    case KEY_ENUM:
        memcpy(&iv, cfield(c, k), sizeof iv);
        return iv >= 0 && iv < enum_count(k);
    case KEY_PATH:
        return memchr(cfield(c, k), '\0', sizeof c->data_dir) != NULL &&
               ((k->empty_ok && !*(const char *)cfield(c, k)) || path_ok(cfield(c, k)));
    case KEY_EPOCHS: {
        int e[CONFIG_MAX_SAMPLE_EPOCHS];
        return memchr(cfield(c, k), '\0', sizeof c->sample_epochs) != NULL &&
               parse_epochs(cfield(c, k), e) >= 0;
    }
    }
    return 0;
}

/* At most size - 1 bytes of a field of cap bytes, NUL-terminated. Written
 * out because snprintf("%.*s") trips -Wformat-truncation at -O3. */
static void copy_text(char *buf, size_t size, const char *src, size_t cap) {
    if (size == 0) return;
    size_t n = strnlen(src, cap);
    if (n > size - 1) n = size - 1;
    memcpy(buf, src, n);
    buf[n] = '\0';
}

/* Shortest "%.Ng" that reads back as exactly v (at most 17 digits), but
 * whole numbers below 1e15 as plain integers ("10", not "1e+01"). */
static void format_real(double v, char *buf, size_t size) {
    if (v == floor(v) && fabs(v) < 1e15) {
        snprintf(buf, size, "%.0f", v);
        return;
    }
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(buf, size, "%.*g", prec, v);
        if (strtod(buf, NULL) == v) return;
    }
}

/* The value of k in c as config_to_string prints it. */
static void key_format(const config_key *k, const dm_config *c, char *buf,
                       size_t size) {
    int iv;
    switch (k->kind) {
    case KEY_INT:
        snprintf(buf, size, "%d", *(const int *)cfield(c, k));
        break;
    case KEY_INT32:
        snprintf(buf, size, "%ld", (long)*(const int32_t *)cfield(c, k));
        break;
    case KEY_U64:
        snprintf(buf, size, "%llu",
                 (unsigned long long)*(const uint64_t *)cfield(c, k));
        break;
    case KEY_REAL:
        format_real(*(const double *)cfield(c, k), buf, size);
        break;
    case KEY_ENUM:
        memcpy(&iv, cfield(c, k), sizeof iv);
        snprintf(buf, size, "%s",
                 iv >= 0 && iv < enum_count(k) ? enum_name(k, iv) : "?");
        break;
    case KEY_PATH:
        copy_text(buf, size, (const char *)cfield(c, k), sizeof c->data_dir);
        break;
    case KEY_EPOCHS:
        copy_text(buf, size, (const char *)cfield(c, k), sizeof c->sample_epochs);
        break;
    }
}

/* s for an error message: control characters escaped so the message stays
 * one line, at most about 200 characters. */
static void printable(const char *s, char *buf, size_t size) {
    size_t pos = 0;
    for (; *s && pos + 8 < size; s++) {
        unsigned char ch = (unsigned char)*s;
        if (pos > 200) {
            pos += (size_t)snprintf(buf + pos, size - pos, "...");
            break;
        }
        if (ch < 0x20 || ch == 0x7f)
            pos += (size_t)snprintf(buf + pos, size - pos, "\\x%02x", ch);
        else
            buf[pos++] = (char)ch;
    }
    buf[pos] = '\0';
}

/* Applies name = value to c. On failure writes the problem (without the
 * location) into msg and leaves c unchanged. */
static int apply(dm_config *c, const char *name, const char *value, char *msg,
                 size_t msgsize) {
    char shown[256];
    int i = find_key(name);
    if (i < 0) {
        printable(name, shown, sizeof shown);
        size_t pos = (size_t)snprintf(msg, msgsize,
                                      "unknown key '%s' (known keys:", shown);
        for (int j = 0; j < N_KEYS && pos < msgsize; j++)
            pos += (size_t)snprintf(msg + pos, msgsize - pos, " %s",
                                    keys[j].name);
        if (pos < msgsize) snprintf(msg + pos, msgsize - pos, ")");
        return 0;
    }
    if (key_parse(&keys[i], value, c)) return 1;
    char expect[256];
    key_expectation(&keys[i], expect, sizeof expect);
    printable(value, shown, sizeof shown);
    if (value[0] == '\0')
        snprintf(msg, msgsize, "key '%s': empty value, expected %s", name,
                 expect);
    else
        snprintf(msg, msgsize, "key '%s': bad value '%s', expected %s", name,
                 shown, expect);
    return 0;
}

/* text, wrapped at word boundaries to lines of at most `width` characters
 * after `indent` blanks. */
static void print_wrapped(FILE *fp, const char *text, int indent, int width) {
    while (*text) {
        int n = (int)strlen(text);
        if (n > width) {
            n = width;
            while (n > 0 && text[n] != ' ') n--;
            if (n == 0) n = (int)strcspn(text, " ");
        }
        fprintf(fp, "%*s%.*s\n", indent, "", n, text);
        text += n;
        while (*text == ' ') text++;
    }
}

/* One markdown table cell: s with '|' escaped (GitHub's tables split cells
 * at '|', even inside a code span), in backquotes if code. */
static void print_cell(FILE *fp, const char *s, int code) {
    fputs(code ? " `" : " ", fp);
    for (; *s; s++) {
        if (*s == '|') fputc('\\', fp);
        fputc(*s, fp);
    }
    fputs(code ? "` |" : " |", fp);
}

void config_print_keys(FILE *fp, dm_config_keys_format format) {
    DM_CHECK(fp, "config_print_keys: NULL argument");
    char values[256];
    if (format == CONFIG_KEYS_MARKDOWN) {
        fputs("| key | values | default | meaning |\n|---|---|---|---|\n", fp);
        for (int i = 0; i < N_KEYS; i++) {
            const config_key *k = &keys[i];
            key_values(k, values, sizeof values);
            fputc('|', fp);
            print_cell(fp, k->name, 1);
            print_cell(fp, values, k->kind == KEY_ENUM);
            print_cell(fp, *k->def ? k->def : "(empty)", *k->def != 0);
            print_cell(fp, k->help, 0);
            fputc('\n', fp);
        }
        return;
    }
    for (int i = 0; i < N_KEYS; i++) {
        const config_key *k = &keys[i];
        key_values(k, values, sizeof values);
        fprintf(fp, "  %-16s  %s; default %s\n", k->name, values, *k->def ? k->def : "(empty)");
        print_wrapped(fp, k->help, 20, 58);
    }
}

void config_defaults(dm_config *c) {
    memset(c, 0, sizeof *c);
    for (int i = 0; i < N_KEYS; i++)
        DM_CHECK(key_parse(&keys[i], keys[i].def, c),
                 "config key '%s': its default '%s' does not parse",
                 keys[i].name, keys[i].def);
}

/* State shared by the line reader and the inih handler of one parse. */
typedef struct {
    const char *pos;     /* next unread character of the text */
    int lineno;          /* line last handed to inih */
    int too_long_line;   /* first line too long for inih, or 0 */
    int err_line;        /* first line the handler rejected, or 0 */
    char err[MSG_SIZE];
    int first_line[N_KEYS]; /* where each key was set, 0 = not yet */
    dm_config cfg;       /* working copy, committed only on success */
} parse_ctx;

/* ini_reader: hands inih one line without its leading blanks. */
static char *read_line(char *str, int num, void *stream) {
    parse_ctx *p = stream;
    if (*p->pos == '\0') return NULL;
    const char *s = p->pos;
    const char *end = strchr(s, '\n');
    if (!end) end = s + strlen(s);
    p->pos = *end ? end + 1 : end;
    p->lineno++;
    while (s < end && (*s == ' ' || *s == '\t')) s++;
    size_t len = (size_t)(end - s);
    if (len + 1 > (size_t)num) {
        if (!p->too_long_line) p->too_long_line = p->lineno;
        len = 0;
    }
    memcpy(str, s, len);
    str[len] = '\0';
    return str;
}

static int handle_pair(void *user, const char *section, const char *name,
                       const char *value) {
    parse_ctx *p = user;
    if (p->err_line) return 1; /* only the first error is reported */
    int i = find_key(name);
    if (i >= 0 && p->first_line[i]) {
        snprintf(p->err, sizeof p->err, "key '%s' given twice (first on "
                 "line %d)", name, p->first_line[i]);
    } else if (apply(&p->cfg, name, value, p->err, sizeof p->err)) {
        p->first_line[i] = p->lineno;
        return 1;
    }
    p->err_line = p->lineno;
    return 0;
}

/* Line n (1-based) of text, blanks stripped, at most 60 chars, into buf. */
static void text_line(const char *text, int n, char *buf, size_t size) {
    for (int i = 1; i < n && text; i++) {
        text = strchr(text, '\n');
        if (text) text++;
    }
    if (!text) text = "";
    while (*text == ' ' || *text == '\t') text++;
    size_t len = strcspn(text, "\r\n");
    while (len > 0 && (text[len - 1] == ' ' || text[len - 1] == '\t')) len--;
    if (len > 60) len = 60;
    snprintf(buf, size, "%.*s", (int)len, text);
}

dm_status config_load_string(dm_config *c, const char *text,
                             const char *origin) {
    DM_CHECK(c && text, "config_load_string: NULL argument");
    if (!origin) origin = "<string>";
    parse_ctx *p = dm_calloc(1, sizeof *p);
    p->pos = text;
    p->cfg = *c;
    int ret = ini_parse_stream(read_line, p, handle_pair, p);
    dm_status st = DM_OK;
    /* inih returns the first line with any error, ours or a syntax error. */
    int syntax_line = ret > 0 && ret != p->err_line ? ret : 0;
    int first = 0;
    if (p->err_line) first = p->err_line;
    if (syntax_line && (!first || syntax_line < first)) first = syntax_line;
    if (p->too_long_line && (!first || p->too_long_line < first))
        first = p->too_long_line;
    if (ret < 0) {
        dm_error("%s: inih failed with code %d", origin, ret);
        st = DM_EIO;
    } else if (!first) {
        *c = p->cfg;
    } else if (first == p->too_long_line) {
        dm_error("%s:%d: line too long (more than %d characters after "
                 "leading blanks)", origin, first, MAX_LINE);
        st = DM_EUSAGE;
    } else if (first == p->err_line) {
        dm_error("%s:%d: %s", origin, first, p->err);
        st = DM_EUSAGE;
    } else {
        char line[64];
        text_line(text, first, line, sizeof line);
        dm_error("%s:%d: syntax error in '%s': expected 'key = value', "
                 "'[section]' or a comment", origin, first, line);
        st = DM_EUSAGE;
    }
    free(p);
    return st;
}

dm_status config_load_file(dm_config *c, const char *path) {
    DM_CHECK(c && path, "config_load_file: NULL argument");
    FILE *fp = fopen(path, "rb");
    if (!fp) {
        dm_error("%s: cannot open config file: %s", path, strerror(errno));
        return DM_EIO;
    }
    char *text = dm_malloc(MAX_CONFIG_BYTES + 1);
    size_t n = fread(text, 1, MAX_CONFIG_BYTES + 1, fp);
    int read_failed = ferror(fp);
    int read_errno = errno;
    fclose(fp);
    dm_status st = DM_OK;
    if (read_failed) {
        dm_error("%s: cannot read config file: %s", path,
                 strerror(read_errno));
        st = DM_EIO;
    } else if (n > MAX_CONFIG_BYTES) {
        dm_error("%s: config file larger than %d bytes", path,
                 MAX_CONFIG_BYTES);
        st = DM_EUSAGE;
    } else if (memchr(text, '\0', n)) {
        dm_error("%s: config file contains a NUL byte (not a text file?)",
                 path);
        st = DM_EUSAGE;
    } else {
        text[n] = '\0';
        st = config_load_string(c, text, path);
    }
    free(text);
    return st;
}

static char *trim(char *s) {
    while (*s == ' ' || *s == '\t') s++;
    size_t n = strlen(s);
    while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t')) s[--n] = '\0';
    return s;
}

dm_status config_set(dm_config *c, const char *assignment) {
    DM_CHECK(c && assignment, "config_set: NULL argument");
    size_t len = strlen(assignment);
    char *copy = dm_malloc(len + 1);
    memcpy(copy, assignment, len + 1);
    char *eq = strchr(copy, '=');
    char shown[256];
    printable(assignment, shown, sizeof shown);
    dm_status st = DM_OK;
    if (!eq) {
        dm_error("--set %s: expected key=value", shown);
        st = DM_EUSAGE;
    } else {
        *eq = '\0';
        char *name = trim(copy), *value = trim(eq + 1);
        char msg[MSG_SIZE];
        if (name[0] == '\0') {
            dm_error("--set %s: empty key, expected key=value", shown);
            st = DM_EUSAGE;
        } else if (!apply(c, name, value, msg, sizeof msg)) {
            dm_error("--set %s: %s", shown, msg);
            st = DM_EUSAGE;
        }
    }
    free(copy);
    return st;
}

dm_status config_validate(const dm_config *c) {
    DM_CHECK(c, "config_validate: NULL argument");
    for (int i = 0; i < N_KEYS; i++) {
        if (key_valid(&keys[i], c)) continue;
        char value[64], expect[256];
        key_format(&keys[i], c, value, sizeof value);
        key_expectation(&keys[i], expect, sizeof expect);
        dm_error("invalid configuration: %s = %s, expected %s", keys[i].name,
                 value, expect);
        return DM_EUSAGE;
    }
    if (c->micro_batch > c->batch) {
        dm_error("invalid configuration: micro_batch = %d is larger than "
                 "batch = %d", c->micro_batch, c->batch);
        return DM_EUSAGE;
    }
    if (c->norm == NORM_GROUP && c->hidden % c->norm_groups != 0) {
        dm_error("invalid configuration: norm = group needs norm_groups = %d to "
                 "divide hidden = %d", c->norm_groups, c->hidden);
        return DM_EUSAGE;
    }
    if (c->norm == NORM_GROUP && c->bn_recalibrate > 0) {
        dm_error("invalid configuration: bn_recalibrate = %d recomputes BatchNorm "
                 "statistics, which norm = group does not keep (set bn_recalibrate = 0)",
                 c->bn_recalibrate);
        return DM_EUSAGE;
    }
    int unconditional = !objective_get(c->objective)->diffusion;
    if (unconditional && c->conditioning != CONDITIONING_NONE) {
        dm_error("invalid configuration: objective = %s needs conditioning = "
                 "none (got %s)", config_objective_name(c->objective),
                 config_conditioning_name(c->conditioning));
        return DM_EUSAGE;
    }
    if (unconditional && c->judge[0]) {
        dm_error("invalid configuration: judge = %s scores samples, which objective = %s "
                 "does not draw (set judge = for it, or use ddpm or flow)", c->judge,
                 config_objective_name(c->objective));
        return DM_EUSAGE;
    }
    if (!unconditional && c->conditioning == CONDITIONING_NONE) {
        dm_error("invalid configuration: objective = %s needs conditioning = "
                 "time or class (got none)",
                 config_objective_name(c->objective));
        return DM_EUSAGE;
    }
    const char *why = unconditional ? NULL : config_sampler_problem(c);
    if (why) {
        dm_error("invalid configuration: %s", why);
        return DM_EUSAGE;
    }
    return DM_OK;
}

const char *config_sampler_problem(const dm_config *c) {
    return solver_check(c->objective, c->sampler, c->sample_spacing,
                        solver_steps(c->objective, c->conditioning == CONDITIONING_CLASS,
                                     c->sample_steps),
                        c->sample_eta);
}

int config_to_string(const dm_config *c, char *buf, int bufsize) {
    DM_CHECK(c && buf, "config_to_string: NULL argument");
    if (bufsize <= 0) return 0;
    /* Only whole lines are written: a truncated line could read back as a
     * different value. */
    int pos = 0;
    buf[0] = '\0';
    for (int i = 0; i < N_KEYS; i++) {
        char value[sizeof c->data_dir];
        key_format(&keys[i], c, value, sizeof value);
        int n = snprintf(buf + pos, (size_t)(bufsize - pos), "%s = %s\n",
                         keys[i].name, value);
        if (n < 0 || n >= bufsize - pos) {
            buf[pos] = '\0';
            break;
        }
        pos += n;
    }
    return pos;
}

#define N_NAMES(a) ((int)(sizeof a / sizeof a[0]) - 1)

const char *config_objective_name(dm_objective o) {
    const char *s = objective_name((int)o);
    return s ? s : "unknown";
}

const char *config_conditioning_name(dm_conditioning c) {
    int i = (int)c;
    return i >= 0 && i < N_NAMES(conditioning_names) ? conditioning_names[i]
                                                     : "unknown";
}
