// The phasing kernels compiled for the emulator, with their launch table.
#include "../phasing.cu"

#define CDEMU_PHASING(X) \
    X(cd_modulus_project) X(cd_support_update) X(cd_record_errors) X(cd_poisson_llk) X(cd_record_llk) X(cd_sw_blur_rows) X(cd_sw_blur_cols) X(cd_sw_threshold) X(cd_sw_stats) X(cd_sw_level) X(cd_sw_count) X(cd_sw_guard) X(cd_sw_apply) X(cd_ml_start) X(cd_ml_weights) X(cd_ml_grad) X(cd_ml_beta) X(cd_ml_direction) X(cd_ml_line) X(cd_ml_newton) X(cd_ml_step) X(cd_ml_finish) X(cd_pop_gather) X(cd_pop_moduli) X(cd_pop_xpower) X(cd_pop_argmax) X(cd_pop_overlap) X(cd_pop_align_finish) X(cd_pop_apply) X(cd_pop_recombine) X(cd_pop_mean) X(cd_pop_gram) X(cd_pop_gram_finish) X(cd_pop_modes) X(cd_pop_rotate) X(cd_pop_scatter) X(cd_support_fraction)
CDEMU_FAMILY(phasing, CDEMU_PHASING)
