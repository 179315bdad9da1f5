//! Atomic structures from PDB and mmCIF files (plain or gzip-compressed).
//!
//! A small hand-written reader: `ATOM`/`HETATM` records of PDB files (fixed columns) and the
//! `_atom_site` loop of mmCIF files. Only the first model is read; of alternate locations only
//! the blank/first (`A`) one is kept. The element comes from the element column (PDB columns
//! 77-78, mmCIF `type_symbol`), else from the atom name. Each atom carries its number of
//! electrons (the atomic number Z; charges are ignored). Unknown elements count as carbon and
//! are tallied in [`Structure::unknown_elements`].

use crate::{Error, Result};
use rayon::prelude::*;
use std::io::Read;
use std::path::{Path, PathBuf};

/// One atom: position in Å and its electron count.
#[derive(Clone, Debug, PartialEq)]
pub struct Atom {
    /// Cartesian position, Å.
    pub pos: [f64; 3],
    /// Element symbol, normalised (`C`, `Fe`, ...).
    pub element: String,
    /// Electrons (atomic number Z).
    pub electrons: f32,
}

/// An atomic structure read from a file.
#[derive(Clone, Debug, PartialEq)]
pub struct Structure {
    /// Source id: the file name without extensions (`1bvyF` for `1bvyF.pdb.gz`).
    pub name: String,
    pub atoms: Vec<Atom>,
    /// The file read (empty for structures built in memory).
    pub path: PathBuf,
    /// Atoms whose element was not recognised (counted as carbon).
    pub unknown_elements: usize,
}

/// Which chains of a file to read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub enum Chains {
    /// Every chain of the first model: the whole entry (default).
    #[default]
    All,
    /// Only the chain of the first atom kept (PDB column 22; mmCIF `auth_asym_id`, else
    /// `label_asym_id`), with its ligands.
    First,
}

impl Chains {
    /// `all` or `first`.
    pub fn parse(text: &str) -> Result<Chains> {
        match text.trim().to_ascii_lowercase().as_str() {
            "all" => Ok(Chains::All),
            "first" => Ok(Chains::First),
            other => Err(Error::Config(format!(
                "chains '{other}': expected all or first"
            ))),
        }
    }
}

/// What to leave out while reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadOptions {
    /// Skip water molecules (residues HOH, WAT, H2O, DOD, SOL). Default true.
    pub skip_waters: bool,
    /// Skip hydrogen and deuterium atoms. Default true.
    pub skip_hydrogens: bool,
    /// Every chain (default) or the first one.
    pub chains: Chains,
}

impl Default for ReadOptions {
    fn default() -> Self {
        ReadOptions {
            skip_waters: true,
            skip_hydrogens: true,
            chains: Chains::All,
        }
    }
}

const ELEMENTS: [&str; 98] = [
    "H", "He", "Li", "Be", "B", "C", "N", "O", "F", "Ne", "Na", "Mg", "Al", "Si", "P", "S", "Cl",
    "Ar", "K", "Ca", "Sc", "Ti", "V", "Cr", "Mn", "Fe", "Co", "Ni", "Cu", "Zn", "Ga", "Ge", "As",
    "Se", "Br", "Kr", "Rb", "Sr", "Y", "Zr", "Nb", "Mo", "Tc", "Ru", "Rh", "Pd", "Ag", "Cd", "In",
    "Sn", "Sb", "Te", "I", "Xe", "Cs", "Ba", "La", "Ce", "Pr", "Nd", "Pm", "Sm", "Eu", "Gd", "Tb",
    "Dy", "Ho", "Er", "Tm", "Yb", "Lu", "Hf", "Ta", "W", "Re", "Os", "Ir", "Pt", "Au", "Hg", "Tl",
    "Pb", "Bi", "Po", "At", "Rn", "Fr", "Ra", "Ac", "Th", "Pa", "U", "Np", "Pu", "Am", "Cm", "Bk",
    "Cf",
];

/// Atomic number of an element symbol (case-insensitive; `D` and `T` are hydrogen).
pub fn atomic_number(symbol: &str) -> Option<u32> {
    let s = symbol.trim();
    if s.eq_ignore_ascii_case("D") || s.eq_ignore_ascii_case("T") {
        return Some(1);
    }
    ELEMENTS
        .iter()
        .position(|e| e.eq_ignore_ascii_case(s))
        .map(|i| i as u32 + 1)
}

fn normalise_symbol(s: &str) -> String {
    let s = s.trim();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i == 0 {
            out.push(c.to_ascii_uppercase());
        } else {
            out.push(c.to_ascii_lowercase());
        }
    }
    out
}

fn is_water(res: &str) -> bool {
    matches!(
        res.trim().to_ascii_uppercase().as_str(),
        "HOH" | "WAT" | "H2O" | "DOD" | "SOL" | "TIP3" | "TIP"
    )
}

/// Element from a PDB atom name field (4 characters, columns 13-16): a two-letter element is
/// left-justified in column 13 (`FE  `), a one-letter one sits in column 14 (` CA `).
fn element_from_atom_name(name: &str) -> String {
    let b = name.as_bytes();
    let first_alpha = b.first().is_some_and(|c| c.is_ascii_alphabetic());
    if first_alpha && b.len() >= 2 && name.len() == 4 && b[1].is_ascii_alphabetic() {
        let two = &name[0..2];
        // Two-letter only if not a protein-style name: `CA  ` in col 13 is calcium, ` CA ` is
        // C-alpha. With the column alignment, a letter in column 13 means a 2-letter element
        // unless it is H (hydrogen names like `HD21` start in column 13).
        if !two.starts_with(['H', 'h']) && atomic_number(two).is_some() {
            return normalise_symbol(two);
        }
    }
    let letters: String = name
        .trim()
        .chars()
        .skip_while(|c| c.is_ascii_digit())
        .take(1)
        .collect();
    normalise_symbol(&letters)
}

struct Builder<'a> {
    opts: &'a ReadOptions,
    atoms: Vec<Atom>,
    unknown: usize,
    /// The chain of the first atom kept (for [`Chains::First`]).
    first_chain: Option<String>,
}

impl<'a> Builder<'a> {
    fn new(opts: &'a ReadOptions) -> Self {
        Builder {
            opts,
            atoms: Vec::new(),
            unknown: 0,
            first_chain: None,
        }
    }

    fn push(&mut self, pos: [f64; 3], element: &str, resname: &str, chain: &str) {
        if self.opts.skip_waters && is_water(resname) {
            return;
        }
        let el = normalise_symbol(element);
        let z = atomic_number(&el);
        if self.opts.skip_hydrogens && z == Some(1) {
            return;
        }
        if self.opts.chains == Chains::First {
            match &self.first_chain {
                None => self.first_chain = Some(chain.to_string()),
                Some(c) if c != chain => return,
                _ => {}
            }
        }
        let z = match z {
            Some(z) => z,
            None => {
                self.unknown += 1;
                6
            }
        };
        self.atoms.push(Atom {
            pos,
            element: el,
            electrons: z as f32,
        });
    }
}

fn col(line: &str, a: usize, b: usize) -> &str {
    // 1-based inclusive columns a..=b, clipped to the line.
    let len = line.len();
    if a > len {
        return "";
    }
    let end = b.min(len);
    line.get(a - 1..end).unwrap_or("")
}

fn parse_pdb(path: &Path, text: &str, opts: &ReadOptions) -> Result<(Vec<Atom>, usize)> {
    let mut b = Builder::new(opts);
    let mut models = 0;
    for (lineno, line) in text.lines().enumerate() {
        if line.starts_with("MODEL") {
            models += 1;
            if models > 1 {
                break;
            }
            continue;
        }
        if line.starts_with("ENDMDL") {
            break;
        }
        if !(line.starts_with("ATOM") || line.starts_with("HETATM")) {
            continue;
        }
        let alt = col(line, 17, 17).trim();
        if !(alt.is_empty() || alt == "A" || alt == "1") {
            continue;
        }
        let num = |a, z, what: &str| -> Result<f64> {
            col(line, a, z).trim().parse::<f64>().map_err(|_| {
                Error::format(
                    path,
                    format!(
                        "line {}: {what} '{}' is not a number",
                        lineno + 1,
                        col(line, a, z)
                    ),
                )
            })
        };
        let pos = [num(31, 38, "x")?, num(39, 46, "y")?, num(47, 54, "z")?];
        let el_col = col(line, 77, 78).trim();
        let element = if !el_col.is_empty() && atomic_number(el_col).is_some() {
            normalise_symbol(el_col)
        } else {
            element_from_atom_name(col(line, 13, 16))
        };
        b.push(pos, &element, col(line, 18, 20), col(line, 22, 22));
    }
    Ok((b.atoms, b.unknown))
}

/// Split a CIF data line into tokens (whitespace separated, with '…' and "…" quoting).
fn cif_tokens(line: &str, out: &mut Vec<String>) {
    let b = line.as_bytes();
    let mut i = 0;
    while i < b.len() {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= b.len() {
            break;
        }
        if b[i] == b'#' {
            break;
        }
        if b[i] == b'\'' || b[i] == b'"' {
            let q = b[i];
            let start = i + 1;
            let mut j = start;
            // A closing quote must be followed by whitespace or the end of the line.
            while j < b.len()
                && !(b[j] == q && (j + 1 == b.len() || b[j + 1].is_ascii_whitespace()))
            {
                j += 1;
            }
            out.push(line[start..j.min(b.len())].to_string());
            i = j + 1;
        } else {
            let start = i;
            while i < b.len() && !b[i].is_ascii_whitespace() {
                i += 1;
            }
            out.push(line[start..i].to_string());
        }
    }
}

fn parse_cif(path: &Path, text: &str, opts: &ReadOptions) -> Result<(Vec<Atom>, usize)> {
    let mut b = Builder::new(opts);
    let lines: Vec<&str> = text.lines().collect();
    let mut i = 0;
    // Find the loop whose headers are _atom_site.*
    while i < lines.len() {
        if lines[i].trim() == "loop_"
            && lines
                .get(i + 1)
                .is_some_and(|l| l.trim_start().starts_with("_atom_site."))
        {
            break;
        }
        i += 1;
    }
    if i >= lines.len() {
        return Err(Error::format(path, "mmCIF: no _atom_site loop"));
    }
    i += 1;
    let mut headers = Vec::new();
    while i < lines.len() && lines[i].trim_start().starts_with("_atom_site.") {
        headers.push(lines[i].trim()["_atom_site.".len()..].to_string());
        i += 1;
    }
    let find = |names: &[&str]| {
        names
            .iter()
            .find_map(|n| headers.iter().position(|h| h == n))
    };
    let need = |names: &[&str]| {
        find(names).ok_or_else(|| {
            Error::format(
                path,
                format!("mmCIF: _atom_site has no {}", names.join("/")),
            )
        })
    };
    let (ix, iy, iz) = (
        need(&["Cartn_x"])?,
        need(&["Cartn_y"])?,
        need(&["Cartn_z"])?,
    );
    let i_group = find(&["group_PDB"]);
    let i_el = find(&["type_symbol"]);
    let i_name = find(&["label_atom_id", "auth_atom_id"]);
    let i_alt = find(&["label_alt_id"]);
    let i_res = find(&["label_comp_id", "auth_comp_id"]);
    let i_model = find(&["pdbx_PDB_model_num"]);
    let i_chain = find(&["auth_asym_id", "label_asym_id"]);
    let ncol = headers.len();
    let mut tokens: Vec<String> = Vec::new();
    let mut first_model: Option<String> = None;
    let mut row = 0usize;
    while i < lines.len() {
        let l = lines[i];
        let t = l.trim_start();
        if t.starts_with("loop_") || t.starts_with('_') || t.starts_with("data_") {
            break;
        }
        if t.starts_with(';') {
            return Err(Error::format(
                path,
                format!("mmCIF line {}: multi-line text in _atom_site", i + 1),
            ));
        }
        cif_tokens(l, &mut tokens);
        while tokens.len() >= ncol {
            let rest = tokens.split_off(ncol);
            let r = std::mem::replace(&mut tokens, rest);
            row += 1;
            let get = |k: Option<usize>| k.map(|k| r[k].as_str()).unwrap_or("");
            if let Some(g) = i_group.map(|k| r[k].as_str()) {
                if g != "ATOM" && g != "HETATM" {
                    continue;
                }
            }
            let model = get(i_model);
            match &first_model {
                None => first_model = Some(model.to_string()),
                Some(m) if m != model => {
                    tokens.clear();
                    i = lines.len();
                    break;
                }
                _ => {}
            }
            let alt = get(i_alt);
            if !(alt == "." || alt == "?" || alt.is_empty() || alt == "A" || alt == "1") {
                continue;
            }
            let num = |k: usize, what: &str| -> Result<f64> {
                r[k].parse::<f64>().map_err(|_| {
                    Error::format(
                        path,
                        format!("mmCIF atom {row}: {what} '{}' is not a number", r[k]),
                    )
                })
            };
            let pos = [
                num(ix, "Cartn_x")?,
                num(iy, "Cartn_y")?,
                num(iz, "Cartn_z")?,
            ];
            let el = get(i_el);
            let element = if !el.is_empty() && atomic_number(el).is_some() {
                normalise_symbol(el)
            } else {
                let n = get(i_name);
                let letters: String = n
                    .chars()
                    .filter(|c| c.is_ascii_alphabetic())
                    .take(1)
                    .collect();
                normalise_symbol(&letters)
            };
            b.push(pos, &element, get(i_res), get(i_chain));
        }
        i += 1;
    }
    Ok((b.atoms, b.unknown))
}

/// The file's base name without `.gz` and the structure extension.
fn stem(path: &Path) -> String {
    let mut name = path
        .file_name()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    for ext in [".gz", ".pdb", ".ent", ".cif", ".mmcif", ".PDB", ".CIF"] {
        if let Some(s) = name.strip_suffix(ext) {
            name = s.to_string();
        }
    }
    name
}

fn is_structure_file(path: &Path) -> bool {
    let n = path
        .file_name()
        .map(|s| s.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let n = n.strip_suffix(".gz").unwrap_or(&n);
    [".pdb", ".ent", ".cif", ".mmcif"]
        .iter()
        .any(|e| n.ends_with(e))
}

/// Read a PDB or mmCIF file, gzip-compressed or not (detected from the content: the gzip
/// magic number, and `_atom_site` / `data_` for mmCIF, else PDB).
pub fn read_structure(path: &Path, opts: &ReadOptions) -> Result<Structure> {
    let raw = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| Error::format(path, format!("gzip: {e}")))?;
        out
    } else {
        raw
    };
    let text = String::from_utf8_lossy(&bytes);
    let lower = path.to_string_lossy().to_ascii_lowercase();
    let lower = lower.strip_suffix(".gz").unwrap_or(&lower);
    let is_cif = lower.ends_with(".cif")
        || lower.ends_with(".mmcif")
        || (!lower.ends_with(".pdb")
            && !lower.ends_with(".ent")
            && (text.trim_start().starts_with("data_") || text.contains("\n_atom_site.")));
    let (atoms, unknown) = if is_cif {
        parse_cif(path, &text, opts)?
    } else {
        parse_pdb(path, &text, opts)?
    };
    if atoms.is_empty() {
        return Err(Error::format(
            path,
            format!(
                "no atoms read (as {}; waters skipped: {}, hydrogens skipped: {})",
                if is_cif { "mmCIF" } else { "PDB" },
                opts.skip_waters,
                opts.skip_hydrogens
            ),
        ));
    }
    Ok(Structure {
        name: stem(path),
        atoms,
        path: path.to_path_buf(),
        unknown_elements: unknown,
    })
}

/// Expand `paths` (structure files, folders scanned non-recursively for `.pdb/.ent/.cif/.mmcif`
/// with optional `.gz`, or list files `.txt`/`.lst` with one path per line, relative paths
/// taken from the list's folder, `#` comments) and read every structure. Files that cannot be
/// read are returned with their error; the others are read (in parallel) in the given order.
pub fn collect_structures(
    paths: &[PathBuf],
    opts: &ReadOptions,
) -> (Vec<Structure>, Vec<(PathBuf, Error)>) {
    let mut files = Vec::new();
    let mut errors = Vec::new();
    for p in paths {
        if p.is_dir() {
            match std::fs::read_dir(p) {
                Ok(rd) => {
                    let mut v: Vec<PathBuf> = rd
                        .filter_map(|e| e.ok().map(|e| e.path()))
                        .filter(|q| q.is_file() && is_structure_file(q))
                        .collect();
                    v.sort();
                    files.extend(v);
                }
                Err(e) => errors.push((p.clone(), Error::io(p, e))),
            }
            continue;
        }
        let ext = p
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        if ext == "txt" || ext == "lst" {
            match std::fs::read_to_string(p) {
                Ok(t) => {
                    let base = p.parent().unwrap_or(Path::new(""));
                    for l in t.lines() {
                        let l = l.trim();
                        if l.is_empty() || l.starts_with('#') {
                            continue;
                        }
                        let q = PathBuf::from(l);
                        files.push(if q.is_absolute() { q } else { base.join(q) });
                    }
                }
                Err(e) => errors.push((p.clone(), Error::io(p, e))),
            }
            continue;
        }
        files.push(p.clone());
    }
    let results: Vec<(PathBuf, Result<Structure>)> = files
        .into_par_iter()
        .map(|f| {
            let r = read_structure(&f, opts);
            (f, r)
        })
        .collect();
    let mut structures = Vec::new();
    for (f, r) in results {
        match r {
            Ok(s) => structures.push(s),
            Err(e) => errors.push((f, e)),
        }
    }
    (structures, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elements_from_names() {
        assert_eq!(element_from_atom_name(" CA "), "C");
        assert_eq!(element_from_atom_name("FE  "), "Fe");
        assert_eq!(element_from_atom_name("HD21"), "H");
        assert_eq!(element_from_atom_name("1HB "), "H");
        assert_eq!(atomic_number("Se"), Some(34));
        assert_eq!(atomic_number("ZN"), Some(30));
    }

    #[test]
    fn cif_tokens_quoted() {
        let mut v = Vec::new();
        cif_tokens("ATOM 1 C \"C1'\" 'O5 x' 1.0", &mut v);
        assert_eq!(v, ["ATOM", "1", "C", "C1'", "O5 x", "1.0"]);
    }
}
