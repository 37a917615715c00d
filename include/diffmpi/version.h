/* version.h: what built this program, for `diffmpi --version` and for every
 * output file (the attributes `diffmpi_version` and `libraries`, beside
 * `config`).
 *
 *   char v[128], libs[512];
 *   dm_version_text(v, sizeof v);       // "0.1.0 (git 53aa698e1c2f)"
 *   dm_libraries_text(libs, sizeof libs);
 *
 * The version is the CMake project's; the commit is `git describe --always
 * --dirty` of the source tree at build time ("unknown" outside git). The
 * libraries are asked at run time (the ones actually loaded): Open MPI,
 * HDF5, oneDNN (where built with it), OpenBLAS, libpng, zlib. */
#ifndef DIFFMPI_VERSION_H
#define DIFFMPI_VERSION_H

#include <stddef.h>

void dm_version_text(char *buf, size_t size);
void dm_libraries_text(char *buf, size_t size);

#endif
