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
//!
//! Weights are assigned to the architecture's layers by name when every layer with weights
//! is in the file under its own name; otherwise by order, as Keras's own loaders do
//! ([`Matching::ByOrder`]): Keras 3 files by class and model order (the group keys
//! `conv2d`, `conv2d_1`, ... are numbered per class in model order, whatever the layer
//! names), legacy files in the model order of the `layer_names` attribute. That is what
//! loads files whose layers carry Keras's default names (`conv2d`, `conv2d_1`, ... in a
//! fresh TF 2.x session; Keras 3 numbers on from whatever the process built before) into
//! `--arch spinn`, whose names are `conv2d_1`, .... Counts and shapes are checked per
//! layer either way; a mismatch names the layer, the file's group and both shapes.

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
    // the same checks as every other HDF5 input, truncation included
    crate::io::hdf5::open_bytes(label, bytes)
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
/// Groups linked in a cycle are not followed past `io::hdf5::MAX_GROUP_DEPTH` levels, and
/// a walk over more than `MAX_GROUPS` groups is an error.
fn datasets_below(h: &H5, group: &str, out: &mut Vec<String>) -> Result<()> {
    let mut stack = vec![(group.to_string(), 0usize)];
    let mut groups = 0usize;
    while let Some((group, depth)) = stack.pop() {
        groups += 1;
        if groups > crate::io::hdf5::MAX_GROUPS {
            return Err(crate::io::hdf5::too_many_groups(&h.path));
        }
        if let Some((gs, ds)) = children(h, &group)? {
            out.extend(ds.iter().map(|d| join(&group, d)));
            if depth < crate::io::hdf5::MAX_GROUP_DEPTH {
                // reversed, so that groups are walked in their listed order
                stack.extend(gs.iter().rev().map(|g| (join(&group, g), depth + 1)));
            }
        }
    }
    Ok(())
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

/// A string-list attribute of a group (`""` or `"/"`: the root), joining the chunks
/// `name0`, `name1`, ... that Keras writes for attributes over 64 KB.
fn group_attr_strings(h: &H5, group: &str, name: &str) -> Result<Option<Vec<String>>> {
    guard(&h.path, || {
        let g = if group.is_empty() || group == "/" {
            h.file.root()
        } else {
            match h.file.group(group) {
                Ok(g) => g,
                Err(_) => return Ok(None),
            }
        };
        let attrs = g.attrs().unwrap_or_default();
        if let Some(a) = attrs.get(name) {
            return Ok(a.as_strings().map(|v| v.to_vec()));
        }
        let mut out: Option<Vec<String>> = None;
        for i in 0.. {
            match attrs
                .get(&format!("{name}{i}"))
                .and_then(|a| a.as_strings())
            {
                Some(v) => out.get_or_insert_with(Vec::new).extend_from_slice(v),
                None => break,
            }
        }
        Ok(out)
    })
}

/// A layer with weights, as the file holds it.
#[derive(Debug)]
struct FileLayer {
    /// Its group in the file (`model_weights/conv2d_3`, `layers/conv2d_2/vars`).
    group: String,
    /// The layer name the file records: a legacy layer group's name, or the `name`
    /// attribute of a Keras 3 `vars` group (absent before Keras 3.x wrote it).
    name: Option<String>,
    /// Keras 3: the group key's class part (`conv2d_transpose`) and its number (0 for the
    /// bare key, then 1, 2, ...), which Keras assigns in model order per class.
    class_key: Option<(String, usize)>,
    /// Every weight dataset (full paths), in the file's order.
    datasets: Vec<String>,
    kernel: Option<String>,
    bias: Option<String>,
}

/// The layers with weights of a file, in the order its layout defines.
struct FileWeights {
    layers: Vec<FileLayer>,
    /// Keras 3 layout (groups keyed by class), else legacy (groups named by layer).
    keras3: bool,
    /// Legacy: the order comes from the `layer_names` attribute (false: it was missing).
    ordered: bool,
}

/// Legacy layout (`<root>/<layer>/**/kernel[:0]`, `bias[:0]`): the layer groups in the
/// order of `<root>`'s `layer_names` attribute (model order), those holding weights.
fn legacy_layers(h: &H5, root: &str) -> Result<FileWeights> {
    let (names, ordered) = match group_attr_strings(h, root, "layer_names")? {
        Some(n) => (n, true),
        None => (
            children(h, root)?.map(|(g, _)| g).unwrap_or_default(),
            false,
        ),
    };
    let mut layers = Vec::new();
    for name in names {
        let g = join(root, &name);
        let mut ds = Vec::new();
        // `weight_names` (kernel then bias) is authoritative; else search the group
        match group_attr_strings(h, &g, "weight_names")? {
            Some(w) if !w.is_empty() => ds.extend(w.iter().map(|n| join(&g, n))),
            _ => datasets_below(h, &g, &mut ds)?,
        }
        if ds.is_empty() {
            continue;
        }
        let find = |what: &str| {
            ds.iter()
                .find(|d| {
                    let last = d.rsplit('/').next().unwrap_or("");
                    last == what || last.strip_suffix(":0") == Some(what)
                })
                .cloned()
        };
        layers.push(FileLayer {
            kernel: find("kernel"),
            bias: find("bias"),
            group: g,
            name: Some(name),
            class_key: None,
            datasets: ds,
        });
    }
    Ok(FileWeights {
        layers,
        keras3: false,
        ordered,
    })
}

/// `conv2d_transpose_3` -> (`conv2d_transpose`, 3); `conv2d` -> (`conv2d`, 0).
fn split_key(key: &str) -> (String, usize) {
    if let Some((base, n)) = key.rsplit_once('_') {
        if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) {
            if let Ok(n) = n.parse() {
                return (base.to_string(), n);
            }
        }
    }
    (key.to_string(), 0)
}

/// Keras 3 layout: `layers/<key>/vars/0` (kernel), `/1` (bias). `<key>` is the layer's
/// snake_case class name made unique in model order (`conv2d`, `conv2d_1`, ...), whatever
/// the layer's name; the name is the `name` attribute of `vars`. Sorted by class, then
/// by the key's number: model order within each class.
fn v3_layers(h: &H5) -> Result<FileWeights> {
    let keys = children(h, "layers")?.map(|(g, _)| g).unwrap_or_default();
    let mut layers = Vec::new();
    for k in keys {
        let g = format!("layers/{k}/vars");
        let Some((_, mut ds)) = children(h, &g)? else {
            continue;
        };
        if ds.is_empty() {
            continue;
        }
        // variables "0", "1", ... in numeric order; anything else after them
        ds.sort_by_key(|d| (d.parse::<usize>().unwrap_or(usize::MAX), d.clone()));
        let name = group_attr_strings(h, &g, "name")?.and_then(|v| v.into_iter().next());
        let has = |d: &str| ds.iter().any(|x| x == d).then(|| format!("{g}/{d}"));
        layers.push(FileLayer {
            kernel: has("0"),
            bias: if ds.len() >= 2 { has("1") } else { None },
            datasets: ds.iter().map(|d| format!("{g}/{d}")).collect(),
            class_key: Some(split_key(&k)),
            name,
            group: g,
        });
    }
    layers.sort_by(|a, b| a.class_key.cmp(&b.class_key));
    Ok(FileWeights {
        layers,
        keras3: true,
        ordered: true,
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

/// How the weights of a file were assigned to the architecture's layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Matching {
    /// Every layer with weights found under its own name (the file's names are the
    /// architecture's).
    ByName,
    /// By position, as Keras's own loaders do: within each layer class in model order
    /// (Keras 3 `.weights.h5` / `.keras`, from the group keys), or in the model order of
    /// the layers with weights (legacy `.h5`, from `layer_names`). Used when the file's
    /// layer names are not the architecture's (Keras default names such as `conv2d`,
    /// `conv2d_1`, ..., which depend on what the saving process built before).
    ByOrder,
}

fn nth(i: usize) -> String {
    let suffix = match (i % 10, i % 100) {
        (1, n) if n != 11 => "st",
        (2, n) if n != 12 => "nd",
        (3, n) if n != 13 => "rd",
        _ => "th",
    };
    format!("{i}{suffix}")
}

fn describe(f: &FileLayer) -> String {
    match &f.name {
        Some(n) if !f.group.ends_with(&format!("/{n}")) && f.group != *n => {
            format!("'{}' (layer '{n}' in the file)", f.group)
        }
        _ => format!("'{}'", f.group),
    }
}

/// A layer of the architecture and the file's layer holding its weights.
struct Pair<'a, 'b> {
    layer: &'a LayerSpec,
    use_bias: bool,
    file: &'b FileLayer,
    /// How they were matched, for messages.
    how: String,
}

/// Pair every layer of `spec` that has weights with a layer of the file: by name when
/// every name is in the file, else by order (see [`Matching`]). Counts must agree.
fn assign<'a, 'b>(
    h: &H5,
    spec: &'a ModelSpec,
    fw: &'b FileWeights,
) -> Result<(Vec<Pair<'a, 'b>>, Matching)> {
    let wl = weighted(spec);
    let by_name: std::collections::HashMap<&str, &FileLayer> = fw
        .layers
        .iter()
        .filter_map(|f| f.name.as_deref().map(|n| (n, f)))
        .collect();
    let all_named = wl
        .iter()
        .all(|(l, _)| by_name.contains_key(l.name.as_str()));
    let place = if fw.keras3 {
        "under 'layers/'"
    } else {
        "in the file"
    };
    if all_named && !wl.is_empty() {
        let used: std::collections::HashSet<&str> =
            wl.iter().map(|(l, _)| l.name.as_str()).collect();
        let extra: Vec<String> = fw
            .layers
            .iter()
            .filter(|f| !f.name.as_deref().is_some_and(|n| used.contains(n)))
            .map(describe)
            .collect();
        if !extra.is_empty() {
            return Err(Error::format(
                &h.path,
                format!(
                    "the file holds weights of layers the architecture '{}' does not have: {} \
                     (wrong architecture?)",
                    spec.name,
                    extra.join(", ")
                ),
            ));
        }
        let pairs = wl
            .into_iter()
            .map(|(l, b)| Pair {
                layer: l,
                use_bias: b,
                file: by_name[l.name.as_str()],
                how: "matched by name".to_string(),
            })
            .collect();
        return Ok((pairs, Matching::ByName));
    }
    let mut pairs = Vec::new();
    if fw.keras3 {
        // within each class (the key's class part: snake_case of the class name), in
        // model order
        let mut spec_by: BTreeMap<String, usize> = BTreeMap::new();
        for (l, _) in &wl {
            *spec_by.entry(snake(class_of(&l.op))).or_default() += 1;
        }
        let mut file_by: BTreeMap<String, Vec<&FileLayer>> = BTreeMap::new();
        for f in &fw.layers {
            let c = f
                .class_key
                .as_ref()
                .map(|k| k.0.clone())
                .unwrap_or_default();
            file_by.entry(c).or_default().push(f);
        }
        let counts_differ = spec_by
            .iter()
            .any(|(c, n)| file_by.get(c).map_or(0, |f| f.len()) != *n)
            || file_by.keys().any(|c| !spec_by.contains_key(c));
        if counts_differ {
            let list = |m: Vec<(String, usize)>| {
                m.iter()
                    .map(|(c, n)| format!("{n} {c}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            return Err(Error::format(
                &h.path,
                format!(
                    "the layer names differ from the architecture's, so the weights are matched \
                     by order within each layer class, and the counts differ: the architecture \
                     '{}' has {} layers with weights, the file {} {place} (wrong architecture?)",
                    spec.name,
                    list(spec_by.iter().map(|(c, n)| (c.clone(), *n)).collect()),
                    list(file_by.iter().map(|(c, v)| (c.clone(), v.len())).collect()),
                ),
            ));
        }
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        for (l, b) in &wl {
            let c = snake(class_of(&l.op));
            let n = file_by[&c].len();
            let i = seen.entry(c.clone()).or_default();
            let f = file_by[&c][*i];
            *i += 1;
            let i = *i;
            pairs.push(Pair {
                layer: l,
                use_bias: *b,
                file: f,
                how: format!(
                    "matched by order: the {} of {n} {} layers",
                    nth(i),
                    class_of(&l.op)
                ),
            });
        }
    } else {
        if !fw.ordered {
            return Err(Error::format(
                &h.path,
                format!(
                    "the file's layer names [{}] are not the architecture's, and without a \
                     'layer_names' attribute the layer order is unknown: cannot match the weights",
                    fw.layers
                        .iter()
                        .filter_map(|f| f.name.clone())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        if fw.layers.len() != wl.len() {
            return Err(Error::format(
                &h.path,
                format!(
                    "the layer names differ from the architecture's, so the weights are matched \
                     in model order ('layer_names'), and the counts differ: the architecture '{}' \
                     has {} layers with weights ({}), the file {} ({}) (wrong architecture?)",
                    spec.name,
                    wl.len(),
                    wl.iter()
                        .map(|(l, _)| l.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    fw.layers.len(),
                    fw.layers
                        .iter()
                        .filter_map(|f| f.name.as_deref())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        let n = wl.len();
        for (i, ((l, b), f)) in wl.iter().zip(&fw.layers).enumerate() {
            pairs.push(Pair {
                layer: l,
                use_bias: *b,
                file: f,
                how: format!(
                    "matched by order: the {} of {n} layers with weights",
                    nth(i + 1)
                ),
            });
        }
    }
    Ok((pairs, Matching::ByOrder))
}

/// Read a weight whose shape the architecture fixes, naming both shapes on a mismatch.
fn read_checked(
    h: &H5,
    entry: &str,
    want: &[usize],
    what: &str,
    context: &dyn Fn() -> String,
) -> Result<Tensor> {
    let d = h
        .try_dataset(entry)?
        .ok_or_else(|| Error::format(&h.path, format!("{}: no dataset '{entry}'", context())))?;
    let shape: Vec<usize> = guard(&h.path, || {
        d.shape()
            .map(|s| s.into_iter().map(|x| x as usize).collect())
            .map_err(|e| Error::format(&h.path, format!("shape of '{entry}': {e}")))
    })?;
    if shape != want {
        return Err(Error::format(
            &h.path,
            format!(
                "{}: {what} shape {shape:?} in the file ('{entry}'), {want:?} in the \
                 architecture (wrong architecture or size?)",
                context()
            ),
        ));
    }
    let (shape, data) = h.read_f32(entry, &d)?;
    Ok(Tensor { shape, data })
}

/// Weights from an open HDF5 file of any of the supported layouts, keyed `<layer>/kernel`
/// and `<layer>/bias` by the architecture's layer names.
fn weights_from_h5(h: &H5, spec: &ModelSpec) -> Result<(BTreeMap<String, Tensor>, Matching)> {
    let top = children(h, "/")?.map(|(g, _)| g).unwrap_or_default();
    let fw = if top.iter().any(|g| g == "model_weights") {
        legacy_layers(h, "model_weights")?
    } else if top.iter().any(|g| g == "layers") {
        v3_layers(h)?
    } else {
        legacy_layers(h, "/")?
    };
    let want: std::collections::HashMap<String, Vec<usize>> =
        spec.weight_shapes()?.into_iter().collect();
    let (pairs, matching) = assign(h, spec, &fw)?;
    let mut w = BTreeMap::new();
    for Pair {
        layer: l,
        use_bias,
        file: f,
        how,
    } in pairs
    {
        let context = || {
            format!(
                "layer '{}' ({}) <- {} ({how})",
                l.name,
                class_of(&l.op),
                describe(f)
            )
        };
        let kernel = f.kernel.as_deref().ok_or_else(|| {
            Error::format(
                &h.path,
                format!(
                    "{}: no kernel among its weights [{}] (wrong architecture?)",
                    context(),
                    f.datasets.join(", ")
                ),
            )
        })?;
        let need = if use_bias { 2 } else { 1 };
        if f.datasets.len() != need || (use_bias && f.bias.is_none()) {
            return Err(Error::format(
                &h.path,
                format!(
                    "{}: the file holds {} weights [{}], the architecture expects {need} \
                     ({}; wrong architecture?)",
                    context(),
                    f.datasets.len(),
                    f.datasets.join(", "),
                    if use_bias {
                        "kernel and bias"
                    } else {
                        "kernel, no bias"
                    }
                ),
            ));
        }
        let shape_of = |k: &str| want.get(k).cloned().unwrap_or_default();
        let kname = format!("{}/kernel", l.name);
        let t = read_checked(h, kernel, &shape_of(&kname), "kernel", &context)?;
        w.insert(kname, t);
        if let (true, Some(b)) = (use_bias, f.bias.as_deref()) {
            let bname = format!("{}/bias", l.name);
            let t = read_checked(h, b, &shape_of(&bname), "bias", &context)?;
            w.insert(bname, t);
        }
    }
    Ok((w, matching))
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
    convert_matched(path, arch, preprocess).map(|(m, _)| m)
}

/// [`convert`], also telling how the file's layers were matched to the architecture's.
pub fn convert_matched(
    path: &Path,
    arch: Arch,
    preprocess: Preprocess,
) -> Result<(Model, Matching)> {
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
    let (weights, matching) = weights;
    let model = Model::new(spec, weights).map_err(|e| Error::format(path, e))?;
    Ok((model, matching))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keras3_keys_sort_in_model_order_per_class() {
        assert_eq!(split_key("conv2d"), ("conv2d".into(), 0));
        assert_eq!(split_key("conv2d_10"), ("conv2d".into(), 10));
        assert_eq!(
            split_key("conv2d_transpose"),
            ("conv2d_transpose".into(), 0)
        );
        assert_eq!(
            split_key("conv2d_transpose_2"),
            ("conv2d_transpose".into(), 2)
        );
        assert_eq!(split_key("up_sampling2d"), ("up_sampling2d".into(), 0));
        // numeric, not lexicographic: conv2d_2 before conv2d_10
        let mut k: Vec<_> = ["conv2d_10", "conv2d_2", "conv2d", "conv2d_1"]
            .iter()
            .map(|k| split_key(k))
            .collect();
        k.sort();
        let n: Vec<usize> = k.iter().map(|k| k.1).collect();
        assert_eq!(n, [0, 1, 2, 10]);
        assert_eq!(snake("Conv2DTranspose"), "conv2d_transpose");
        assert_eq!(snake("MaxPooling2D"), "max_pooling2d");
        assert_eq!(snake("Dense"), "dense");
    }

    #[test]
    fn ordinals() {
        let s: Vec<String> = [1, 2, 3, 4, 11, 12, 13, 21, 22, 23, 101, 111]
            .iter()
            .map(|&i| nth(i))
            .collect();
        assert_eq!(
            s,
            [
                "1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "23rd",
                "101st", "111th"
            ]
        );
    }
}
