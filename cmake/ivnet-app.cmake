# Included by this repository's own applications (samples/, tests/) before find_package(Zephyr):
# makes Zephyr find the ivnet module, apply its `ivnet` snippet (QEMU ivshmem-doorbell board
# files) unless another network snippet was chosen with -S, and add the tuned network profile.
get_filename_component(IVNET_ROOT ${CMAKE_CURRENT_LIST_DIR}/.. ABSOLUTE)
list(APPEND EXTRA_ZEPHYR_MODULES ${IVNET_ROOT})
if(NOT "${SNIPPET}" MATCHES "ivnet|virtio-net-baseline|ivshmem2-eth")
  list(APPEND SNIPPET ivnet)
endif()
list(APPEND EXTRA_CONF_FILE ${IVNET_ROOT}/prj.conf)
