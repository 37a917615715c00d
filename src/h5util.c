/* h5util.c: checked HDF5 helpers and file-system durability helpers. */
#include "diffmpi/h5util.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

void h5_quiet(void) { H5Eset_auto2(H5E_DEFAULT, NULL, NULL); }

static dm_status fail(const char *file, const char *what, const char *name) {
    dm_error("%s: cannot %s '%s'", file, what, name);
    return DM_EIO;
}

static dm_status write_ds(hid_t loc, const char *file, const char *name,
                          hid_t ftype, hid_t mtype, const void *data, int ndim,
                          const hsize_t *dims) {
    hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
    if (lcpl < 0) return fail(file, "create link property list for", name);
    H5Pset_create_intermediate_group(lcpl, 1);
    hid_t sp = H5Screate_simple(ndim, dims, NULL);
    hid_t ds = sp < 0 ? -1 : H5Dcreate2(loc, name, ftype, sp, lcpl, H5P_DEFAULT, H5P_DEFAULT);
    herr_t st = ds < 0 ? -1 : H5Dwrite(ds, mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, data);
    if (ds >= 0) H5Dclose(ds);
    if (sp >= 0) H5Sclose(sp);
    H5Pclose(lcpl);
    return st < 0 ? fail(file, "write dataset", name) : DM_OK;
}

dm_status h5_write_f32(hid_t loc, const char *file, const char *name,
                       const float *data, int ndim, const hsize_t *dims) {
    return write_ds(loc, file, name, H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, data, ndim, dims);
}
dm_status h5_write_i32(hid_t loc, const char *file, const char *name,
                       const int32_t *data, int ndim, const hsize_t *dims) {
    return write_ds(loc, file, name, H5T_STD_I32LE, H5T_NATIVE_INT32, data, ndim, dims);
}
dm_status h5_write_f64(hid_t loc, const char *file, const char *name,
                       const double *data, int ndim, const hsize_t *dims) {
    return write_ds(loc, file, name, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, data, ndim, dims);
}

dm_status h5_shape(hid_t loc, const char *file, const char *name, int *ndim,
                   hsize_t *dims, H5T_class_t *cls, size_t *tsize) {
    if (H5Lexists(loc, name, H5P_DEFAULT) <= 0) {
        dm_error("%s: dataset '%s' is missing", file, name);
        return DM_EIO;
    }
    hid_t ds = H5Dopen2(loc, name, H5P_DEFAULT);
    if (ds < 0) return fail(file, "open dataset", name);
    hid_t sp = H5Dget_space(ds), ty = H5Dget_type(ds);
    int nd = sp < 0 ? -1 : H5Sget_simple_extent_ndims(sp);
    dm_status st = DM_OK;
    if (nd < 0 || nd > 4 || ty < 0) {
        st = fail(file, "read the shape of", name);
    } else {
        *ndim = nd;
        H5Sget_simple_extent_dims(sp, dims, NULL);
        *cls = H5Tget_class(ty);
        *tsize = H5Tget_size(ty);
    }
    if (ty >= 0) H5Tclose(ty);
    if (sp >= 0) H5Sclose(sp);
    H5Dclose(ds);
    return st;
}

dm_status h5_read_any(hid_t loc, const char *file, const char *name,
                      hid_t memtype, void *data) {
    hid_t ds = H5Dopen2(loc, name, H5P_DEFAULT);
    if (ds < 0) return fail(file, "open dataset", name);
    herr_t st = H5Dread(ds, memtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, data);
    H5Dclose(ds);
    return st < 0 ? fail(file, "read dataset", name) : DM_OK;
}

dm_status h5_read_f32(hid_t loc, const char *file, const char *name,
                      float *data, int ndim, const hsize_t *dims) {
    int nd;
    hsize_t got[4];
    H5T_class_t cls;
    size_t tsize;
    dm_status st = h5_shape(loc, file, name, &nd, got, &cls, &tsize);
    if (st != DM_OK) return st;
    if (cls != H5T_FLOAT || tsize != 4) {
        dm_error("%s: dataset '%s' is not float32", file, name);
        return DM_EIO;
    }
    int same = nd == ndim;
    for (int i = 0; same && i < nd; i++) same = got[i] == dims[i];
    if (!same) {
        char a[96] = "", b[96] = "";
        for (int i = 0; i < nd; i++)
            snprintf(a + strlen(a), sizeof a - strlen(a), "%s%llu", i ? "," : "",
                     (unsigned long long)got[i]);
        for (int i = 0; i < ndim; i++)
            snprintf(b + strlen(b), sizeof b - strlen(b), "%s%llu", i ? "," : "",
                     (unsigned long long)dims[i]);
        dm_error("%s: dataset '%s' has shape [%s], expected [%s]", file, name, a, b);
        return DM_EIO;
    }
    return h5_read_any(loc, file, name, H5T_NATIVE_FLOAT, data);
}

static dm_status write_attr(hid_t loc, const char *file, const char *name,
                            hid_t ftype, hid_t mtype, const void *v, hsize_t n) {
    if (H5Aexists(loc, name) > 0) H5Adelete(loc, name);
    hid_t sp = n ? H5Screate_simple(1, &n, NULL) : H5Screate(H5S_SCALAR);
    hid_t a = sp < 0 ? -1 : H5Acreate2(loc, name, ftype, sp, H5P_DEFAULT, H5P_DEFAULT);
    herr_t st = a < 0 ? -1 : H5Awrite(a, mtype, v);
    if (a >= 0) H5Aclose(a);
    if (sp >= 0) H5Sclose(sp);
    return st < 0 ? fail(file, "write attribute", name) : DM_OK;
}

dm_status h5_attr_i64(hid_t loc, const char *file, const char *name, int64_t v) {
    return write_attr(loc, file, name, H5T_STD_I64LE, H5T_NATIVE_INT64, &v, 0);
}
dm_status h5_attr_u64(hid_t loc, const char *file, const char *name, uint64_t v) {
    return write_attr(loc, file, name, H5T_STD_U64LE, H5T_NATIVE_UINT64, &v, 0);
}
dm_status h5_attr_f64(hid_t loc, const char *file, const char *name, double v) {
    return write_attr(loc, file, name, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, &v, 0);
}
dm_status h5_attr_f64v(hid_t loc, const char *file, const char *name,
                       const double *v, int n) {
    return write_attr(loc, file, name, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, v,
                      (hsize_t)n);
}

dm_status h5_attr_str(hid_t loc, const char *file, const char *name,
                      const char *v) {
    /* Variable-length UTF-8 string: what h5py reads back as str. */
    hid_t ty = H5Tcopy(H5T_C_S1);
    if (ty < 0) return fail(file, "create a string type for", name);
    H5Tset_size(ty, H5T_VARIABLE);
    H5Tset_cset(ty, H5T_CSET_UTF8);
    dm_status st = write_attr(loc, file, name, ty, ty, &v, 0);
    H5Tclose(ty);
    return st;
}

static dm_status read_attr(hid_t loc, const char *file, const char *name,
                           hid_t mtype, void *v) {
    if (H5Aexists(loc, name) <= 0) {
        dm_error("%s: attribute '%s' is missing", file, name);
        return DM_EIO;
    }
    hid_t a = H5Aopen(loc, name, H5P_DEFAULT);
    herr_t st = a < 0 ? -1 : H5Aread(a, mtype, v);
    if (a >= 0) H5Aclose(a);
    return st < 0 ? fail(file, "read attribute", name) : DM_OK;
}

dm_status h5_get_i64(hid_t loc, const char *file, const char *name, int64_t *v) {
    return read_attr(loc, file, name, H5T_NATIVE_INT64, v);
}
dm_status h5_get_u64(hid_t loc, const char *file, const char *name, uint64_t *v) {
    return read_attr(loc, file, name, H5T_NATIVE_UINT64, v);
}
dm_status h5_get_f64(hid_t loc, const char *file, const char *name, double *v) {
    return read_attr(loc, file, name, H5T_NATIVE_DOUBLE, v);
}

dm_status h5_get_str(hid_t loc, const char *file, const char *name, char *buf,
                     size_t bufsize) {
    if (H5Aexists(loc, name) <= 0) {
        dm_error("%s: attribute '%s' is missing", file, name);
        return DM_EIO;
    }
    hid_t a = H5Aopen(loc, name, H5P_DEFAULT);
    hid_t ft = a < 0 ? -1 : H5Aget_type(a);
    dm_status st = DM_OK;
    if (ft < 0 || H5Tget_class(ft) != H5T_STRING || !H5Tis_variable_str(ft)) {
        st = fail(file, "read string attribute", name);
    } else {
        hid_t ty = H5Tcopy(H5T_C_S1);
        H5Tset_size(ty, H5T_VARIABLE);
        H5Tset_cset(ty, H5Tget_cset(ft));
        char *s = NULL;
        if (H5Aread(a, ty, &s) < 0 || s == NULL) {
            st = fail(file, "read string attribute", name);
        } else {
            snprintf(buf, bufsize, "%s", s);
            H5free_memory(s);
        }
        H5Tclose(ty);
    }
    if (ft >= 0) H5Tclose(ft);
    if (a >= 0) H5Aclose(a);
    return st;
}

dm_status fs_sync_file(const char *path) {
    int fd = open(path, O_RDONLY);
    if (fd < 0 || fsync(fd) != 0) {
        dm_error("%s: cannot sync to disk: %s", path, strerror(errno));
        if (fd >= 0) close(fd);
        return DM_EIO;
    }
    close(fd);
    return DM_OK;
}

dm_status fs_sync_dir_of(const char *path) {
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s", path);
    return fs_sync_file(dirname(tmp));
}

dm_status fs_mkdirs(const char *path) {
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s", path);
    for (char *p = tmp + 1;; p++) {
        int end = *p == '\0';
        if (*p == '/' || end) {
            *p = '\0';
            if (mkdir(tmp, 0777) != 0 && errno != EEXIST) {
                dm_error("%s: cannot create directory: %s", tmp, strerror(errno));
                return DM_EIO;
            }
            if (end) break;
            *p = '/';
        }
    }
    struct stat sb;
    if (stat(path, &sb) != 0 || !S_ISDIR(sb.st_mode)) {
        dm_error("%s: not a directory", path);
        return DM_EIO;
    }
    return DM_OK;
}
