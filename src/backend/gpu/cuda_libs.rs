//! Finding the CUDA libraries (driver, NVRTC, cuFFT) on CUDA 12 and CUDA 13 installs.
//!
//! cudarc opens each library by name (`libnvrtc.so`, `libnvrtc.so.13`, `.12`, `.11`, ...;
//! the list comes from `cudarc::get_lib_name_candidates`, and cudarc is built for CUDA 13.0 so
//! that it lists the sonames of both CUDA 12 and CUDA 13) through the dynamic loader's search
//! path. Libraries elsewhere (pip wheels, a toolkit not on the loader path) are found here and
//! **preloaded by full path**: the loader then answers cudarc's later open of the same soname
//! with the already loaded object.
//!
//! Order, per library:
//! 1. `CDIPHASE_LIBCUDA`, `CDIPHASE_LIBNVRTC`, `CDIPHASE_LIBCUFFT`: the path of that file;
//! 2. `CDIPHASE_CUDA_LIB_DIR`: folders (`:`-separated) searched for the candidate names;
//! 3. the loader's own path (`LD_LIBRARY_PATH`, `ldconfig`), as cudarc would;
//! 4. well-known folders: `$CUDA_HOME`, `$CUDA_PATH`, `/usr/local/cuda*`, the NVIDIA pip
//!    wheels of `$VIRTUAL_ENV` and `$CONDA_PREFIX`, `/usr/local/nvidia/lib64`.
//!
//! A library that is not found is an error naming everything that was tried; one that an
//! override names but that another copy on the loader path would shadow is an error too,
//! rather than a silent use of the other copy.

use std::ffi::c_void;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// One of the libraries the CUDA backend loads at run time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CudaLib {
    Driver,
    Nvrtc,
    Cufft,
}

impl CudaLib {
    pub const ALL: [CudaLib; 3] = [CudaLib::Driver, CudaLib::Nvrtc, CudaLib::Cufft];

    /// The name cudarc builds its candidates from (`cuda` -> `libcuda.so`, ...).
    pub fn stem(self) -> &'static str {
        match self {
            CudaLib::Driver => "cuda",
            CudaLib::Nvrtc => "nvrtc",
            CudaLib::Cufft => "cufft",
        }
    }

    /// The file name users know (`libnvrtc.so`).
    pub fn file(self) -> String {
        format!("lib{}.so", self.stem())
    }

    /// The override variable naming the library's file.
    pub fn env(self) -> &'static str {
        match self {
            CudaLib::Driver => "CDIPHASE_LIBCUDA",
            CudaLib::Nvrtc => "CDIPHASE_LIBNVRTC",
            CudaLib::Cufft => "CDIPHASE_LIBCUFFT",
        }
    }

    /// What provides it.
    fn provider(self) -> &'static str {
        match self {
            CudaLib::Driver => "the NVIDIA driver",
            CudaLib::Nvrtc => {
                "the CUDA toolkit, or the pip wheel nvidia-cuda-nvrtc (CUDA 13) / \
                 nvidia-cuda-nvrtc-cu12"
            }
            CudaLib::Cufft => {
                "the CUDA toolkit, or the pip wheel nvidia-cufft (CUDA 13) / nvidia-cufft-cu12"
            }
        }
    }

    /// Sub-folders of a pip environment's `site-packages/nvidia` that hold it.
    fn wheel_dirs(self) -> &'static [&'static str] {
        match self {
            CudaLib::Driver => &[],
            CudaLib::Nvrtc => &["cu13/lib", "cuda_nvrtc/lib", "cu12/lib"],
            CudaLib::Cufft => &["cu13/lib", "cufft/lib", "cu12/lib"],
        }
    }

    /// The names cudarc tries, in its order (unversioned first, then `.so.13`, `.so.12`, ...).
    pub fn candidates(self) -> Vec<String> {
        cudarc::get_lib_name_candidates(self.stem())
    }

    fn slot(self) -> &'static OnceLock<Result<Located, String>> {
        static SLOTS: [OnceLock<Result<Located, String>>; 3] =
            [OnceLock::new(), OnceLock::new(), OnceLock::new()];
        &SLOTS[self as usize]
    }
}

/// Where a library was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Located {
    /// On the dynamic loader's path, under this candidate name.
    LoaderPath(String),
    /// Preloaded from this file, found by the given rule (an override variable or a folder).
    Preloaded { path: PathBuf, how: String },
}

impl std::fmt::Display for Located {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Located::LoaderPath(name) => write!(f, "{name} (loader path)"),
            Located::Preloaded { path, how } => write!(f, "{} ({how})", path.display()),
        }
    }
}

/// Find (and if needed preload) `lib`, once per process. `Err` is a message naming the
/// library, its provider and everything tried.
pub fn locate(lib: CudaLib) -> Result<Located, String> {
    lib.slot()
        .get_or_init(|| find(lib, &Env::from_process()))
        .clone()
}

/// The environment the search reads (a struct so that tests can pass their own).
#[derive(Clone, Debug, Default)]
pub struct Env {
    pub override_file: Option<PathBuf>,
    pub lib_dirs: Vec<PathBuf>,
    pub known_dirs: Vec<PathBuf>,
}

impl Env {
    fn from_process() -> Env {
        Env {
            override_file: None,
            lib_dirs: std::env::var_os("CDIPHASE_CUDA_LIB_DIR")
                .map(|v| {
                    std::env::split_paths(&v)
                        .filter(|p| !p.as_os_str().is_empty())
                        .collect()
                })
                .unwrap_or_default(),
            known_dirs: known_dirs(),
        }
    }
}

/// Well-known folders of CUDA installs, in order of preference.
fn known_dirs() -> Vec<PathBuf> {
    let mut v = Vec::new();
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(h) = std::env::var_os(var) {
            let h = PathBuf::from(h);
            v.push(h.join("lib64"));
            v.push(h.join("targets/x86_64-linux/lib"));
        }
    }
    v.push(PathBuf::from("/usr/local/cuda/lib64"));
    v.push(PathBuf::from("/usr/local/cuda/targets/x86_64-linux/lib"));
    let mut versioned: Vec<PathBuf> = std::fs::read_dir("/usr/local")
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("cuda-"))
                })
                .collect()
        })
        .unwrap_or_default();
    versioned.sort();
    versioned.reverse(); // newest first
    for p in versioned {
        v.push(p.join("lib64"));
        v.push(p.join("targets/x86_64-linux/lib"));
    }
    for var in ["VIRTUAL_ENV", "CONDA_PREFIX"] {
        if let Some(prefix) = std::env::var_os(var) {
            let prefix = PathBuf::from(prefix);
            v.push(prefix.join("lib"));
            for sp in site_packages(&prefix) {
                v.push(sp.join("nvidia"));
            }
        }
    }
    v.push(PathBuf::from("/usr/local/nvidia/lib64"));
    v.push(PathBuf::from("/usr/lib/x86_64-linux-gnu"));
    v
}

fn site_packages(prefix: &Path) -> Vec<PathBuf> {
    let lib = prefix.join("lib");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&lib)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path().join("site-packages")))
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The folders to look in under `dir`: itself, and the wheel layout below a `nvidia` folder.
fn expand(lib: CudaLib, dir: &Path) -> Vec<PathBuf> {
    let mut v = vec![dir.to_path_buf()];
    if dir.file_name().is_some_and(|n| n == "nvidia") {
        v.extend(lib.wheel_dirs().iter().map(|s| dir.join(s)));
    }
    v
}

/// Open `path` and keep it loaded for the life of the process.
fn preload(path: &Path) -> Result<*mut c_void, String> {
    // SAFETY: opening a CUDA library runs its initialisers, which have no preconditions on
    // our side; the handle is never closed, so nothing loaded from it can dangle.
    let lib = unsafe { libloading::os::unix::Library::new(path) }
        .map_err(|e| format!("{}: cannot be loaded: {e}", path.display()))?;
    Ok(lib.into_raw())
}

/// The handle the loader gives for the first of cudarc's candidate names it resolves, and
/// that name: what cudarc itself will open.
fn loader_choice(lib: CudaLib) -> Option<(String, *mut c_void)> {
    lib.candidates().into_iter().find_map(|name| {
        // SAFETY: as in `preload`.
        unsafe { libloading::os::unix::Library::new(&name) }
            .ok()
            .map(|l| (name, l.into_raw()))
    })
}

fn find(lib: CudaLib, env: &Env) -> Result<Located, String> {
    let names = lib.candidates();
    let mut tried = Vec::new();
    let override_file = env
        .override_file
        .clone()
        .or_else(|| std::env::var_os(lib.env()).map(PathBuf::from));
    // 1. the override variable
    if let Some(p) = override_file {
        if !p.is_file() {
            return Err(format!(
                "{}: {}={} is not a file",
                lib.file(),
                lib.env(),
                p.display()
            ));
        }
        let h = preload(&p).map_err(|e| format!("{} ({}): {e}", lib.file(), lib.env()))?;
        return confirm(lib, p, h, lib.env().to_string());
    }
    // 2. CDIPHASE_CUDA_LIB_DIR
    for d in &env.lib_dirs {
        for dir in expand(lib, d) {
            if let Some(p) = first_file(&dir, &names) {
                let h = preload(&p)?;
                return confirm(lib, p, h, "CDIPHASE_CUDA_LIB_DIR".into());
            }
            tried.push(dir.display().to_string());
        }
    }
    if !env.lib_dirs.is_empty() {
        return Err(not_found(lib, &names, &tried, true));
    }
    // 3. the loader's path, as cudarc looks
    if let Some((name, _)) = loader_choice(lib) {
        return Ok(Located::LoaderPath(name));
    }
    // 4. well-known folders
    for d in &env.known_dirs {
        for dir in expand(lib, d) {
            if !dir.is_dir() {
                continue;
            }
            if let Some(p) = first_file(&dir, &names) {
                if let Ok(h) = preload(&p) {
                    return confirm(lib, p, h, format!("found in {}", dir.display()));
                }
            }
            tried.push(dir.display().to_string());
        }
    }
    Err(not_found(lib, &names, &tried, false))
}

/// The first candidate name present in `dir` (symlinks followed).
fn first_file(dir: &Path, names: &[String]) -> Option<PathBuf> {
    names.iter().map(|n| dir.join(n)).find(|p| p.is_file())
}

/// After a preload: cudarc must now resolve the library to the same object.
fn confirm(
    lib: CudaLib,
    path: PathBuf,
    handle: *mut c_void,
    how: String,
) -> Result<Located, String> {
    match loader_choice(lib) {
        Some((_, h)) if h == handle => Ok(Located::Preloaded { path, how }),
        Some((name, _)) => Err(format!(
            "{}: {} was loaded ({how}), but the loader resolves '{name}' to another copy, \
             which cudarc would use: remove that copy's folder from LD_LIBRARY_PATH",
            lib.file(),
            path.display()
        )),
        None => Err(format!(
            "{}: {} was loaded ({how}) but its soname is none of the names cudarc opens ({}): \
             is it really {}?",
            lib.file(),
            path.display(),
            lib.candidates().join(", "),
            lib.file()
        )),
    }
}

fn not_found(lib: CudaLib, names: &[String], tried: &[String], only_dirs: bool) -> String {
    let mut msg = format!(
        "{} not found (from {}). Tried: {} (unset)",
        lib.file(),
        lib.provider(),
        lib.env()
    );
    if only_dirs {
        msg += &format!("; CDIPHASE_CUDA_LIB_DIR folders: {}", tried.join(", "));
    } else {
        let ld = std::env::var("LD_LIBRARY_PATH").unwrap_or_default();
        // the Linux spellings, once each (cudarc also tries Windows-style `64_NN` names)
        let mut linux: Vec<&str> = Vec::new();
        for n in names {
            if n.starts_with(&lib.file()) && !linux.contains(&n.as_str()) {
                linux.push(n);
            }
        }
        msg += &format!(
            "; the loader path (LD_LIBRARY_PATH={ld:?}, ldconfig) under the names {}; the folders {}",
            linux.join(", "),
            if tried.is_empty() { "(none exist)".to_string() } else { tried.join(", ") }
        );
    }
    msg += &format!(
        ". Set {} to the library's file or CDIPHASE_CUDA_LIB_DIR to its folder.",
        lib.env()
    );
    msg
}

/// Every library's status, for `cdiphase info` and `selftest`.
pub fn report() -> Vec<(CudaLib, Result<Located, String>)> {
    CudaLib::ALL.iter().map(|&l| (l, locate(l))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_cover_cuda_12_and_13() {
        let n = CudaLib::Nvrtc.candidates();
        for want in ["libnvrtc.so", "libnvrtc.so.13", "libnvrtc.so.12"] {
            assert!(n.iter().any(|c| c == want), "{want} missing from {n:?}");
        }
        // cuFFT's soname is libcufft.so.11 in CUDA 12 and libcufft.so.12 in CUDA 13
        let f = CudaLib::Cufft.candidates();
        for want in ["libcufft.so.12", "libcufft.so.11"] {
            assert!(f.iter().any(|c| c == want), "{want} missing from {f:?}");
        }
    }

    #[test]
    fn missing_library_names_everything_tried() {
        let empty = tempfile::tempdir().unwrap();
        let env = Env {
            override_file: None,
            lib_dirs: vec![empty.path().to_path_buf()],
            known_dirs: vec![],
        };
        let e = find(CudaLib::Cufft, &env).unwrap_err();
        assert!(e.contains("libcufft.so not found"), "{e}");
        assert!(e.contains(&empty.path().display().to_string()), "{e}");
        assert!(e.contains("CDIPHASE_LIBCUFFT"), "{e}");
        // a file that is not a library: named, with the loader's reason
        let bad = empty.path().join("libnvrtc.so.13");
        std::fs::write(&bad, b"not an ELF file").unwrap();
        let env = Env {
            override_file: Some(bad.clone()),
            ..Env::default()
        };
        let e = find(CudaLib::Nvrtc, &env).unwrap_err();
        assert!(
            e.contains("cannot be loaded") && e.contains("libnvrtc.so.13"),
            "{e}"
        );
        let env = Env {
            override_file: Some(empty.path().join("nope.so")),
            ..Env::default()
        };
        let e = find(CudaLib::Nvrtc, &env).unwrap_err();
        assert!(e.contains("is not a file"), "{e}");
    }
}
