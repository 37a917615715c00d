/* test_config.c: defaults (from the key table) and the key list printed
 * for --help and README.md, INI files (every key, comments, sections, syntax
 * errors, exact line numbers), --set overrides, strict value checks, the
 * config_to_string -> config_load_string round trip and config_validate's
 * cross-key rules. */
#include "diffmpi/config.h"

#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "test_util.h"

static char tmpdir[64];
static char errpath[128];
/* stderr capture around one call: begin, call, end(buf). */
static void capture_begin(void) { test_capture_begin(errpath); }

static void capture_end(char *buf, size_t size) { test_capture_end(errpath, buf, size); }

static int count_lines(const char *s) {
    int n = 0;
    for (; *s; s++) n += *s == '\n';
    return n;
}

static void write_text(const char *path, const char *text, size_t len) {
    FILE *fp = fopen(path, "wb");
    if (!fp || fwrite(text, 1, len, fp) != len || fclose(fp) != 0) {
        perror(path);
        exit(1);
    }
}

/* Loads `text` from a file; returns the status and the captured stderr. */
static dm_status load_text(dm_config *c, const char *text, char *err,
                           size_t errsize) {
    char path[128];
    snprintf(path, sizeof path, "%s/test.ini", tmpdir);
    write_text(path, text, strlen(text));
    capture_begin();
    dm_status st = config_load_file(c, path);
    capture_end(err, errsize);
    unlink(path);
    return st;
}

static dm_status set_capture(dm_config *c, const char *arg, char *err,
                             size_t errsize) {
    capture_begin();
    dm_status st = config_set(c, arg);
    capture_end(err, errsize);
    return st;
}

static void expect_same(const dm_config *a, const dm_config *b,
                        const char *what) {
    EXPECT(a->objective == b->objective && a->conditioning == b->conditioning &&
               a->hidden == b->hidden && a->norm == b->norm &&
               a->norm_groups == b->norm_groups && a->epochs == b->epochs &&
               a->batch == b->batch && a->micro_batch == b->micro_batch &&
               memcmp(&a->lr, &b->lr, sizeof a->lr) == 0 &&
               a->lr_decay == b->lr_decay &&
               memcmp(&a->sigma, &b->sigma, sizeof a->sigma) == 0 &&
               a->seed == b->seed && strcmp(a->data_dir, b->data_dir) == 0 &&
               a->train_limit == b->train_limit &&
               a->eval_limit == b->eval_limit &&
               a->guidance == b->guidance && a->sample_steps == b->sample_steps &&
               a->sampler == b->sampler && a->sample_spacing == b->sample_spacing &&
               a->sample_eta == b->sample_eta &&
               a->sample_chunk == b->sample_chunk && a->watchdog == b->watchdog &&
               strcmp(a->sample_epochs, b->sample_epochs) == 0 &&
               strcmp(a->keep_epochs, b->keep_epochs) == 0 &&
               a->checkpoint_every == b->checkpoint_every &&
               a->keep == b->keep && a->threads == b->threads &&
               a->bn_sync == b->bn_sync && a->bn_recalibrate == b->bn_recalibrate &&
               a->precision == b->precision && a->engine == b->engine &&
               a->conv_algo == b->conv_algo && a->winograd_min_width == b->winograd_min_width &&
               a->winograd4_min_width == b->winograd4_min_width &&
               memcmp(&a->log_every, &b->log_every, sizeof a->log_every) ==
                   0 &&
               memcmp(&a->p_uncond, &b->p_uncond, sizeof a->p_uncond) == 0,
           "%s: configurations differ", what);
}

static void test_defaults(void) {
    dm_config c;
    memset(&c, 0x5a, sizeof c);
    config_defaults(&c);
    EXPECT(c.objective == OBJ_DENOISE, "objective");
    EXPECT(c.conditioning == CONDITIONING_NONE, "conditioning");
    EXPECT(c.hidden == 128 && c.epochs == 5 && c.batch == 256 &&
               c.micro_batch == 32,
           "hidden/epochs/batch/micro_batch");
    EXPECT(c.lr == 1e-4 && c.lr_decay == LR_DECAY_NONE && c.sigma == 0.5,
           "lr/lr_decay/sigma");
    EXPECT(c.seed == 0 && strcmp(c.data_dir, "data/mnist") == 0, "seed/dir");
    EXPECT(c.train_limit == 0 && c.checkpoint_every == 0 && c.keep == 3 &&
               c.threads == 1,
           "train_limit/checkpoint_every/keep/threads");
    EXPECT(c.bn_sync == BN_SYNC_GLOBAL && c.reduction == REDUCTION_NODE && c.log_every == 10.0 &&
               c.p_uncond == 0.1 && c.eval_limit == 0,
           "bn_sync/reduction/log_every/p_uncond/eval_limit");
    EXPECT(c.norm == NORM_BATCH && c.norm_groups == 32, "norm/norm_groups");
    EXPECT(c.precision == DM_PREC_FP32 && c.engine == DM_ENGINE_AUTO && c.conv_algo == CONV_ALGO_IM2COL &&
               c.winograd_min_width == 1 && c.winograd4_min_width == 0,
           "precision/engine/conv_algo/winograd_min_width/winograd4_min_width");
    EXPECT(c.sampler == SAMPLER_AUTO && c.sample_spacing == SPACING_UNIFORM && c.sample_eta == 0,
           "sampler/sample_spacing/sample_eta");
    EXPECT(c.guidance == 5.0 && c.sample_steps == 0 && c.sample_chunk == 4 &&
               c.watchdog == 300.0 &&
               strcmp(c.sample_epochs, "1,5,10,15,20") == 0,
           "guidance/sample_steps/sample_chunk/watchdog/sample_epochs");
    EXPECT(config_validate(&c) == DM_OK, "defaults must validate");

    /* config_to_string's order and format are stored in checkpoints: the
     * defaults, whole. */
    char text[4096];
    config_to_string(&c, text, sizeof text);
    EXPECT(strcmp(text,
                  "objective = denoise\nconditioning = none\nhidden = 128\n"
                  "norm = batch\nnorm_groups = 32\nepochs = 5\nbatch = 256\n"
                  "micro_batch = 32\nlr = 0.0001\nlr_decay = none\n"
                  "sigma = 0.5\nseed = 0\ndata_dir = data/mnist\n"
                  "train_limit = 0\neval_limit = 0\ncheckpoint_every = 0\n"
                  "keep = 3\nkeep_epochs = \nthreads = 1\nprecision = fp32\nengine = auto\n"
                  "conv_algo = im2col\nwinograd_min_width = 1\nwinograd4_min_width = 0\nbn_sync = global\n"
                  "reduction = node\nlog_every = 10\n"
                  "p_uncond = 0.1\nguidance = 5\nsampler = auto\nsample_steps = 0\n"
                  "sample_spacing = uniform\nsample_eta = 0\n"
                  "sample_epochs = 1,5,10,15,20\nwatchdog = 300\n"
                  "sample_chunk = 4\nema_decay = 0\nbn_recalibrate = 0\njudge = \n"
                  "score_n = 200\n") == 0,
           "defaults text:\n%s", text);
    EXPECT(strcmp(config_objective_name(OBJ_PURE_NOISE), "pure_noise") == 0,
           "objective name");
    EXPECT(strcmp(config_conditioning_name(CONDITIONING_CLASS), "class") == 0,
           "conditioning name");
}

/* '\n' then what config_print_keys(format) prints, into buf. */
static void print_keys(dm_config_keys_format format, char *buf, size_t size) {
    char path[128];
    snprintf(path, sizeof path, "%s/keys.txt", tmpdir);
    FILE *fp = fopen(path, "w+");
    if (!fp) {
        perror(path);
        exit(1);
    }
    config_print_keys(fp, format);
    rewind(fp);
    buf[0] = '\n';
    size_t n = fread(buf + 1, 1, size - 2, fp);
    buf[n + 1] = '\0';
    fclose(fp);
    unlink(path);
}

/* The key lists of --help and README.md: every key of config_to_string, in
 * its order, with its allowed values and its default. */
static void test_key_list(void) {
    static char text[16384], md[16384];
    char defaults[4096];
    dm_config c;
    config_defaults(&c);
    config_to_string(&c, defaults, sizeof defaults);
    print_keys(CONFIG_KEYS_TEXT, text, sizeof text);
    print_keys(CONFIG_KEYS_MARKDOWN, md, sizeof md);
    EXPECT(strncmp(md, "\n| key | values | default | meaning |\n|---|---|---|---|\n",
                   55) == 0,
           "markdown header: '%.60s'", md);
    EXPECT(count_lines(md) == 3 + count_lines(defaults), "markdown: %d lines",
           count_lines(md));
    const char *t = text, *m = md;
    for (const char *line = defaults; *line; line = strchr(line, '\n') + 1) {
        char key[64], want[128];
        sscanf(line, "%63s", key);
        snprintf(want, sizeof want, "\n  %-16s  ", key);
        const char *found = strstr(t, want);
        EXPECT(found != NULL, "text list: '%s' missing or out of order", key);
        if (found) t = found + 1;
        snprintf(want, sizeof want, "\n| `%s` |", key);
        found = strstr(m, want);
        EXPECT(found != NULL, "markdown: '%s' missing or out of order", key);
        if (found) m = found + 1;
    }
    EXPECT(strstr(text, "\n  objective         denoise|pure_noise|ddpm|flow|classify; "
                        "default denoise\n") != NULL,
           "objective line:\n%s", text);
    EXPECT(strstr(text, "\n  lr                number > 0; default 1e-4\n"
                        "                    Adam learning rate") != NULL,
           "lr lines:\n%s", text);
    EXPECT(strstr(md, "\n| `norm` | `batch\\|group` | `batch` | ") != NULL,
           "markdown escapes '|' in enum names:\n%s", md);
    EXPECT(strstr(md, "\n| `hidden` | integer in 1..4096 | `128` | UNet width D |\n") !=
               NULL,
           "markdown hidden row:\n%s", md);
    /* Every text line fits a terminal. */
    for (const char *line = text + 1; *line; line = strchr(line, '\n') + 1)
        EXPECT(strcspn(line, "\n") <= 79, "line longer than 79: '%.*s'",
               (int)strcspn(line, "\n"), line);
}

static void test_file_every_key(void) {
    const char *text =
        "\xEF\xBB\xBF; a comment\n"
        "# another comment\n"
        "objective = flow\n"
        "[model]\n"
        "conditioning = class\n"
        "  hidden = 64 ; inline comment\n"
        "\tepochs=20\n"
        "batch: 512\n"
        "micro_batch = 64\r\n"
        "lr = 1e-2\n"
        "\n"
        "[train]\n"
        "lr_decay = exp\n"
        "sigma = 0\n"
        "seed = 18446744073709551615\n"
        "data_dir = /scratch/my data;v2\n"
        "train_limit = 1000\n"
        "checkpoint_every = 50\n"
        "keep = 7\n"
        "threads = 256\n"
        "bn_sync = rank\n"
        "log_every = 0.25\n"
        "p_uncond = 1\n";
    dm_config c;
    config_defaults(&c);
    char err[2048];
    dm_status st = load_text(&c, text, err, sizeof err);
    EXPECT(st == DM_OK, "every key: status %d: %s", (int)st, err);
    EXPECT(err[0] == '\0', "every key: unexpected output '%s'", err);
    EXPECT(c.objective == OBJ_FLOW && c.conditioning == CONDITIONING_CLASS,
           "objective/conditioning");
    EXPECT(c.hidden == 64, "hidden (indented, inline comment) = %d",
           c.hidden);
    EXPECT(c.epochs == 20 && c.batch == 512 && c.micro_batch == 64,
           "epochs/batch/micro_batch");
    EXPECT(c.lr == 1e-2 && c.lr_decay == LR_DECAY_EXP && c.sigma == 0.0,
           "lr/lr_decay/sigma");
    EXPECT(c.seed == UINT64_MAX, "seed");
    EXPECT(strcmp(c.data_dir, "/scratch/my data;v2") == 0, "data_dir '%s'",
           c.data_dir);
    EXPECT(c.train_limit == 1000 && c.checkpoint_every == 50 && c.keep == 7 &&
               c.threads == 256,
           "train_limit/checkpoint_every/keep/threads");
    EXPECT(c.bn_sync == BN_SYNC_RANK && c.log_every == 0.25 && c.p_uncond == 1.0,
           "bn_sync/log_every/p_uncond");
    EXPECT(config_validate(&c) == DM_OK, "every key: validate");

    /* Empty and comment-only files change nothing. */
    dm_config d, ref;
    config_defaults(&d);
    config_defaults(&ref);
    EXPECT(load_text(&d, "", err, sizeof err) == DM_OK, "empty file");
    EXPECT(load_text(&d, "; nothing\n\n# here\n[s]\n", err, sizeof err) ==
               DM_OK,
           "comment-only file");
    expect_same(&d, &ref, "comment-only file");
}

/* A failing file: status, one line, the exact "<file>:<line>: " prefix and
 * a fragment; the configuration must be untouched. */
static void expect_file_error(const char *text, int line,
                              const char *fragment) {
    dm_config c, ref;
    config_defaults(&c);
    config_defaults(&ref);
    char err[2048], where[256];
    dm_status st = load_text(&c, text, err, sizeof err);
    snprintf(where, sizeof where, "diffmpi: %s/test.ini:%d: ", tmpdir, line);
    EXPECT(st == DM_EUSAGE, "'%s': status %d, expected DM_EUSAGE", text,
           (int)st);
    EXPECT(count_lines(err) == 1, "'%s': expected one line, got '%s'", text,
           err);
    EXPECT(strncmp(err, where, strlen(where)) == 0,
           "'%s': expected prefix '%s' in '%s'", text, where, err);
    EXPECT(strstr(err, fragment) != NULL, "'%s': '%s' not in '%s'", text,
           fragment, err);
    expect_same(&c, &ref, "config after a failed load");
}

static void test_file_errors(void) {
    expect_file_error("hidden = 32\nfoo = 1\n", 2, "unknown key 'foo'");
    expect_file_error("hidden = 32\n\n[x]\nepochs = -1\n", 4,
                      "key 'epochs': bad value '-1', expected an integer in "
                      "1..100000");
    expect_file_error("lr = 0.1\nlr = 0.2\n", 2,
                      "key 'lr' given twice (first on line 1)");
    expect_file_error("[a]\nhidden = 8\n[b]\nhidden = 9\n", 4, "given twice");
    expect_file_error("hidden\n", 1, "syntax error in 'hidden'");
    expect_file_error("hidden = 8\n[section\n", 2, "syntax error");
    expect_file_error("hidden = 32;x\n", 1, "bad value '32;x'");
    expect_file_error("hidden =\n", 1, "key 'hidden': empty value");
    /* A continuation line must not silently replace hidden. */
    expect_file_error("hidden = 32\n  64\n", 2, "syntax error in '64'");
    /* The first error wins, whether a syntax or a value error. */
    expect_file_error("oops\nhidden = x\n", 1, "syntax error");
    expect_file_error("hidden = x\noops\n", 1, "key 'hidden'");

    char longline[400];
    memset(longline, 'x', sizeof longline);
    memcpy(longline, "data_dir = ", 11);
    memcpy(longline + 250, "\nhidden = 1\n", 13);
    expect_file_error(longline, 1, "line too long");

    /* Indented keys are plain keys, not continuations. */
    dm_config c;
    config_defaults(&c);
    char err[2048];
    EXPECT(load_text(&c, "hidden = 32\n    lr = 0.5\n", err, sizeof err) ==
               DM_OK,
           "indented key: %s", err);
    EXPECT(c.hidden == 32 && c.lr == 0.5, "indented key values");

    /* Missing file: DM_EIO naming it. */
    char path[128];
    snprintf(path, sizeof path, "%s/missing.ini", tmpdir);
    capture_begin();
    dm_status st = config_load_file(&c, path);
    capture_end(err, sizeof err);
    EXPECT(st == DM_EIO, "missing file: status %d", (int)st);
    EXPECT(count_lines(err) == 1 && strstr(err, path) != NULL,
           "missing file message '%s'", err);

    /* A directory is not a config file. */
    capture_begin();
    st = config_load_file(&c, tmpdir);
    capture_end(err, sizeof err);
    EXPECT(st == DM_EIO, "directory: status %d", (int)st);

    /* Binary content. */
    snprintf(path, sizeof path, "%s/nul.ini", tmpdir);
    write_text(path, "hidden = 3\0\n", 12);
    capture_begin();
    st = config_load_file(&c, path);
    capture_end(err, sizeof err);
    EXPECT(st == DM_EUSAGE && strstr(err, "NUL") != NULL,
           "NUL byte: status %d '%s'", (int)st, err);
    unlink(path);
}

/* Every --set in `bad` must fail with DM_EUSAGE and change nothing. */
static void test_bad_values(void) {
    static const char *const bad[] = {
        "hidden=abc", "hidden=12x", "hidden=0", "hidden=4097", "hidden=-3",
        "hidden=1.5", "hidden=", "hidden=99999999999999999999", "hidden=1 2",
        "epochs=0", "epochs=-1", "epochs=100001", "batch=0", "batch=-256",
        "micro_batch=0", "lr=0", "lr=-1e-3", "lr=nan", "lr=inf", "lr=1e-3x",
        "lr=", "lr=1e999", "sigma=-0.1", "sigma=inf", "seed=-1", "seed=1.5",
        "seed=18446744073709551616", "seed=", "seed=+-1", "threads=0",
        "threads=257", "p_uncond=1.5", "p_uncond=-0.1", "p_uncond=nan",
        "log_every=0", "log_every=-1", "keep=0", "train_limit=-1",
        "train_limit=2147483648", "checkpoint_every=-1", "objective=Denoise",
        "objective=", "conditioning=foo", "lr_decay=linear", "bn_sync=all",
        "data_dir=", "data_dir=a ;b", "data_dir=a\tb", "data_dir=x\ny",
        /* Printed as "data_dir = ;x", which inih reads as an empty value
         * and an inline comment (found by tests/fuzz/fuzz_config.c). */
        "data_dir=;x", "data_dir= ;x",
        "foo=1", "hidden", "=5", "",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        dm_config c, ref;
        config_defaults(&c);
        config_defaults(&ref);
        char err[2048];
        dm_status st = set_capture(&c, bad[i], err, sizeof err);
        EXPECT(st == DM_EUSAGE, "--set '%s': status %d, expected DM_EUSAGE",
               bad[i], (int)st);
        EXPECT(count_lines(err) == 1 && strncmp(err, "diffmpi: --set ", 15) ==
                                            0,
               "--set '%s': message '%s'", bad[i], err);
        expect_same(&c, &ref, bad[i]);
    }

    /* The exact message format. */
    dm_config c;
    config_defaults(&c);
    char err[2048];
    set_capture(&c, "hidden=abc", err, sizeof err);
    EXPECT(strcmp(err, "diffmpi: --set hidden=abc: key 'hidden': bad value "
                       "'abc', expected an integer in 1..4096\n") == 0,
           "message: '%s'", err);
    set_capture(&c, "lr=0", err, sizeof err);
    EXPECT(strstr(err, "key 'lr': bad value '0', expected a finite number > "
                       "0") != NULL,
           "message: '%s'", err);
    set_capture(&c, "objective=Flow", err, sizeof err);
    EXPECT(strstr(err, "expected one of denoise|pure_noise|ddpm|flow") !=
               NULL,
           "message: '%s'", err);
    set_capture(&c, "foo=1", err, sizeof err);
    EXPECT(strstr(err, "--set foo=1: unknown key 'foo' (known keys: "
                       "objective") != NULL,
           "message: '%s'", err);
}

static void test_set(void) {
    dm_config c;
    config_defaults(&c);
    EXPECT(config_set(&c, "hidden=32") == DM_OK && c.hidden == 32, "hidden");
    EXPECT(config_set(&c, "  hidden = 64  ") == DM_OK && c.hidden == 64,
           "blanks around key and value");
    EXPECT(config_set(&c, "data_dir=/a b/c=d") == DM_OK &&
               strcmp(c.data_dir, "/a b/c=d") == 0,
           "value holding '=': '%s'", c.data_dir);
    EXPECT(config_set(&c, "seed=42") == DM_OK && c.seed == 42, "seed");
    EXPECT(config_set(&c, "lr=0x1p-10") == DM_OK && c.lr == 0x1p-10,
           "hex float lr");
    EXPECT(config_set(&c, "p_uncond=0") == DM_OK && c.p_uncond == 0.0,
           "p_uncond 0");
    EXPECT(config_set(&c, "threads=256") == DM_OK && c.threads == 256,
           "threads 256");
    EXPECT(config_set(&c, "objective=ddpm") == DM_OK &&
               c.objective == OBJ_DDPM,
           "objective");
    EXPECT(config_set(&c, "conditioning=time") == DM_OK &&
               c.conditioning == CONDITIONING_TIME,
           "conditioning");
    EXPECT(config_validate(&c) == DM_OK, "after --set: validate");

    /* --set after a file overrides it. */
    char err[2048];
    config_defaults(&c);
    EXPECT(load_text(&c, "hidden = 16\nepochs = 2\n", err, sizeof err) ==
               DM_OK,
           "file");
    EXPECT(config_set(&c, "epochs=9") == DM_OK, "override");
    EXPECT(c.hidden == 16 && c.epochs == 9, "override values");

    /* data_dir: as long as one INI line allows, and no longer. */
    char arg[400], value[300];
    memset(value, 'p', sizeof value);
    value[188] = '\0';
    snprintf(arg, sizeof arg, "data_dir=%s", value);
    EXPECT(config_set(&c, arg) == DM_OK, "188-char data_dir");
    value[188] = 'p';
    value[189] = '\0';
    snprintf(arg, sizeof arg, "data_dir=%s", value);
    EXPECT(set_capture(&c, arg, err, sizeof err) == DM_EUSAGE,
           "189-char data_dir");
}

static void test_round_trip(void) {
    dm_config a, b;
    config_defaults(&a);
    a.objective = OBJ_FLOW;
    a.conditioning = CONDITIONING_CLASS;
    a.hidden = 4096;
    a.epochs = 100000;
    a.batch = 1000;
    a.micro_batch = 7;
    a.lr = 0.1 + 0.2; /* 0.30000000000000004 */
    a.lr_decay = LR_DECAY_EXP;
    a.sigma = 1.0 / 3.0;
    a.seed = UINT64_MAX;
    snprintf(a.data_dir, sizeof a.data_dir, "/scratch/run 1;x/#y=z:w");
    a.train_limit = 2147483647;
    a.checkpoint_every = 123;
    a.keep = 1;
    a.threads = 3;
    a.bn_sync = BN_SYNC_RANK;
    a.log_every = 5e-324; /* smallest subnormal */
    a.p_uncond = 0.7;
    a.eval_limit = 1234;
    a.guidance = 2.5;
    a.sample_steps = 77;
    a.sampler = SAMPLER_HEUN;
    a.sample_chunk = 5;
    a.watchdog = 12.5;
    a.precision = DM_PREC_BF16;
    a.engine = DM_ENGINE_ONEDNN;
    a.conv_algo = CONV_ALGO_WINOGRAD;
    a.winograd_min_width = 14;
    a.winograd4_min_width = 28;
    a.bn_recalibrate = 6;
    snprintf(a.sample_epochs, sizeof a.sample_epochs, "2,4,9");
    snprintf(a.keep_epochs, sizeof a.keep_epochs, "3,7");
    EXPECT(config_validate(&a) == DM_OK, "round trip config validates");

    char text[4096], text2[4096];
    int n = config_to_string(&a, text, sizeof text);
    EXPECT(n == (int)strlen(text) && n > 0, "to_string length %d", n);
    EXPECT(count_lines(text) == 40, "40 lines, got %d", count_lines(text));
    EXPECT(strncmp(text, "objective = flow\nconditioning = class\n", 38) == 0,
           "to_string starts '%.40s'", text);
    EXPECT(strstr(text, "\nlr = 0.30000000000000004\n") != NULL,
           "lr printed exactly: %s", text);
    EXPECT(strstr(text, "\nseed = 18446744073709551615\n") != NULL, "seed");

    config_defaults(&b);
    char err[2048];
    capture_begin();
    dm_status st = config_load_string(&b, text, "checkpoint");
    capture_end(err, sizeof err);
    EXPECT(st == DM_OK, "load_string: %s", err);
    expect_same(&a, &b, "round trip");
    config_to_string(&b, text2, sizeof text2);
    EXPECT(strcmp(text, text2) == 0, "round trip text differs");

    /* Defaults print readably and also round-trip. */
    config_defaults(&a);
    config_to_string(&a, text, sizeof text);
    EXPECT(strstr(text, "\nlr = 0.0001\n") != NULL &&
               strstr(text, "\nsigma = 0.5\n") != NULL &&
               strstr(text, "\ndata_dir = data/mnist\n") != NULL &&
               strstr(text, "\nlog_every = 10\n") != NULL,
           "defaults text:\n%s", text);
    config_defaults(&b);
    b.hidden = 1;
    EXPECT(config_load_string(&b, text, "defaults") == DM_OK, "defaults");
    expect_same(&a, &b, "defaults round trip");

    /* Errors from a string name its origin. */
    capture_begin();
    st = config_load_string(&b, "hidden = 1\nepochs = x\n", "ckpt.h5");
    capture_end(err, sizeof err);
    EXPECT(st == DM_EUSAGE && strncmp(err, "diffmpi: ckpt.h5:2: ", 20) == 0,
           "origin in message: '%s'", err);

    /* Truncation keeps whole lines only. */
    n = config_to_string(&a, text, 40);
    EXPECT(n == (int)strlen(text) && n < 40 && n > 0 && text[n - 1] == '\n',
           "truncated to whole lines: '%s'", text);
    EXPECT(config_to_string(&a, text, 1) == 0 && text[0] == '\0',
           "bufsize 1");
}

static void expect_invalid(const dm_config *c, const char *fragment) {
    char err[2048];
    capture_begin();
    dm_status st = config_validate(c);
    capture_end(err, sizeof err);
    EXPECT(st == DM_EUSAGE, "validate: status %d, expected DM_EUSAGE for %s",
           (int)st, fragment);
    EXPECT(count_lines(err) == 1 && strstr(err, fragment) != NULL,
           "validate: '%s' not in '%s'", fragment, err);
}

static void test_validate(void) {
    dm_config c;
    config_defaults(&c);
    c.micro_batch = 257;
    expect_invalid(&c, "micro_batch = 257 is larger than batch = 256");
    c.micro_batch = 256;
    EXPECT(config_validate(&c) == DM_OK, "micro_batch == batch");

    static const struct {
        dm_objective o;
        dm_conditioning k;
        int ok;
    } combos[] = {
        {OBJ_DENOISE, CONDITIONING_NONE, 1},  {OBJ_DENOISE, CONDITIONING_TIME, 0},
        {OBJ_DENOISE, CONDITIONING_CLASS, 0}, {OBJ_PURE_NOISE, CONDITIONING_NONE, 1},
        {OBJ_PURE_NOISE, CONDITIONING_TIME, 0}, {OBJ_DDPM, CONDITIONING_NONE, 0},
        {OBJ_DDPM, CONDITIONING_TIME, 1},     {OBJ_DDPM, CONDITIONING_CLASS, 1},
        {OBJ_FLOW, CONDITIONING_NONE, 0},     {OBJ_FLOW, CONDITIONING_TIME, 1},
        {OBJ_FLOW, CONDITIONING_CLASS, 1},
    };
    for (size_t i = 0; i < sizeof combos / sizeof combos[0]; i++) {
        config_defaults(&c);
        c.objective = combos[i].o;
        c.conditioning = combos[i].k;
        char what[96];
        snprintf(what, sizeof what, "objective = %s needs conditioning",
                 config_objective_name(combos[i].o));
        if (combos[i].ok)
            EXPECT(config_validate(&c) == DM_OK, "%s + %s should be valid",
                   config_objective_name(combos[i].o),
                   config_conditioning_name(combos[i].k));
        else
            expect_invalid(&c, what);
    }

    /* Values set in code are range-checked too. */
    config_defaults(&c);
    c.hidden = 0;
    expect_invalid(&c, "hidden = 0, expected an integer in 1..4096");
    config_defaults(&c);
    c.lr = -1.0;
    expect_invalid(&c, "lr = -1");
    config_defaults(&c);
    c.threads = 1000;
    expect_invalid(&c, "threads = 1000");
    config_defaults(&c);
    c.data_dir[0] = '\0';
    expect_invalid(&c, "data_dir");
    config_defaults(&c);
    snprintf(c.data_dir, sizeof c.data_dir, ";x");
    expect_invalid(&c, "data_dir = ;x");

    /* Every path config_set accepts reads back from config_to_string's text
     * unchanged, ';' included wherever inih does not take it for a
     * comment. */
    static const char *const paths[] = {"a;b", "a; b", "/x/;", "#x", "=x",
                                        ":x", "[x]"};
    for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++) {
        char arg[64], text[4096];
        dm_config d;
        config_defaults(&c);
        config_defaults(&d);
        snprintf(arg, sizeof arg, "data_dir=%s", paths[i]);
        EXPECT(config_set(&c, arg) == DM_OK, "--set %s", arg);
        config_to_string(&c, text, sizeof text);
        EXPECT(config_load_string(&d, text, "round trip") == DM_OK &&
                   strcmp(d.data_dir, paths[i]) == 0,
               "data_dir '%s' came back as '%s'", paths[i], d.data_dir);
    }
}

static void test_sample_epochs(void) {
    dm_config c;
    config_defaults(&c);
    EXPECT(strcmp(c.sample_epochs, "1,5,10,15,20") == 0 && c.guidance == 5.0 &&
               c.sample_steps == 0, "diffusion sampling defaults");
    c.epochs = 12;
    EXPECT(config_sample_epoch(&c, 1) && config_sample_epoch(&c, 10) &&
               config_sample_epoch(&c, 12) && !config_sample_epoch(&c, 2) &&
               !config_sample_epoch(&c, 15),
           "sample epochs 1,5,10 and always the last");
    const char *bad[] = {"sample_epochs=0", "sample_epochs=5,3", "sample_epochs=1,,2",
                         "sample_epochs=a", "sample_epochs=1,", "sample_epochs=,1",
                         "sample_epochs=1 2", "guidance=-1", "sample_steps=-3"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        dm_config d = c;
        EXPECT(config_set(&d, bad[i]) == DM_EUSAGE, "rejects %s", bad[i]);
    }
    EXPECT(config_set(&c, "sample_epochs=3") == DM_OK && config_sample_epoch(&c, 3) &&
               !config_sample_epoch(&c, 1), "sample_epochs=3");

    /* keep_epochs: none by default; no "always the last" as for sampling. */
    EXPECT(c.keep_epochs[0] == '\0' && !config_keep_epoch(&c, 1) && !config_keep_epoch(&c, 12),
           "keep_epochs empty by default, keeps nothing");
    EXPECT(config_set(&c, "keep_epochs=2,12,15") == DM_OK && config_keep_epoch(&c, 2) &&
               config_keep_epoch(&c, 12) && !config_keep_epoch(&c, 15) &&
               !config_keep_epoch(&c, 3),
           "keep_epochs=2,12,15 keeps 2 and 12 (15 is past the run)");
    EXPECT(config_set(&c, "keep_epochs=") == DM_OK && !config_keep_epoch(&c, 2),
           "keep_epochs= (empty) keeps nothing");
    EXPECT(config_set(&c, "keep_epochs=4,4") == DM_EUSAGE, "rejects keep_epochs=4,4");
}

int main(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/test_config_XXXXXX");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    snprintf(errpath, sizeof errpath, "%s/stderr.txt", tmpdir);
    test_defaults();
    test_key_list();
    test_file_every_key();
    test_file_errors();
    test_bad_values();
    test_set();
    test_round_trip();
    test_validate();
    unlink(errpath);
    EXPECT(rmdir(tmpdir) == 0, "temp dir %s not empty at the end", tmpdir);
    test_sample_epochs();
    return test_finish("test_config");
}
