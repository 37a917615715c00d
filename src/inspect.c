/* inspect.c: print what an HDF5 file of diffmpi holds. */
#include "diffmpi/inspect.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "diffmpi/h5util.h"

static herr_t visit(hid_t obj, const char *name, const H5O_info_t *info,
                    void *data) {
    (void)data;
    if (info->type != H5O_TYPE_DATASET) return 0;
    hid_t ds = H5Dopen2(obj, name, H5P_DEFAULT);
    if (ds < 0) return 0;
    hid_t sp = H5Dget_space(ds), ty = H5Dget_type(ds);
    hsize_t dims[8];
    int nd = H5Sget_simple_extent_ndims(sp);
    if (nd > 8) nd = 8;
    H5Sget_simple_extent_dims(sp, dims, NULL);
    const char *kind = H5Tget_class(ty) == H5T_FLOAT ? "float" : "int";
    printf("  /%-40s %s%zu [", name, kind, 8 * H5Tget_size(ty));
    for (int i = 0; i < nd; i++) printf("%s%llu", i ? "," : "", (unsigned long long)dims[i]);
    printf("]\n");
    H5Tclose(ty);
    H5Sclose(sp);
    H5Dclose(ds);
    return 0;
}

static void print_attr_i(hid_t f, const char *path, const char *name) {
    int64_t v;
    if (H5Aexists(f, name) > 0 && h5_get_i64(f, path, name, &v) == DM_OK)
        printf("%s: %lld\n", name, (long long)v);
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
    char fmt[64] = "";
    if (H5Aexists(f, "format") > 0) h5_get_str(f, path, "format", fmt, sizeof fmt);
    printf("%s: %s\n", path, fmt[0] ? fmt : "HDF5 file");
    const char *ints[] = {"format_version", "step", "epoch", "batch_in_epoch", "adam_step", "hidden"};
    for (size_t i = 0; i < sizeof ints / sizeof *ints; i++) print_attr_i(f, path, ints[i]);
    double lr;
    if (H5Aexists(f, "lr") > 0 && h5_get_f64(f, path, "lr", &lr) == DM_OK) printf("lr: %.9g\n", lr);
    static char cfg[8192];
    if (H5Aexists(f, "config") > 0 && h5_get_str(f, path, "config", cfg, sizeof cfg) == DM_OK)
        printf("config:\n%s", cfg);
    printf("datasets:\n");
    H5Ovisit2(f, H5_INDEX_NAME, H5_ITER_NATIVE, visit, NULL, H5O_INFO_BASIC);
    H5Fclose(f);
    return DM_OK;
}
