# Integration tests that train tiny models under mpirun and read the HDF5
# outputs back with Debian's h5py. They need MNIST in data/mnist
# (tools/fetch_mnist.sh); .ci/run fetches it.
set(DM_PY /usr/bin/python3)
set(DM_TEST_ENV
    OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
    OMPI_MCA_plm_rsh_agent=false OMPI_MCA_pml=ob1 OMPI_MCA_rmaps_base_oversubscribe=1
    OPENBLAS_NUM_THREADS=1)
foreach(name ranks resume faults outputs diffusion_outputs bench kill diskfull watchdog
             help reduce torch_module precision checksums multihost score ema
             bn_recal samplers layouts)
  add_test(NAME integration.${name}
           COMMAND ${DM_PY} ${CMAKE_CURRENT_LIST_DIR}/test_${name}.py
                   $<TARGET_FILE:diffmpi> ${CMAKE_SOURCE_DIR})
  set_tests_properties(integration.${name} PROPERTIES LABELS integration
                       TIMEOUT 900 ENVIRONMENT "${DM_TEST_ENV}")
endforeach()
# Namespaces cannot be made everywhere (not root): that test says why and
# exits 77, which CTest reports as skipped.
set_tests_properties(integration.multihost PROPERTIES SKIP_RETURN_CODE 77)
