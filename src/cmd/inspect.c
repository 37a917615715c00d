/* inspect.c: print what an HDF5 file of diffmpi holds. */
#include "diffmpi/inspect.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "diffmpi/ckpt.h"
#include "diffmpi/h5util.h"

/* One line per dataset: its path, element type and shape. A negative
 * return stops H5Ovisit2, which then fails. */
static herr_t visit(hid_t obj, const char *name, const H5O_info_t *info,
                    void *data) {
    (void)data;
    if (info->type != H5O_TYPE_DATASET) return 0;
    hid_t ds = H5Dopen2(obj, name, H5P_DEFAULT);
    if (ds < 0) return -1;
    hid_t sp = H5Dget_space(ds), ty = H5Dget_type(ds);
    hsize_t dims[H5S_MAX_RANK];
    int nd = sp < 0 ? -1 : H5Sget_simple_extent_ndims(sp);
    H5T_class_t cls = ty < 0 ? H5T_NO_CLASS : H5Tget_class(ty);
    size_t tsize = ty < 0 ? 0 : H5Tget_size(ty);
    int ok = nd >= 0 && cls != H5T_NO_CLASS && tsize > 0 &&
             H5Sget_simple_extent_dims(sp, dims, NULL) >= 0;
    if (ok) {
        printf("  /%-40s %s%zu [", name, cls == H5T_FLOAT ? "float" : "int", 8 * tsize);
        for (int i = 0; i < nd; i++) printf("%s%llu", i ? "," : "", (unsigned long long)dims[i]);
        printf("]\n");
    }
    if (ty >= 0 && H5Tclose(ty) < 0) ok = 0;
    if (sp >= 0 && H5Sclose(sp) < 0) ok = 0;
    if (H5Dclose(ds) < 0) ok = 0;
    return ok ? 0 : -1;
}

/* Attributes are optional here: one that is absent (or whose presence
 * cannot be told) is not printed. */
static int has_attr(hid_t f, const char *name) { return H5Aexists(f, name) > 0; }

static void print_attr_i(hid_t f, const char *path, const char *name) {
    int64_t v;
    if (has_attr(f, name) && h5_get_i64(f, path, name, &v) == DM_OK)
        printf("%s: %lld\n", name, (long long)v);
}

/* How a samples file was drawn (sample_cmd.c, samples.h): the sampler's
 * attributes of group loc (at `where`), in one line, when it has them. */
static void print_sampler(hid_t loc, const char *path, const char *where) {
    char smp[32] = "", spc[32] = "";
    int64_t steps = 0, evals = 0;
    double eta = 0, g = 0;
    if (!has_attr(loc, "sampler") || h5_get_str(loc, path, "sampler", smp, sizeof smp) != DM_OK)
        return;
    printf("%ssampler: %s", where, smp);
    if (has_attr(loc, "steps") && h5_get_i64(loc, path, "steps", &steps) == DM_OK)
        printf(", %lld steps", (long long)steps);
    if (has_attr(loc, "evaluations") && h5_get_i64(loc, path, "evaluations", &evals) == DM_OK)
        printf(" (%lld network evaluations)", (long long)evals);
    if (has_attr(loc, "spacing") && h5_get_str(loc, path, "spacing", spc, sizeof spc) == DM_OK)
        printf(", spacing %s", spc);
    if (has_attr(loc, "eta") && h5_get_f64(loc, path, "eta", &eta) == DM_OK)
        printf(", eta %g", eta);
    if (has_attr(loc, "guidance") && h5_get_f64(loc, path, "guidance", &g) == DM_OK)
        printf(", guidance %g", g);
    printf("\n");
}

/* The sampler line of every /samples/epoch_NNNN group of a samples.h5. */
static herr_t visit_groups(hid_t obj, const char *name, const H5O_info_t *info, void *data) {
    const char *path = data;
    if (info->type != H5O_TYPE_GROUP || strncmp(name, "samples/epoch_", 14) != 0) return 0;
    hid_t g = H5Gopen2(obj, name, H5P_DEFAULT);
    if (g < 0) return -1;
    char where[96];
    snprintf(where, sizeof where, "/%s: ", name);
    print_sampler(g, path, where);
    return H5Gclose(g) < 0 ? -1 : 0;
}

static dm_status describe(hid_t f, const char *path) {
    char fmt[64] = "";
    if (has_attr(f, "format")) h5_get_str(f, path, "format", fmt, sizeof fmt);
    printf("%s: %s\n", path, fmt[0] ? fmt : "HDF5 file");
    const char *ints[] = {"format_version", "step", "epoch", "batch_in_epoch", "adam_step", "hidden"};
    for (size_t i = 0; i < sizeof ints / sizeof *ints; i++) print_attr_i(f, path, ints[i]);
    double lr;
    if (has_attr(f, "lr") && h5_get_f64(f, path, "lr", &lr) == DM_OK) printf("lr: %.9g\n", lr);
    print_sampler(f, path, "");
    if (H5Ovisit2(f, H5_INDEX_NAME, H5_ITER_INC, visit_groups, (void *)path,
                  H5O_INFO_BASIC) < 0) {
        dm_error("%s: cannot read the list of groups (damaged file?)", path);
        return DM_EIO;
    }
    char cfg[8192];
    for (int i = 0; i < 2; i++) { /* what built the file (files before 2026-12-08: none) */
        const char *name = i ? "libraries" : "diffmpi_version";
        if (has_attr(f, name) && h5_get_str(f, path, name, cfg, sizeof cfg) == DM_OK)
            printf("%s: %s\n", i ? "libraries" : "written by diffmpi", cfg);
    }
    if (has_attr(f, "config") && h5_get_str(f, path, "config", cfg, sizeof cfg) == DM_OK)
        printf("config:\n%s", cfg);
    printf("datasets:\n");
    if (H5Ovisit2(f, H5_INDEX_NAME, H5_ITER_NATIVE, visit, NULL, H5O_INFO_BASIC) < 0) {
        fflush(stdout);
        dm_error("%s: cannot read the list of datasets (damaged file?)", path);
        return DM_EIO;
    }
    return DM_OK;
}

/* Every checksum of the file: a checkpoint's through ckpt_verify (its
 * datasets and its training state), any other file's datasets. */
static dm_status verify(hid_t f, const char *path, int checkpoint) {
    long sums = 0, plain = 0;
    fflush(stdout);
    if (checkpoint) DM_TRY(ckpt_verify(path, &sums));
    else DM_TRY(h5_verify_all(f, path, &sums, &plain));
    if (checkpoint && sums == 0) {
        printf("checksums: none (written before checksums); every dataset reads\n");
        return DM_OK;
    }
    printf("checksums: all %ld checksums good", sums);
    if (plain) printf("; %ld dataset(s) without a checksum (written before checksums)", plain);
    printf("\n");
    return DM_OK;
}

static dm_status describe_and_verify(hid_t f, const char *path) {
    DM_TRY(describe(f, path));
    char fmt[64] = "";
    if (has_attr(f, "format")) h5_get_str(f, path, "format", fmt, sizeof fmt);
    return verify(f, path, strcmp(fmt, CKPT_FORMAT) == 0);
}

dm_status inspect_file(const char *path) {
    h5_quiet();
    if (access(path, R_OK) != 0) {
        dm_error("%s: cannot read file", path);
        return DM_EIO;
    }
    if (H5Fis_hdf5(path) <= 0) {
        dm_error("%s: not an HDF5 file", path);
        return DM_EIO;
    }
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY | H5F_ACC_SWMR_READ, H5P_DEFAULT);
    if (f < 0) f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0) {
        dm_error("%s: cannot open HDF5 file (damaged, or open for writing without SWMR?)", path);
        return DM_EIO;
    }
    return h5_close_file(f, path, "file", describe_and_verify(f, path));
}
