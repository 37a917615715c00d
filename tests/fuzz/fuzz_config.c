/* fuzz_config.c: libFuzzer target for the configuration parser
 * (src/io/config.c): config_load_string, config_set, config_validate and the
 * config_to_string -> config_load_string round trip.
 *
 * The input, up to its first NUL byte, is INI text. Per input:
 *  1. config_load_string(&c, text) from the defaults. On failure the status
 *     must be DM_EUSAGE (or DM_EIO, inih's own failure) and c must be
 *     byte-for-byte untouched.
 *  2. On success: the round trip below on c.
 *  3. config_set(&s, first line of the input), s starting from c if step 1
 *     succeeded, else from the defaults. On failure the status must be
 *     DM_EUSAGE and s untouched; on success the round trip on s.
 * Round trip of a configuration a (every value in it was accepted by the
 * parser): config_to_string(a) must write one "key = value" line per key
 * (as many as for the defaults) into an ample buffer; config_load_string of that text into fresh defaults must
 * succeed, print back the identical text and give the same config_validate
 * verdict as a; config_sample_epoch must say yes for the last epoch.
 * Any violation abort()s. Build and run with tools/fuzz.sh; replay one input
 * with build-fuzz/fuzz_config FILE (parser errors are then printed).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "diffmpi/config.h"

#define TEXT_SIZE 8192

static int n_keys; /* lines of config_to_string(defaults) */

static _Noreturn void violated(const char *what, const char *text) {
    fprintf(stderr, "fuzz_config: invariant violated: %s\n", what);
    if (text) fprintf(stderr, "--- text:\n%s\n---\n", text);
    fflush(stderr);
    abort();
}

static int count_lines(const char *s) {
    int n = 0;
    for (; *s; s++) n += *s == '\n';
    return n;
}

static void round_trip(const dm_config *a) {
    static char t1[TEXT_SIZE], t2[TEXT_SIZE];
    dm_status valid = config_validate(a);
    int n1 = config_to_string(a, t1, sizeof t1);
    if (n1 <= 0 || n1 != (int)strlen(t1) || t1[n1 - 1] != '\n' ||
        count_lines(t1) != n_keys)
        violated("config_to_string did not write every key", t1);

    dm_config b;
    config_defaults(&b);
    if (config_load_string(&b, t1, "round trip") != DM_OK)
        violated("config_to_string output does not parse back", t1);
    int n2 = config_to_string(&b, t2, sizeof t2);
    if (n2 != n1 || strcmp(t1, t2) != 0)
        violated("round trip changed the text", t2);
    if (config_validate(&b) != valid)
        violated("round trip changed the config_validate verdict", t1);
    if (!config_sample_epoch(a, a->epochs))
        violated("the last epoch does not sample", t1);
    for (int e = 0; e <= 32; e++)
        if (config_sample_epoch(a, e) != config_sample_epoch(&b, e))
            violated("round trip changed the sample epochs", t1);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    static char text[TEXT_SIZE];
    dm_config c;
    config_defaults(&c);
    config_to_string(&c, text, sizeof text);
    n_keys = count_lines(text);
    if (n_keys < 1) violated("no keys in the defaults' text", text);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *text = malloc(size + 1);
    if (!text) return 0;
    memcpy(text, data, size);
    text[size] = '\0';

    dm_config c, before;
    config_defaults(&c);
    memcpy(&before, &c, sizeof c);
    dm_status st = config_load_string(&c, text, "fuzz");
    if (st == DM_OK) {
        round_trip(&c);
    } else {
        if (st != DM_EUSAGE && st != DM_EIO)
            violated("config_load_string: unexpected status", text);
        if (memcmp(&c, &before, sizeof c) != 0)
            violated("config_load_string changed c and failed", text);
    }

    /* The first line as a --set argument. */
    char *nl = strchr(text, '\n');
    if (nl) *nl = '\0';
    dm_config s;
    memcpy(&s, &c, sizeof s);
    memcpy(&before, &s, sizeof s);
    st = config_set(&s, text);
    if (st == DM_OK) {
        round_trip(&s);
    } else {
        if (st != DM_EUSAGE) violated("config_set: unexpected status", text);
        if (memcmp(&s, &before, sizeof s) != 0)
            violated("config_set changed the config and failed", text);
    }
    free(text);
    return 0;
}
