//! A model: its description ([`ModelSpec`]) and its weights, independent of the device that
//! runs it. The CPU engine ([`crate::backend::cpu::nn`]) and the GPU network
//! ([`crate::backend::gpu::network`]) both take a `&Model`.

use std::collections::BTreeMap;

use super::spec::ModelSpec;
use crate::{Error, Result};

/// A tensor of f32 values in row-major order.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// A model description with its weights (`layer/kernel`, `layer/bias`, Keras layouts).
#[derive(Debug, Clone)]
pub struct Model {
    pub spec: ModelSpec,
    pub weights: BTreeMap<String, Tensor>,
}

impl Model {
    /// Check every weight the description needs is present with its shape, and no other.
    pub fn new(spec: ModelSpec, weights: BTreeMap<String, Tensor>) -> Result<Self> {
        let need = spec.weight_shapes()?;
        for (name, shape) in &need {
            match weights.get(name) {
                None => {
                    return Err(Error::Config(format!(
                        "weight '{name}' (shape {shape:?}) is missing"
                    )))
                }
                Some(t) if &t.shape != shape => {
                    return Err(Error::Shape {
                        what: format!("weight '{name}'"),
                        expected: format!("{shape:?}"),
                        found: t.shape.clone(),
                    })
                }
                Some(t) if t.data.len() != shape.iter().product::<usize>() => {
                    return Err(Error::Shape {
                        what: format!("weight '{name}' data"),
                        expected: format!("{} values", shape.iter().product::<usize>()),
                        found: vec![t.data.len()],
                    })
                }
                Some(_) => {}
            }
        }
        if let Some(extra) = weights.keys().find(|k| !need.iter().any(|(n, _)| n == *k)) {
            return Err(Error::Config(format!(
                "weight '{extra}' belongs to no layer of model '{}' (wrong architecture?)",
                spec.name
            )));
        }
        Ok(Model { spec, weights })
    }

    /// Deterministic random weights (He-normal-like uniform kernels, small biases), for
    /// benchmarks and tests.
    pub fn random(spec: ModelSpec, seed: u64) -> Result<Self> {
        use rand_xoshiro::rand_core::{Rng, SeedableRng};
        let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(seed);
        let mut uni = move || (rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0;
        spec.check_memory(0)?;
        let mut weights = BTreeMap::new();
        for (name, shape) in spec.weight_shapes()? {
            let n: usize = shape.iter().product();
            let fan_in = if shape.len() == 4 {
                if name.contains("transpose") {
                    shape[0] * shape[1] * shape[3]
                } else {
                    shape[0] * shape[1] * shape[2]
                }
            } else {
                shape[0]
            };
            // uniform with the He-normal variance 2/fan_in: half-width sqrt(6/fan_in)
            let scale = if shape.len() == 1 {
                0.05
            } else {
                (6.0 / fan_in.max(1) as f32).sqrt()
            };
            let data = (0..n).map(|_| uni() * scale).collect();
            weights.insert(name, Tensor { shape, data });
        }
        Model::new(spec, weights)
    }
}
