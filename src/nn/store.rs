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
    let bytes = safetensors::serialize(views, Some(meta))
        .map_err(|e| Error::Config(format!("serialising the model: {e}")))?;
    canonical_header(bytes)
}

/// The same safetensors file with its JSON header's keys in sorted order, so that one
/// model always gives the same bytes (`safetensors` writes the metadata from a `HashMap`,
/// whose order changes from run to run). The header keeps its length and padding.
fn canonical_header(mut bytes: Vec<u8>) -> Result<Vec<u8>> {
    let bad = |m: &str| Error::Config(format!("serialising the model: {m}"));
    let n = bytes
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])) as usize)
        .ok_or_else(|| bad("no header"))?;
    let header = bytes.get(8..8 + n).ok_or_else(|| bad("short header"))?;
    // serde_json's maps are sorted (BTreeMap) without its preserve_order feature
    let v: serde_json::Value =
        serde_json::from_slice(header).map_err(|e| bad(&format!("header: {e}")))?;
    let mut sorted = serde_json::to_vec(&v).map_err(|e| bad(&format!("header: {e}")))?;
    if sorted.len() > n {
        return Err(bad("sorted header longer than the original"));
    }
    sorted.resize(n, b' ');
    bytes[8..8 + n].copy_from_slice(&sorted);
    Ok(bytes)
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
    if let Some(f) = md.and_then(|m| m.get(META_FORMAT)) {
        if f != FORMAT {
            return Err(Error::format(
                path,
                format!(
                    "model file format '{f}' is not supported by this version of cdiphase (it reads '{FORMAT}')"
                ),
            ));
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_files_are_reproducible_and_versions_checked() {
        let spec = crate::nn::presets::spinn(8, 0.05, Default::default()).unwrap();
        let m = Model::random(spec, 3).unwrap();
        let first = to_bytes(&m, WeightDtype::F32).unwrap();
        // a fresh HashMap per call: its order differs between calls unless sorted
        for _ in 0..8 {
            assert_eq!(to_bytes(&m, WeightDtype::F32).unwrap(), first);
        }
        let back = from_bytes(Path::new("m"), &first).unwrap();
        assert_eq!(back.weights, m.weights);
        let mut other = first.clone();
        let at = other
            .windows(FORMAT.len())
            .position(|w| w == FORMAT.as_bytes())
            .unwrap();
        other[at + FORMAT.len() - 1] = b'9';
        let e = from_bytes(Path::new("m"), &other).unwrap_err().to_string();
        assert!(e.contains("'cdiphase-nn-9' is not supported"), "{e}");
    }
}
