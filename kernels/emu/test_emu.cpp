// The emulator's own test kernels, with their launch table.
#include "../test_kernels.cu"

#define CDEMU_TEST(X) X(cd_test_block_reduce) X(cd_test_warp) X(cd_test_atomics)
CDEMU_FAMILY(test, CDEMU_TEST)
