//! Keras checkpoints to [`Model`]: the architecture from a Keras model config (JSON; Keras 2
//! and Keras 3, Sequential and Functional) and the weights from
//!
//! * legacy `.h5` (`model.save("x.h5")`): root attribute `model_config`, weights under
//!   `model_weights/<layer>/...`, named `kernel:0`/`bias:0` (Keras 2) or `kernel`/`bias`
//!   (Keras 3); weights-only legacy files (Keras 2 `save_weights("x.h5")`) have the layer
//!   groups at the root;
//! * Keras 3 `.weights.h5`: `layers/<layer>/vars/0` (kernel), `/1` (bias);
//! * Keras 3 `.keras`: a zip with `config.json` and `model.weights.h5`.
//!
//! Weights-only files need the architecture from elsewhere (`--arch spinn` or a config).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use serde_json::Value;

use super::model::{Model, Tensor};
use super::spec::{Activation, LayerSpec, ModelSpec, Op, Padding, Preprocess};
use crate::io::hdf5::{guard, H5};
use crate::{Error, Result};

fn cfg_err(layer: &str, msg: impl std::fmt::Display) -> Error {
    Error::Config(format!("Keras layer '{layer}': {msg}"))
}

fn pair(
    v: Option<&Value>,
    layer: &str,
    key: &str,
    default: Option<[usize; 2]>,
) -> Result<[usize; 2]> {
    match v {
        None | Some(Value::Null) => {
            default.ok_or_else(|| cfg_err(layer, format!("'{key}' is missing")))
        }
        Some(Value::Number(n)) => {
            let x = n
                .as_u64()
                .ok_or_else(|| cfg_err(layer, format!("'{key}' = {n}")))?
                as usize;
            Ok([x, x])
        }
        Some(Value::Array(a)) if a.len() == 2 => {
            let g = |i: usize| {
                a[i].as_u64()
                    .map(|x| x as usize)
                    .ok_or_else(|| cfg_err(layer, format!("'{key}' = {v:?}", v = a)))
            };
            Ok([g(0)?, g(1)?])
        }
        Some(o) => Err(cfg_err(
            layer,
            format!("'{key}' = {o}: expected two integers"),
        )),
    }
}

fn activation(v: Option<&Value>, layer: &str) -> Result<Activation> {
    let s = match v {
        None | Some(Value::Null) => "linear".to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Object(o)) => o
            .get("config")
            .and_then(|c| c.get("name"))
            .or_else(|| o.get("class_name"))
            .and_then(|s| s.as_str())
            .unwrap_or("?")
            .to_ascii_lowercase(),
        Some(o) => return Err(cfg_err(layer, format!("activation {o}"))),
    };
    Activation::parse(&s, layer)
}

fn padding(v: Option<&Value>, layer: &str) -> Result<Padding> {
    match v.and_then(|v| v.as_str()).unwrap_or("valid") {
        "same" => Ok(Padding::Same),
        "valid" => Ok(Padding::Valid),
        o => Err(cfg_err(
            layer,
            format!("padding '{o}' is not supported (same, valid)"),
        )),
    }
}

fn check_channels_last(c: &Value, layer: &str) -> Result<()> {
    match c.get("data_format").and_then(|v| v.as_str()) {
        None | Some("channels_last") => Ok(()),
        Some(o) => Err(cfg_err(
            layer,
            format!("data_format '{o}': only channels_last is supported"),
        )),
    }
}

fn check_dilation(c: &Value, layer: &str) -> Result<()> {
    let d = pair(c.get("dilation_rate"), layer, "dilation_rate", Some([1, 1]))?;
    if d != [1, 1] {
        return Err(cfg_err(
            layer,
            format!("dilation_rate {d:?} is not supported"),
        ));
    }
    if c.get("groups").and_then(|g| g.as_u64()).unwrap_or(1) != 1 {
        return Err(cfg_err(layer, "grouped convolutions are not supported"));
    }
    Ok(())
}

/// One Keras layer (class name + config) to an [`Op`]; `None` for InputLayer.
fn layer_op(class: &str, c: &Value, name: &str) -> Result<Option<Op>> {
    let use_bias = c.get("use_bias").and_then(|v| v.as_bool()).unwrap_or(true);
    Ok(Some(match class {
        "InputLayer" => return Ok(None),
        "Conv2D" | "Convolution2D" => {
            check_channels_last(c, name)?;
            check_dilation(c, name)?;
            Op::Conv2D {
                filters: c
                    .get("filters")
                    .and_then(|v| v.as_u64())
                    .ok_or_else(|| cfg_err(name, "'filters' missing"))?
                    as usize,
                kernel: pair(c.get("kernel_size"), name, "kernel_size", None)?,
                strides: pair(c.get("strides"), name, "strides", Some([1, 1]))?,
                padding: padding(c.get("padding"), name)?,
                activation: activation(c.get("activation"), name)?,
                use_bias,
            }
        }
        "Conv2DTranspose" | "Convolution2DTranspose" => {
            check_channels_last(c, name)?;
            check_dilation(c, name)?;
            if !matches!(c.get("output_padding"), None | Some(Value::Null)) {
                return Err(cfg_err(name, "output_padding is not supported"));
            }
            Op::Conv2DTranspose {
                filters: c
                    .get("filters")
                    .and_then(|v| v.as_u64())
                    .ok_or_else(|| cfg_err(name, "'filters' missing"))?
                    as usize,
                kernel: pair(c.get("kernel_size"), name, "kernel_size", None)?,
                strides: pair(c.get("strides"), name, "strides", Some([1, 1]))?,
                padding: padding(c.get("padding"), name)?,
                activation: activation(c.get("activation"), name)?,
                use_bias,
            }
        }
        "MaxPooling2D" | "MaxPool2D" => {
            check_channels_last(c, name)?;
            let pool = pair(c.get("pool_size"), name, "pool_size", Some([2, 2]))?;
            Op::MaxPooling2D {
                pool,
                strides: pair(c.get("strides"), name, "strides", Some(pool))?,
                padding: padding(c.get("padding"), name)?,
            }
        }
        "UpSampling2D" => {
            check_channels_last(c, name)?;
            match c
                .get("interpolation")
                .and_then(|v| v.as_str())
                .unwrap_or("nearest")
            {
                "nearest" => {}
                o => {
                    return Err(cfg_err(
                        name,
                        format!("interpolation '{o}': only nearest is supported"),
                    ))
                }
            }
            Op::UpSampling2D {
                size: pair(c.get("size"), name, "size", Some([2, 2]))?,
            }
        }
        "Dense" => Op::Dense {
            units: c
                .get("units")
                .and_then(|v| v.as_u64())
                .ok_or_else(|| cfg_err(name, "'units' missing"))? as usize,
            activation: activation(c.get("activation"), name)?,
            use_bias,
        },
        "Flatten" => {
            check_channels_last(c, name)?;
            Op::Flatten
        }
        "Reshape" => Op::Reshape {
            target: c
                .get("target_shape")
                .and_then(|v| v.as_array())
                .and_then(|a| a.iter().map(|x| x.as_u64().map(|x| x as usize)).collect())
                .ok_or_else(|| {
                    cfg_err(name, "'target_shape' must be a list of positive integers")
                })?,
        },
        "Concatenate" => {
            let axis = c.get("axis").and_then(|v| v.as_i64()).unwrap_or(-1);
            if axis != -1 && axis != 3 {
                return Err(cfg_err(
                    name,
                    format!("Concatenate on axis {axis}: only the channel axis (-1) is supported"),
                ));
            }
            Op::Concatenate
        }
        "Dropout" | "SpatialDropout2D" | "GaussianDropout" | "AlphaDropout" => Op::Dropout,
        "Activation" => Op::Activation {
            activation: activation(c.get("activation"), name)?,
        },
        other => {
            return Err(cfg_err(
                name,
                format!(
                    "layer type '{other}' is not supported (Conv2D, Conv2DTranspose, MaxPooling2D, \
                     UpSampling2D, Dense, Flatten, Reshape, Concatenate, Dropout, Activation)"
                ),
            ))
        }
    }))
}

fn input_shape_of(c: &Value) -> Option<[usize; 3]> {
    let s = c
        .get("batch_shape")
        .or_else(|| c.get("batch_input_shape"))?
        .as_array()?;
    let v: Option<Vec<usize>> = s[1..]
        .iter()
        .map(|x| x.as_u64().map(|x| x as usize))
        .collect();
    match v?.as_slice() {
        [h, w, c] => Some([*h, *w, *c]),
        [h, w] => Some([*h, *w, 1]),
        _ => None,
    }
}

/// Names of the layers feeding a Functional layer (Keras 2 and Keras 3 node formats).
fn inbound(layer: &Value, name: &str) -> Result<Vec<String>> {
    let nodes = match layer.get("inbound_nodes") {
        Some(Value::Array(a)) => a,
        _ => return Ok(Vec::new()),
    };
    if nodes.len() > 1 {
        return Err(cfg_err(
            name,
            "a layer called more than once (shared layer) is not supported",
        ));
    }
    let Some(node) = nodes.first() else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    fn walk3(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(o) => {
                if let Some(h) = o.get("config").and_then(|c| c.get("keras_history")) {
                    if let Some(n) = h.get(0).and_then(|n| n.as_str()) {
                        out.push(n.to_string());
                        return;
                    }
                }
                for (k, x) in o {
                    if k != "kwargs" {
                        walk3(x, out);
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|x| walk3(x, out)),
            _ => {}
        }
    }
    match node {
        // Keras 3: {"args": [...], "kwargs": {...}}
        Value::Object(o) => walk3(o.get("args").unwrap_or(&Value::Null), &mut out),
        // Keras 2: [[name, node, tensor, kwargs], ...]
        Value::Array(entries) => {
            for e in entries {
                match e.get(0).and_then(|n| n.as_str()) {
                    Some(n) => out.push(n.to_string()),
                    None => {
                        return Err(cfg_err(
                            name,
                            format!("inbound node entry {e} not understood"),
                        ))
                    }
                }
            }
        }
        o => return Err(cfg_err(name, format!("inbound node {o} not understood"))),
    }
    Ok(out)
}

fn first_name(v: Option<&Value>) -> Option<String> {
    // [["name", 0, 0]] or ["name", 0, 0]
    let v = v?;
    match v.get(0)? {
        Value::String(s) => Some(s.clone()),
        Value::Array(a) => a.first()?.as_str().map(str::to_string),
        _ => None,
    }
}

/// Parse a Keras model config (the `model_config` attribute or a `.keras` `config.json`).
pub fn parse_config(cfg: &Value, preprocess: Preprocess) -> Result<ModelSpec> {
    let class = cfg.get("class_name").and_then(|v| v.as_str()).unwrap_or("");
    let c = cfg
        .get("config")
        .ok_or_else(|| Error::Config("Keras model config without 'config'".into()))?;
    let mname = c
        .get("name")
        .and_then(|v| v.as_str())
        .unwrap_or("model")
        .to_string();
    let layers = c
        .get("layers")
        .and_then(|v| v.as_array())
        .ok_or_else(|| Error::Config(format!("Keras model '{mname}': config without 'layers'")))?;
    let mut spec = ModelSpec {
        name: mname.clone(),
        input_name: "input".into(),
        input: [0, 0, 0],
        preprocess,
        layers: Vec::new(),
        output: String::new(),
    };
    let sequential = class == "Sequential";
    if !sequential && !matches!(class, "Functional" | "Model") {
        return Err(Error::Config(format!(
            "Keras model '{mname}': class '{class}' is not supported (Sequential, Functional)"
        )));
    }
    let mut inputs_seen = 0;
    for l in layers {
        let lclass = l.get("class_name").and_then(|v| v.as_str()).unwrap_or("?");
        let lc = l.get("config").cloned().unwrap_or(Value::Null);
        let name = l
            .get("name")
            .or_else(|| lc.get("name"))
            .and_then(|v| v.as_str())
            .unwrap_or("?")
            .to_string();
        if matches!(lclass, "Sequential" | "Functional" | "Model") {
            return Err(cfg_err(
                &name,
                "nested models are not supported; save the inner model",
            ));
        }
        if spec.input == [0, 0, 0] {
            if let Some(s) = input_shape_of(&lc) {
                spec.input = s;
            } else if let Some(s) = l.get("build_config").and_then(|b| {
                input_shape_of(&serde_json::json!({"batch_shape": b.get("input_shape")?}))
            }) {
                spec.input = s;
            }
        }
        match layer_op(lclass, &lc, &name)? {
            None => {
                inputs_seen += 1;
                if inputs_seen > 1 {
                    return Err(cfg_err(
                        &name,
                        "models with more than one input are not supported",
                    ));
                }
                spec.input_name = name;
            }
            Some(op) => {
                let inputs = if sequential {
                    vec![spec
                        .layers
                        .last()
                        .map(|l| l.name.clone())
                        .unwrap_or_else(|| spec.input_name.clone())]
                } else {
                    inbound(l, &name)?
                };
                if inputs.is_empty() {
                    return Err(cfg_err(&name, "no inbound layer"));
                }
                spec.layers.push(LayerSpec { name, inputs, op });
            }
        }
    }
    if spec.input == [0, 0, 0] {
        return Err(Error::Config(format!(
            "Keras model '{mname}': no input shape in the config (build the model with an Input)"
        )));
    }
    spec.output = if sequential {
        spec.layers
            .last()
            .map(|l| l.name.clone())
            .unwrap_or_default()
    } else {
        let outs = c.get("output_layers");
        if let Some(Value::Array(a)) = outs {
            if a.len() > 1 && a[0].is_array() {
                return Err(Error::Config(format!(
                    "Keras model '{mname}': more than one output is not supported"
                )));
            }
        }
        first_name(outs)
            .ok_or_else(|| Error::Config(format!("Keras model '{mname}': no 'output_layers'")))?
    };
    spec.shapes()?;
    Ok(spec)
}

/// Parse a Keras model config from a JSON file (`--arch-config`; a `.keras` `config.json`
/// or `model.to_json()` output).
pub fn config_from_file(path: &Path, preprocess: Preprocess) -> Result<ModelSpec> {
    let s = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let v: Value =
        serde_json::from_str(&s).map_err(|e| Error::format(path, format!("not JSON: {e}")))?;
    parse_config(&v, preprocess).map_err(|e| Error::format(path, e))
}

fn open_h5_bytes(label: &Path, bytes: Vec<u8>) -> Result<H5> {
    if !hdf5_pure::is_hdf5_bytes(&bytes) {
        return Err(Error::format(
            label,
            "not an HDF5 file (no HDF5 signature found)",
        ));
    }
    let file = guard(label, || {
        hdf5_pure::File::from_bytes(bytes).map_err(|e| {
            Error::format(
                label,
                format!("not a readable HDF5 file (truncated or corrupt?): {e}"),
            )
        })
    })?;
    Ok(H5 {
        path: label.to_path_buf(),
        file,
    })
}

fn children(h: &H5, group: &str) -> Result<Option<(Vec<String>, Vec<String>)>> {
    guard(&h.path, || {
        let g = if group.is_empty() || group == "/" {
            h.file.root()
        } else {
            match h.file.group(group) {
                Ok(g) => g,
                Err(_) => return Ok(None),
            }
        };
        Ok(Some((
            g.groups().unwrap_or_default(),
            g.datasets().unwrap_or_default(),
        )))
    })
}

fn join(a: &str, b: &str) -> String {
    if a.is_empty() || a == "/" {
        b.to_string()
    } else {
        format!("{a}/{b}")
    }
}

/// Every dataset below `group` (recursive), as full paths.
fn datasets_below(h: &H5, group: &str, out: &mut Vec<String>) -> Result<()> {
    if let Some((gs, ds)) = children(h, group)? {
        for d in ds {
            out.push(join(group, &d));
        }
        for g in gs {
            datasets_below(h, &join(group, &g), out)?;
        }
    }
    Ok(())
}

fn read_tensor(h: &H5, entry: &str) -> Result<Tensor> {
    let d = h
        .try_dataset(entry)?
        .ok_or_else(|| Error::format(&h.path, format!("no dataset '{entry}'")))?;
    let (shape, data) = h.read_f32(entry, &d)?;
    Ok(Tensor { shape, data })
}

fn root_attr_string(h: &H5, name: &str) -> Result<Option<String>> {
    guard(&h.path, || {
        let attrs = h.file.root().attrs().unwrap_or_default();
        Ok(attrs.get(name).and_then(|a| a.as_str().map(str::to_string)))
    })
}

fn weighted(spec: &ModelSpec) -> Vec<(&LayerSpec, bool)> {
    spec.layers
        .iter()
        .filter_map(|l| match &l.op {
            Op::Conv2D { use_bias, .. }
            | Op::Conv2DTranspose { use_bias, .. }
            | Op::Dense { use_bias, .. } => Some((l, *use_bias)),
            _ => None,
        })
        .collect()
}

fn class_of(op: &Op) -> &'static str {
    match op {
        Op::Conv2D { .. } => "Conv2D",
        Op::Conv2DTranspose { .. } => "Conv2DTranspose",
        Op::Dense { .. } => "Dense",
        _ => "layer",
    }
}

/// Weights in the legacy layout: `<root>/<layer>/**/kernel[:0]`, `bias[:0]`.
fn legacy_weights(h: &H5, root: &str, spec: &ModelSpec) -> Result<BTreeMap<String, Tensor>> {
    let mut w = BTreeMap::new();
    let available = children(h, root)?.map(|(g, _)| g).unwrap_or_default();
    for (l, use_bias) in weighted(spec) {
        let g = join(root, &l.name);
        let mut ds = Vec::new();
        // `weight_names` (kernel then bias) is authoritative; else search the group
        match group_attr_strings(h, &g, "weight_names")? {
            Some(names) if !names.is_empty() => {
                ds.extend(names.iter().map(|n| join(&g, n)));
            }
            _ => datasets_below(h, &g, &mut ds)?,
        }
        let find = |what: &str| {
            ds.iter().find(|d| {
                let last = d.rsplit('/').next().unwrap_or("");
                last == what || last.strip_suffix(":0") == Some(what)
            })
        };
        let kernel = find("kernel").ok_or_else(|| {
            Error::format(
                &h.path,
                format!(
                    "layer '{}' ({}): no kernel under '{g}' (the file has layer groups [{}]; wrong architecture?)",
                    l.name,
                    class_of(&l.op),
                    available.join(", ")
                ),
            )
        })?;
        w.insert(format!("{}/kernel", l.name), read_tensor(h, kernel)?);
        if use_bias {
            let b = find("bias").ok_or_else(|| {
                Error::format(&h.path, format!("layer '{}': no bias under '{g}'", l.name))
            })?;
            w.insert(format!("{}/bias", l.name), read_tensor(h, b)?);
        }
    }
    Ok(w)
}

fn group_attr_strings(h: &H5, group: &str, name: &str) -> Result<Option<Vec<String>>> {
    guard(&h.path, || {
        let Ok(g) = h.file.group(group) else {
            return Ok(None);
        };
        let attrs = g.attrs().unwrap_or_default();
        Ok(attrs
            .get(name)
            .and_then(|a| a.as_strings().map(|v| v.to_vec())))
    })
}

/// Keras's `to_snake_case` of a class name (`Conv2DTranspose` -> `conv2d_transpose`).
fn snake(class: &str) -> String {
    let c: Vec<char> = class
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    let mut out = String::new();
    for (i, &ch) in c.iter().enumerate() {
        if ch.is_ascii_uppercase() && i > 0 {
            let prev = c[i - 1];
            let next_lower = c.get(i + 1).is_some_and(|n| n.is_ascii_lowercase());
            // (.)([A-Z][a-z]+) and ([a-z])([A-Z])
            if next_lower || prev.is_ascii_lowercase() {
                out.push('_');
            }
        }
        out.push(ch.to_ascii_lowercase());
    }
    out
}

fn keras_class(op: &Op) -> &'static str {
    match op {
        Op::Conv2D { .. } => "Conv2D",
        Op::Conv2DTranspose { .. } => "Conv2DTranspose",
        Op::MaxPooling2D { .. } => "MaxPooling2D",
        Op::UpSampling2D { .. } => "UpSampling2D",
        Op::Dense { .. } => "Dense",
        Op::Flatten => "Flatten",
        Op::Reshape { .. } => "Reshape",
        Op::Concatenate => "Concatenate",
        Op::Dropout => "Dropout",
        Op::Activation { .. } => "Activation",
    }
}

/// Weights in the Keras 3 layout: `layers/<key>/vars/0` (kernel), `/1` (bias), where
/// `<key>` is found through the `name` attribute of `layers/<key>/vars` (Keras 3.12), or
/// else as Keras makes it: the snake_case class name, made unique in model order.
fn v3_weights(h: &H5, spec: &ModelSpec) -> Result<BTreeMap<String, Tensor>> {
    let keys = children(h, "layers")?.map(|(g, _)| g).unwrap_or_default();
    let mut by_name: std::collections::HashMap<String, String> = Default::default();
    for k in &keys {
        if let Some(n) = group_attr_strings(h, &format!("layers/{k}/vars"), "name")? {
            if let Some(n) = n.first() {
                by_name.insert(n.clone(), k.clone());
            }
        }
    }
    if by_name.is_empty() {
        let mut count: std::collections::HashMap<String, usize> = Default::default();
        let mut classes = vec!["InputLayer"];
        classes.extend(spec.layers.iter().map(|l| keras_class(&l.op)));
        let names = std::iter::once(spec.input_name.clone())
            .chain(spec.layers.iter().map(|l| l.name.clone()));
        for (cls, name) in classes.into_iter().zip(names) {
            let base = snake(cls);
            let n = count.entry(base.clone()).or_insert(0);
            let key = if *n == 0 { base } else { format!("{base}_{n}") };
            *n += 1;
            by_name.insert(name, key);
        }
    }
    let mut w = BTreeMap::new();
    for (l, use_bias) in weighted(spec) {
        let key = by_name
            .get(&l.name)
            .cloned()
            .unwrap_or_else(|| l.name.clone());
        let g = format!("layers/{key}/vars");
        let Some((_, ds)) = children(h, &g)? else {
            return Err(Error::format(
                &h.path,
                format!(
                    "layer '{}' ({}): no group '{g}' (the file has layers [{}]; wrong architecture?)",
                    l.name,
                    class_of(&l.op),
                    keys.join(", ")
                ),
            ));
        };
        let need = if use_bias { 2 } else { 1 };
        if ds.len() != need {
            return Err(Error::format(
                &h.path,
                format!(
                    "layer '{}' ({}): '{g}' holds {} variables, expected {need} (wrong architecture?)",
                    l.name,
                    class_of(&l.op),
                    ds.len()
                ),
            ));
        }
        w.insert(
            format!("{}/kernel", l.name),
            read_tensor(h, &format!("{g}/0"))?,
        );
        if use_bias {
            w.insert(
                format!("{}/bias", l.name),
                read_tensor(h, &format!("{g}/1"))?,
            );
        }
    }
    Ok(w)
}

/// Weights from an open HDF5 file of any of the supported layouts.
fn weights_from_h5(h: &H5, spec: &ModelSpec) -> Result<BTreeMap<String, Tensor>> {
    let top = children(h, "/")?.map(|(g, _)| g).unwrap_or_default();
    if top.iter().any(|g| g == "model_weights") {
        legacy_weights(h, "model_weights", spec)
    } else if top.iter().any(|g| g == "layers") {
        v3_weights(h, spec)
    } else {
        legacy_weights(h, "/", spec)
    }
}

/// Where the architecture comes from when converting.
#[derive(Debug, Clone)]
pub enum Arch {
    /// From the file itself (legacy `model_config`, or `.keras` `config.json`).
    FromFile,
    /// Given (a preset such as `spinn`, or parsed from `--arch-config`).
    Given(ModelSpec),
}

/// Convert a Keras checkpoint (`.h5`, `.keras`, `.weights.h5`) to a [`Model`].
pub fn convert(path: &Path, arch: Arch, preprocess: Preprocess) -> Result<Model> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let is_zip = bytes.starts_with(b"PK\x03\x04");
    let (spec, weights) = if is_zip {
        let mut z = zip::ZipArchive::new(std::io::Cursor::new(&bytes)).map_err(|e| {
            Error::format(
                path,
                format!("not a readable .keras (zip) file (truncated?): {e}"),
            )
        })?;
        let mut read = |name: &str| -> Result<Vec<u8>> {
            let mut f = z.by_name(name).map_err(|e| {
                Error::format(path, format!("the .keras archive has no '{name}': {e}"))
            })?;
            let mut v = Vec::new();
            f.read_to_end(&mut v).map_err(|e| {
                Error::format(path, format!("reading '{name}' from the archive: {e}"))
            })?;
            Ok(v)
        };
        let cfg = read("config.json")?;
        let wbytes = read("model.weights.h5")?;
        let spec = match arch {
            Arch::Given(s) => s,
            Arch::FromFile => {
                let v: Value = serde_json::from_slice(&cfg)
                    .map_err(|e| Error::format(path, format!("config.json is not JSON: {e}")))?;
                parse_config(&v, preprocess).map_err(|e| Error::format(path, e))?
            }
        };
        let label = path.join("model.weights.h5");
        let h = open_h5_bytes(&label, wbytes)?;
        let w = weights_from_h5(&h, &spec)?;
        (spec, w)
    } else {
        let h = open_h5_bytes(path, bytes)?;
        let spec =
            match arch {
                Arch::Given(s) => s,
                Arch::FromFile => match root_attr_string(&h, "model_config")? {
                    Some(js) => {
                        let v: Value = serde_json::from_str(&js).map_err(|e| {
                            Error::format(
                                path,
                                format!("root attribute 'model_config' is not JSON: {e}"),
                            )
                        })?;
                        parse_config(&v, preprocess).map_err(|e| Error::format(path, e))?
                    }
                    None => return Err(Error::format(
                        path,
                        "weights-only file (no 'model_config' attribute): give the architecture \
                         with --arch spinn or --arch-config config.json",
                    )),
                },
            };
        let w = weights_from_h5(&h, &spec)?;
        (spec, w)
    };
    Model::new(spec, weights).map_err(|e| Error::format(path, e))
}
