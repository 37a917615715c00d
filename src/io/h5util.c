/* h5util.c: checked HDF5 helpers and file-system durability helpers. */
#include "diffmpi/h5util.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "diffmpi/version.h"

void h5_quiet(void) {
    DM_CHECK(H5Eset_auto2(H5E_DEFAULT, NULL, NULL) >= 0,
             "cannot switch off HDF5's error printing");
}

static dm_status fail(const char *file, const char *what, const char *name) {
    dm_error("%s: cannot %s '%s'", file, what, name);
    return DM_EIO;
}

int h5_checksums = 1;

herr_t h5_set_checksum(hid_t dcpl, int ndim, const hsize_t *dims) {
    if (!h5_checksums || ndim < 1) return 0;
    hsize_t chunk[H5S_MAX_RANK];
    for (int i = 0; i < ndim; i++) {
        if (dims[i] == 0) return 0; /* nothing to protect */
        chunk[i] = dims[i];
    }
    /* One chunk per dataset: the checksum covers it whole. HDF5 caps a
     * chunk at 4 GiB; split the leading dimension beyond that. */
    hsize_t bytes = 8;
    for (int i = 1; i < ndim; i++) bytes *= chunk[i];
    hsize_t lead = ((hsize_t)1 << 31) / (bytes ? bytes : 1);
    if (lead < 1) return 0;
    if (chunk[0] > lead) chunk[0] = lead;
    if (H5Pset_chunk(dcpl, ndim, chunk) < 0) return -1;
    return H5Pset_fletcher32(dcpl);
}

/* HDF5 objects below are closed on every path. A close is checked like any
 * other call: a dataset or attribute whose close fails may not be on disk,
 * so the write it belongs to has failed. */
static dm_status write_ds(hid_t loc, const char *file, const char *name,
                          hid_t ftype, hid_t mtype, const void *data, int ndim,
                          const hsize_t *dims) {
    hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
    if (lcpl < 0) return fail(file, "create link property list for", name);
    hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    herr_t st = dcpl < 0 ? -1 : H5Pset_create_intermediate_group(lcpl, 1);
    if (st >= 0) st = h5_set_checksum(dcpl, ndim, dims);
    hid_t sp = st < 0 ? -1 : H5Screate_simple(ndim, dims, NULL);
    hid_t ds = sp < 0 ? -1 : H5Dcreate2(loc, name, ftype, sp, lcpl, dcpl, H5P_DEFAULT);
    st = ds < 0 ? -1 : H5Dwrite(ds, mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, data);
    if (ds >= 0 && H5Dclose(ds) < 0) st = -1;
    if (sp >= 0 && H5Sclose(sp) < 0) st = -1;
    if (dcpl >= 0 && H5Pclose(dcpl) < 0) st = -1;
    if (H5Pclose(lcpl) < 0) st = -1;
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

htri_t h5_exists(hid_t loc, const char *name) {
    char buf[1024];
    if ((size_t)snprintf(buf, sizeof buf, "%s", name) >= sizeof buf) return -1;
    for (char *p = buf;; p++) {
        if ((*p != '/' || p == buf) && *p != '\0') continue;
        char end = *p;
        *p = '\0';
        htri_t e = H5Lexists(loc, buf, H5P_DEFAULT);
        if (e <= 0 || end == '\0') return e;
        *p = end;
    }
}

dm_status h5_shape(hid_t loc, const char *file, const char *name, int *ndim,
                   hsize_t *dims, H5T_class_t *cls, size_t *tsize) {
    htri_t e = h5_exists(loc, name);
    if (e < 0) return fail(file, "look up", name);
    if (e == 0) {
        dm_error("%s: dataset '%s' is missing", file, name);
        return DM_EIO;
    }
    hid_t ds = H5Dopen2(loc, name, H5P_DEFAULT);
    if (ds < 0) return fail(file, "open dataset", name);
    hid_t sp = H5Dget_space(ds), ty = H5Dget_type(ds);
    int nd = sp < 0 ? -1 : H5Sget_simple_extent_ndims(sp);
    H5T_class_t c = ty < 0 ? H5T_NO_CLASS : H5Tget_class(ty);
    size_t ts = ty < 0 ? 0 : H5Tget_size(ty);
    /* dims has room for 4: ask for the extent only once nd is known. */
    int ok = nd >= 0 && nd <= 4 && c != H5T_NO_CLASS && ts > 0 &&
             H5Sget_simple_extent_dims(sp, dims, NULL) >= 0;
    if (ty >= 0 && H5Tclose(ty) < 0) ok = 0;
    if (sp >= 0 && H5Sclose(sp) < 0) ok = 0;
    if (H5Dclose(ds) < 0) ok = 0;
    if (!ok) return fail(file, "read the shape of", name);
    *ndim = nd;
    *cls = c;
    *tsize = ts;
    return DM_OK;
}

/* Does dataset ds carry a Fletcher32 checksum? 1, 0, or -1 on an error. */
static int has_checksum(hid_t ds) {
    hid_t dcpl = H5Dget_create_plist(ds);
    if (dcpl < 0) return -1;
    unsigned flags;
    size_t nelmts = 0;
    char fname[32];
    unsigned config;
    herr_t got = H5Pget_filter_by_id2(dcpl, H5Z_FILTER_FLETCHER32, &flags, &nelmts, NULL,
                                      sizeof fname, fname, &config);
    H5Pclose(dcpl); /* a read-only query: its result changes nothing */
    return got >= 0;
}

/* A failed read: was it the checksum? Read again with checking off; if
 * that works, the data are there but not what was written. */
static dm_status read_failed(hid_t ds, const char *file, const char *name, hid_t memtype,
                             void *data) {
    int sum = has_checksum(ds);
    hid_t dxpl = sum > 0 ? H5Pcreate(H5P_DATASET_XFER) : -1;
    int readable = dxpl >= 0 && H5Pset_edc_check(dxpl, H5Z_DISABLE_EDC) >= 0 &&
                   H5Dread(ds, memtype, H5S_ALL, H5S_ALL, dxpl, data) >= 0;
    if (dxpl >= 0) H5Pclose(dxpl); /* after a failure: changes nothing */
    if (readable) {
        dm_error("%s: dataset '%s' is damaged (checksum mismatch)", file, name);
        return DM_EIO;
    }
    dm_error("%s: cannot read dataset '%s' (damaged file?)", file, name);
    return DM_EIO;
}

dm_status h5_read_any(hid_t loc, const char *file, const char *name,
                      hid_t memtype, void *data) {
    hid_t ds = H5Dopen2(loc, name, H5P_DEFAULT);
    if (ds < 0) return fail(file, "open dataset", name);
    dm_status st = DM_OK;
    if (H5Dread(ds, memtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) < 0)
        st = read_failed(ds, file, name, memtype, data);
    if (H5Dclose(ds) < 0 && st == DM_OK) st = fail(file, "close dataset", name);
    return st;
}

typedef struct {
    const char *file;
    long checked, unprotected;
    dm_status st;
} verify_ctx;

/* Read one dataset whole (the read checks its checksum). */
static herr_t verify_one(hid_t obj, const char *name, const H5O_info_t *info, void *data) {
    verify_ctx *v = data;
    if (info->type != H5O_TYPE_DATASET) return 0;
    hid_t ds = H5Dopen2(obj, name, H5P_DEFAULT);
    if (ds < 0) {
        v->st = fail(v->file, "open dataset", name);
        return -1;
    }
    hid_t ty = H5Dget_type(ds), sp = H5Dget_space(ds);
    hssize_t n = sp < 0 ? -1 : H5Sget_simple_extent_npoints(sp);
    if (sp >= 0) H5Sclose(sp); /* read-only: closing changes nothing */
    size_t ts = ty < 0 ? 0 : H5Tget_size(ty);
    int sum = has_checksum(ds);
    if (ty < 0 || n < 0 || ts == 0 || sum < 0) {
        v->st = fail(v->file, "read the type and shape of", name);
    } else {
        void *buf = dm_malloc((size_t)n * ts + 1);
        if (H5Dread(ds, ty, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) < 0) {
            char full[512];
            snprintf(full, sizeof full, "/%s", name);
            v->st = read_failed(ds, v->file, full, ty, buf);
        }
        free(buf);
        if (sum) v->checked++;
        else v->unprotected++;
    }
    if (ty >= 0) H5Tclose(ty); /* read-only objects: closing changes nothing */
    H5Dclose(ds);
    return v->st == DM_OK ? 0 : -1;
}

dm_status h5_verify_all(hid_t f, const char *file, long *checked, long *unprotected) {
    verify_ctx v = {file, 0, 0, DM_OK};
    herr_t r = H5Ovisit2(f, H5_INDEX_NAME, H5_ITER_NATIVE, verify_one, &v, H5O_INFO_BASIC);
    if (v.st != DM_OK) return v.st;
    if (r < 0) {
        dm_error("%s: cannot walk the datasets (damaged file?)", file);
        return DM_EIO;
    }
    *checked = v.checked;
    *unprotected = v.unprotected;
    return DM_OK;
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
    htri_t old = H5Aexists(loc, name);
    if (old < 0 || (old > 0 && H5Adelete(loc, name) < 0))
        return fail(file, "write attribute", name);
    hid_t sp = n ? H5Screate_simple(1, &n, NULL) : H5Screate(H5S_SCALAR);
    hid_t a = sp < 0 ? -1 : H5Acreate2(loc, name, ftype, sp, H5P_DEFAULT, H5P_DEFAULT);
    herr_t st = a < 0 ? -1 : H5Awrite(a, mtype, v);
    if (a >= 0 && H5Aclose(a) < 0) st = -1;
    if (sp >= 0 && H5Sclose(sp) < 0) st = -1;
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

/* A variable-length string type of character set cset (-1 on failure). */
static hid_t vlen_str_type(H5T_cset_t cset) {
    hid_t ty = H5Tcopy(H5T_C_S1);
    if (ty < 0) return -1;
    if (H5Tset_size(ty, H5T_VARIABLE) < 0 || H5Tset_cset(ty, cset) < 0) {
        H5Tclose(ty); /* after a failure: its result changes nothing */
        return -1;
    }
    return ty;
}

dm_status h5_attr_str(hid_t loc, const char *file, const char *name,
                      const char *v) {
    /* Variable-length UTF-8 string: what h5py reads back as str. */
    hid_t ty = vlen_str_type(H5T_CSET_UTF8);
    if (ty < 0) return fail(file, "create a string type for", name);
    dm_status st = write_attr(loc, file, name, ty, ty, &v, 0);
    if (H5Tclose(ty) < 0 && st == DM_OK) st = fail(file, "write attribute", name);
    return st;
}

dm_status h5_attr_build(hid_t loc, const char *file) {
    char v[128], libs[512];
    dm_version_text(v, sizeof v);
    dm_libraries_text(libs, sizeof libs);
    DM_TRY(h5_attr_str(loc, file, "diffmpi_version", v));
    return h5_attr_str(loc, file, "libraries", libs);
}

static dm_status read_attr(hid_t loc, const char *file, const char *name,
                           hid_t mtype, void *v) {
    if (H5Aexists(loc, name) <= 0) {
        dm_error("%s: attribute '%s' is missing", file, name);
        return DM_EIO;
    }
    hid_t a = H5Aopen(loc, name, H5P_DEFAULT);
    herr_t st = a < 0 ? -1 : H5Aread(a, mtype, v);
    if (a >= 0 && H5Aclose(a) < 0) st = -1;
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

/* Attribute a, of file type ft, as a string into buf. 0 on failure. */
static int read_str(hid_t a, hid_t ft, char *buf, size_t bufsize) {
    if (H5Tget_class(ft) != H5T_STRING || H5Tis_variable_str(ft) <= 0) return 0;
    H5T_cset_t cset = H5Tget_cset(ft);
    hid_t ty = cset < 0 ? -1 : vlen_str_type(cset);
    if (ty < 0) return 0;
    char *s = NULL;
    int ok = H5Aread(a, ty, &s) >= 0 && s != NULL;
    if (ok) snprintf(buf, bufsize, "%s", s);
    if (s && H5free_memory(s) < 0) ok = 0;
    if (H5Tclose(ty) < 0) ok = 0;
    return ok;
}

dm_status h5_get_str(hid_t loc, const char *file, const char *name, char *buf,
                     size_t bufsize) {
    if (H5Aexists(loc, name) <= 0) {
        dm_error("%s: attribute '%s' is missing", file, name);
        return DM_EIO;
    }
    hid_t a = H5Aopen(loc, name, H5P_DEFAULT);
    hid_t ft = a < 0 ? -1 : H5Aget_type(a);
    int ok = ft >= 0 && read_str(a, ft, buf, bufsize);
    if (ft >= 0 && H5Tclose(ft) < 0) ok = 0;
    if (a >= 0 && H5Aclose(a) < 0) ok = 0;
    return ok ? DM_OK : fail(file, "read string attribute", name);
}

dm_status h5_close_file(hid_t f, const char *file, const char *what,
                        dm_status st) {
    /* After a failure the first error is the one reported: the result of
     * the close changes nothing. */
    if (H5Fclose(f) >= 0 || st != DM_OK) return st;
    dm_error("%s: cannot close %s", file, what);
    return DM_EIO;
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

dm_status fs_commit_tmp(const char *tmp, const char *path) {
    DM_TRY(fs_sync_file(tmp));
    if (rename(tmp, path) != 0) {
        dm_error("%s: cannot rename into place: %s", path, strerror(errno));
        return DM_EIO;
    }
    return DM_OK;
}

hid_t h5_create_tmp(const char *path, char *tmp, size_t size) {
    snprintf(tmp, size, "%s.tmp", path);
    hid_t f = H5Fcreate(tmp, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    if (f < 0)
        dm_error("%s: cannot create output file (as %s; does the directory exist and is it "
                 "writable?)", path, tmp);
    return f;
}

dm_status h5_commit_tmp(hid_t f, const char *tmp, const char *path, dm_status st) {
    st = h5_close_file(f, path, "output file (disk full?)", st);
    if (st == DM_OK) st = fs_commit_tmp(tmp, path);
    if (st != DM_OK) unlink(tmp);
    return st;
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
