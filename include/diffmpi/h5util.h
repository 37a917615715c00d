/* h5util.h: small checked wrappers over the HDF5 C API. Every call's result
 * is checked; failures print one line naming the file and object and return
 * DM_EIO. HDF5's own error stack printing is switched off (h5_quiet) so the
 * user sees only our line.
 *
 *   hid_t f = H5Fcreate(...);
 *   h5_write_f32(f, path, "/model/inc/0/weight", w, 4, dims);
 *   h5_read_f32(f, path, "/model/inc/0/weight", w, 4, dims);  // shape/dtype
 *                                                             // checked
 *   st = h5_close_file(f, path, "checkpoint", st);            // close checked
 */
#ifndef DIFFMPI_H5UTIL_H
#define DIFFMPI_H5UTIL_H

#include <hdf5.h>
#include <stdint.h>
#include "diffmpi/common.h"

void h5_quiet(void);
/* Does the link `name` (a path, absolute or relative to loc) exist? Unlike
 * H5Lexists this is 0, not a failure, when a group on the way is missing.
 * Returns 1, 0, or negative on an HDF5 error. */
htri_t h5_exists(hid_t loc, const char *name);
/* Every dataset written here is one chunk (split only beyond 2 GiB) with
 * HDF5's Fletcher32 checksum, which HDF5 verifies on every read, ours and
 * h5py's alike; a read whose checksum fails is reported as "dataset X is
 * damaged (checksum mismatch)". h5_checksums = 0 writes plain contiguous
 * datasets (the cost measurement of docs/design.md; old-file tests). */
extern int h5_checksums;
/* Chunk and checksum settings for a new dataset of these dims on dcpl
 * (nothing for empty or scalar datasets, or with h5_checksums = 0). */
herr_t h5_set_checksum(hid_t dcpl, int ndim, const hsize_t *dims);
/* Read every dataset of file f whole, so that each checksum is verified:
 * *checked datasets carry one, *unprotected do not. One line naming the
 * first damaged dataset and DM_EIO when one fails. */
dm_status h5_verify_all(hid_t f, const char *file, long *checked, long *unprotected);

/* Write a float32 dataset (intermediate groups created). */
dm_status h5_write_f32(hid_t loc, const char *file, const char *name,
                       const float *data, int ndim, const hsize_t *dims);
dm_status h5_write_i32(hid_t loc, const char *file, const char *name,
                       const int32_t *data, int ndim, const hsize_t *dims);
dm_status h5_write_f64(hid_t loc, const char *file, const char *name,
                       const double *data, int ndim, const hsize_t *dims);
/* Read a float32 dataset whose shape must equal dims exactly. */
dm_status h5_read_f32(hid_t loc, const char *file, const char *name,
                      float *data, int ndim, const hsize_t *dims);
/* Shape of a dataset (ndim <= 4), its type class and size. */
dm_status h5_shape(hid_t loc, const char *file, const char *name, int *ndim,
                   hsize_t *dims, H5T_class_t *cls, size_t *tsize);
dm_status h5_read_any(hid_t loc, const char *file, const char *name,
                      hid_t memtype, void *data);

/* Attributes on an object (path "/" for the root). */
dm_status h5_attr_i64(hid_t loc, const char *file, const char *name, int64_t v);
dm_status h5_attr_u64(hid_t loc, const char *file, const char *name, uint64_t v);
dm_status h5_attr_f64(hid_t loc, const char *file, const char *name, double v);
dm_status h5_attr_str(hid_t loc, const char *file, const char *name,
                      const char *v);
/* The attributes `diffmpi_version` and `libraries` (version.h) on loc:
 * what built the file, written beside its `config`. */
dm_status h5_attr_build(hid_t loc, const char *file);
dm_status h5_attr_f64v(hid_t loc, const char *file, const char *name,
                       const double *v, int n);
dm_status h5_get_i64(hid_t loc, const char *file, const char *name, int64_t *v);
dm_status h5_get_u64(hid_t loc, const char *file, const char *name, uint64_t *v);
dm_status h5_get_f64(hid_t loc, const char *file, const char *name, double *v);
/* Read a string attribute into buf (always NUL-terminated). */
dm_status h5_get_str(hid_t loc, const char *file, const char *name, char *buf,
                     size_t bufsize);

/* Close file f, owned by the caller, after work on it ended with status st.
 * When st is DM_OK and the close fails (the last buffered writes did not
 * reach the disk), prints "<file>: cannot close <what>" and returns DM_EIO;
 * otherwise returns st (after a failure the close's result is ignored).
 *
 *   return h5_close_file(f, path, "output file (disk full?)",
 *                        write_body(f, path));
 */
dm_status h5_close_file(hid_t f, const char *file, const char *what,
                        dm_status st);

/* fsync a file and its directory (durability before rename/delete). */
dm_status fs_sync_file(const char *path);
dm_status fs_sync_dir_of(const char *path);
/* A finished temporary file into place: fsync tmp, rename it to path (one
 * line naming path on failure). The caller removes tmp when this fails. */
dm_status fs_commit_tmp(const char *tmp, const char *path);
/* An output file written whole or not at all: h5_create_tmp creates
 * "<path>.tmp" (its name into tmp; -1 and one line naming path when it
 * cannot), h5_commit_tmp closes it after writes that ended with st, syncs
 * and renames it to path, and removes it on any failure.
 *
 *   char tmp[4200];
 *   hid_t f = h5_create_tmp(path, tmp, sizeof tmp);
 *   if (f < 0) return DM_EIO;
 *   return h5_commit_tmp(f, tmp, path, write_body(f, path));
 */
hid_t h5_create_tmp(const char *path, char *tmp, size_t size);
dm_status h5_commit_tmp(hid_t f, const char *tmp, const char *path, dm_status st);
/* mkdir -p */
dm_status fs_mkdirs(const char *path);

#endif
