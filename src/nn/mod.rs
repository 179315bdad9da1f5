//! The paper's encoder-decoder family, independent of the device that runs it: the model
//! description ([`spec`]), a model with its weights ([`model`]), the safetensors model file
//! ([`store`]), Keras checkpoint conversion ([`keras`]), the paper's network as a preset
//! ([`presets`]) and batched prediction over a pattern stack ([`predict`]). The engines
//! that run a model live with their device: [`crate::backend::cpu::nn`] and
//! [`crate::backend::gpu::network`].
//!
//! ```
//! use cdiphase::backend::cpu::nn::{Mode, Network, Options, Runner};
//! use cdiphase::nn::{presets, spec::Preprocess, Model};
//! // the paper's topology at 16x16 with 1/16 of the channels, random weights
//! let spec = presets::spinn(16, 1.0 / 16.0, Preprocess::Max).unwrap();
//! let model = Model::random(spec, 1).unwrap();
//! let net = Network::new(&model, Mode::F32).unwrap();
//! let mut run = Runner::new(&net, 2, Options { threads: 1, ..Default::default() }).unwrap();
//! let out = run.run(&vec![0.5; 2 * 16 * 16], 2).unwrap();
//! assert_eq!(out.len(), 2 * 16 * 16);
//! ```

pub mod bundled;
pub mod keras;
pub mod model;
pub mod predict;
pub mod presets;
pub mod spec;
pub mod store;

pub use model::{Model, Tensor};
pub use spec::{Activation, ModelSpec, Op, Padding, Preprocess};
