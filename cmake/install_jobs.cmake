# Installs jobs/ as share/diffmpi/jobs with the paths a source checkout
# runs from (build/diffmpi, jobs/configs/..., jobs/slurm/train-job.sh,
# $SLURM_SUBMIT_DIR/jobs/launch.sh) rewritten to the installed ones, so that
# an installed job script runs the installed binary with the installed
# configs from any working directory (its OUT stays relative to it).
# jobs/quickstart.sh (set-up and a judge for a checkout) is left out.
# Run by `cmake --install` (install(SCRIPT) in CMakeLists.txt, which sets
# DM_SOURCE_DIR).
set(src "${DM_SOURCE_DIR}/jobs")
set(share "${CMAKE_INSTALL_PREFIX}/share/diffmpi")
set(dst "$ENV{DESTDIR}${share}/jobs")
file(GLOB_RECURSE files RELATIVE "${src}" "${src}/*")
foreach(f IN LISTS files)
  if(f STREQUAL "quickstart.sh")
    continue()
  endif()
  file(READ "${src}/${f}" text)
  if(f MATCHES "\\.(sh|sbatch)$")
    string(REPLACE "\${SLURM_SUBMIT_DIR:-.}/jobs/" "${share}/jobs/" text "${text}")
    string(REPLACE "jobs/slurm/train-job.sh" "${share}/jobs/slurm/train-job.sh" text "${text}")
    string(REPLACE "jobs/configs/" "${share}/jobs/configs/" text "${text}")
    string(REPLACE "build/diffmpi" "${CMAKE_INSTALL_PREFIX}/bin/diffmpi" text "${text}")
  endif()
  message(STATUS "Installing: ${dst}/${f}")
  get_filename_component(dir "${dst}/${f}" DIRECTORY)
  file(MAKE_DIRECTORY "${dir}")
  file(WRITE "${dst}/${f}" "${text}")
  if(f MATCHES "\\.(sh|sbatch)$")
    file(CHMOD "${dst}/${f}" PERMISSIONS OWNER_READ OWNER_WRITE OWNER_EXECUTE
         GROUP_READ GROUP_EXECUTE WORLD_READ WORLD_EXECUTE)
  endif()
endforeach()
