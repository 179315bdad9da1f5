//! `cdiphase convert`: a Keras checkpoint to a safetensors model file.

use super::{arch_preset, check_paths};
use anyhow::{Context, Result};
use cdiphase::nn::keras::{self, Arch};
use cdiphase::nn::spec::Preprocess;
use cdiphase::nn::store::{self, WeightDtype};
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
pub struct ConvertArgs {
    /// Keras checkpoint: legacy .h5 (Keras 2 or 3), Keras 3 .keras, .weights.h5, or a
    /// weights-only save_weights file (then give --arch or --arch-config).
    input: PathBuf,
    /// Output model file (safetensors, written atomically).
    #[arg(short, long)]
    output: PathBuf,
    /// Architecture preset for weights-only files: `spinn` (the paper's network, 128x128)
    /// or `spinn:SIZE[:WIDTH]`. Layers are matched by name, or by order when the file's
    /// names differ (Keras default names such as conv2d, conv2d_1, ...).
    #[arg(long, conflicts_with = "arch_config")]
    arch: Option<String>,
    /// Architecture from a Keras model JSON (`model.to_json()` or a .keras config.json).
    #[arg(long)]
    arch_config: Option<PathBuf>,
    /// Weight storage type: f32, f16 or bf16 (always computed in f32).
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Input preprocessing stored with the model: max (x / max) or log1p-max.
    #[arg(long, default_value = "max")]
    preprocess: String,
}

pub fn run(a: ConvertArgs) -> Result<()> {
    let mut inputs = vec![("input", a.input.as_path())];
    if let Some(c) = &a.arch_config {
        inputs.push(("--arch-config", c.as_path()));
    }
    check_paths(&inputs, &[("--output", &a.output)], &[])?;
    let pre: Preprocess = a.preprocess.parse()?;
    let dtype: WeightDtype = a.dtype.parse()?;
    let arch = match (&a.arch, &a.arch_config) {
        (Some(s), _) => Arch::Given(arch_preset(s, pre)?),
        (None, Some(p)) => Arch::Given(
            keras::config_from_file(p, pre)
                .with_context(|| format!("reading the architecture from {}", p.display()))?,
        ),
        (None, None) => Arch::FromFile,
    };
    let (model, matching) = keras::convert_matched(&a.input, arch, pre)
        .with_context(|| format!("converting {}", a.input.display()))?;
    if matching == keras::Matching::ByOrder {
        eprintln!(
            "{}: layer names differ from the architecture's; weights matched by layer \
             order, as Keras's load_weights does, and checked by shape",
            a.input.display()
        );
    }
    store::save(&model, dtype, &a.output)
        .with_context(|| format!("writing {}", a.output.display()))?;
    eprintln!(
        "{}: model '{}', {} layers, {} parameters, input {:?}, preprocessing {:?}, {:?} weights",
        a.output.display(),
        model.spec.name,
        model.spec.layers.len(),
        model.spec.params()?,
        model.spec.input,
        model.spec.preprocess,
        dtype
    );
    Ok(())
}
