//! The model file: safetensors, weights named `<layer>/kernel` and `<layer>/bias` in Keras
//! layouts (Conv2D (kh,kw,in,out), Conv2DTranspose (kh,kw,out,in), Dense (in,out)), stored
//! as f32, f16 or bf16 (converted to f32 on load); the architecture and preprocessing are
//! the [`ModelSpec`] as JSON under the metadata key `cdiphase.model`.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use super::model::{Model, Tensor};
use super::spec::ModelSpec;
use crate::{Error, Result};

/// Metadata key holding the model description.
pub const META_MODEL: &str = "cdiphase.model";
/// Metadata key holding the file format version.
pub const META_FORMAT: &str = "cdiphase.format";
const FORMAT: &str = "cdiphase-nn-1";

/// Storage type of the weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightDtype {
    F32,
    F16,
    Bf16,
}

impl std::str::FromStr for WeightDtype {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" | "float32" => Ok(WeightDtype::F32),
            "f16" | "float16" => Ok(WeightDtype::F16),
            "bf16" | "bfloat16" => Ok(WeightDtype::Bf16),
            o => Err(Error::Config(format!(
                "weight dtype '{o}': expected f32, f16 or bf16"
            ))),
        }
    }
}

/// Serialise a model to safetensors bytes.
pub fn to_bytes(model: &Model, dtype: WeightDtype) -> Result<Vec<u8>> {
    let mut raw: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, t) in &model.weights {
        let bytes: Vec<u8> = match dtype {
            WeightDtype::F32 => bytemuck::cast_slice(&t.data).to_vec(),
            WeightDtype::F16 => t
                .data
                .iter()
                .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
                .collect(),
            WeightDtype::Bf16 => t
                .data
                .iter()
                .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
                .collect(),
        };
        raw.push((name.clone(), t.shape.clone(), bytes));
    }
    let st = match dtype {
        WeightDtype::F32 => Dtype::F32,
        WeightDtype::F16 => Dtype::F16,
        WeightDtype::Bf16 => Dtype::BF16,
    };
    let mut views = Vec::new();
    for (name, shape, bytes) in &raw {
        let v = TensorView::new(st, shape.clone(), bytes)
            .map_err(|e| Error::Config(format!("tensor '{name}': {e}")))?;
        views.push((name.clone(), v));
    }
    let mut meta = HashMap::new();
    meta.insert(META_MODEL.to_string(), model.spec.to_json());
    meta.insert(META_FORMAT.to_string(), FORMAT.to_string());
    safetensors::serialize(views, Some(meta))
        .map_err(|e| Error::Config(format!("serialising the model: {e}")))
}

/// Write a model file atomically.
pub fn save(model: &Model, dtype: WeightDtype, path: &Path) -> Result<()> {
    let bytes = to_bytes(model, dtype)?;
    crate::io::write_atomic(path, |w| {
        use std::io::Write;
        w.write_all(&bytes).map_err(|e| Error::io(path, e))
    })
}

/// Parse a model from safetensors bytes (`path` only names the file in errors).
pub fn from_bytes(path: &Path, bytes: &[u8]) -> Result<Model> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| {
        Error::format(
            path,
            format!("not a readable safetensors model file (truncated or corrupt?): {e}"),
        )
    })?;
    let (_, meta) = SafeTensors::read_metadata(bytes)
        .map_err(|e| Error::format(path, format!("safetensors header: {e}")))?;
    let md = meta.metadata().as_ref();
    let json = md.and_then(|m| m.get(META_MODEL)).ok_or_else(|| {
        Error::format(
            path,
            format!(
                "safetensors file without the '{META_MODEL}' metadata: not a cdiphase model \
                 (make one with `cdiphase convert`)"
            ),
        )
    })?;
    let spec = ModelSpec::from_json(json).map_err(|e| Error::format(path, e))?;
    let mut weights = BTreeMap::new();
    for (name, view) in st.iter() {
        let d = view.data();
        let data: Vec<f32> = match view.dtype() {
            Dtype::F32 => d
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Dtype::F16 => d
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Dtype::BF16 => d
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            o => {
                return Err(Error::format(
                    path,
                    format!("tensor '{name}' has dtype {o:?}; expected F32, F16 or BF16"),
                ))
            }
        };
        if let Some(i) = data.iter().position(|v| !v.is_finite()) {
            return Err(Error::format(
                path,
                format!("tensor '{name}' holds a non-finite value at element {i}"),
            ));
        }
        weights.insert(
            name.to_string(),
            Tensor {
                shape: view.shape().to_vec(),
                data,
            },
        );
    }
    Model::new(spec, weights).map_err(|e| Error::format(path, e))
}

/// Read a model file.
pub fn load(path: &Path) -> Result<Model> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    from_bytes(path, &bytes)
}
