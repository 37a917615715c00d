/* version.c: the build's version and commit, and the libraries loaded
 * (version.h). */
#include "diffmpi/version.h"

#include <cblas.h>
#include <hdf5.h>
#include <mpi.h>
#include <png.h>
#include <stdio.h>
#include <string.h>
#include <zlib.h>
#ifdef DM_HAVE_ONEDNN
#include <oneapi/dnnl/dnnl.h>
#endif

#include "dm_version.h"

void dm_version_text(char *buf, size_t size) {
    snprintf(buf, size, "%s (git %s)", DM_VERSION, DM_GIT_COMMIT);
}

void dm_libraries_text(char *buf, size_t size) {
    /* MPI_Get_library_version may be called before MPI_Init; Open MPI's
     * text is "Open MPI v4.1.4, package: ...": its first clause. */
    char mpi[MPI_MAX_LIBRARY_VERSION_STRING] = "";
    int len = 0;
    MPI_Get_library_version(mpi, &len);
    mpi[strcspn(mpi, ",\n")] = '\0';
    unsigned h5maj = 0, h5min = 0, h5rel = 0;
    H5get_libversion(&h5maj, &h5min, &h5rel);
    /* "OpenBLAS 0.3.21 DYNAMIC_ARCH ...": name and version */
    char blas[64];
    snprintf(blas, sizeof blas, "%s", openblas_get_config());
    char *sp = strchr(blas, ' ');
    if (sp && (sp = strchr(sp + 1, ' '))) *sp = '\0';
    char dnnl[48] = "";
#ifdef DM_HAVE_ONEDNN
    const dnnl_version_t *d = dnnl_version();
    snprintf(dnnl, sizeof dnnl, ", oneDNN %d.%d.%d", d->major, d->minor, d->patch);
#endif
    snprintf(buf, size, "%s, HDF5 %u.%u.%u%s, %s, libpng %s, zlib %s", mpi, h5maj, h5min,
             h5rel, dnnl, blas, png_get_libpng_ver(NULL), zlibVersion());
}
