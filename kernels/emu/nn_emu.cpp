// The network kernels compiled for the emulator, with their launch table.
#include "../nn.cu"

#define CDEMU_NN(X)                                                                                  \
    X(cd_nn_conv2d) X(cd_nn_conv2d_general) X(cd_nn_convT_weights) X(cd_nn_conv_transpose2d)          \
        X(cd_nn_maxpool2) X(cd_nn_maxpool) X(cd_nn_upsample) X(cd_nn_dense) X(cd_nn_activate)         \
            X(cd_nn_copy_channels) X(cd_nn_normalize_max) X(cd_nn_support_threshold)
CDEMU_FAMILY(nn, CDEMU_NN)
