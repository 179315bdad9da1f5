//! Typed wrappers of the CUDA kernels, one module per kernel family (`kernels/nn.cu`,
//! `kernels/phasing.cu`): each computes its launch shape and packs its arguments, so the
//! orchestration never spells a kernel name or an argument list itself.

pub mod nn;
pub mod phasing;
