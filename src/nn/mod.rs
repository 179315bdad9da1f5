//! The paper's encoder-decoder family: model description ([`spec`]), the safetensors model
//! file ([`store`]), Keras checkpoint conversion ([`keras`]), the paper's network as a preset
//! ([`spinn`]) and CPU inference ([`cpu`]).
//!
//! ```
//! use cdiphase::nn::{cpu, spinn, spec::Preprocess};
//! // the paper's topology at 16x16 with 1/16 of the channels, random weights
//! let spec = spinn::spinn(16, 1.0 / 16.0, Preprocess::Max).unwrap();
//! let model = cpu::Model::random(spec, 1).unwrap();
//! let net = cpu::Network::new(&model, cpu::Mode::F32).unwrap();
//! let mut run = cpu::Runner::new(&net, 2, cpu::Options { threads: 1, ..Default::default() }).unwrap();
//! let out = run.run(&vec![0.5; 2 * 16 * 16], 2).unwrap();
//! assert_eq!(out.len(), 2 * 16 * 16);
//! ```

pub mod bench;
pub mod cpu;
mod direct;
pub mod keras;
pub mod predict;
pub mod spec;
pub mod spinn;
pub mod store;
mod winograd;

pub use cpu::{Mode, Model, Network, Options, Runner, Tensor};
pub use spec::{Activation, ModelSpec, Op, Padding, Preprocess};
