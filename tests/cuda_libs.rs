//! Finding the CUDA libraries with fake library folders (no GPU, no CUDA needed): the override
//! variables, `CDIPHASE_CUDA_LIB_DIR`, a pip wheel's layout under `$VIRTUAL_ENV`, a file with
//! the wrong soname, and a clear message naming what was tried for each missing library.
//! The fakes are built with gcc (on every CI machine: the emulator's kernels need it too).

use std::path::{Path, PathBuf};
use std::process::Command;

/// A shared library at `dir/file` whose soname is `soname` (one harmless exported function).
fn fake_lib(dir: &Path, file: &str, soname: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let src = dir.join(format!("{file}.c"));
    std::fs::write(&src, "int cdiphase_fake_library(void) { return 7; }\n").unwrap();
    let out = dir.join(file);
    let o = Command::new("gcc")
        .args(["-shared", "-fPIC", &format!("-Wl,-soname,{soname}"), "-o"])
        .arg(&out)
        .arg(&src)
        .output()
        .expect("gcc is needed to build the fake CUDA libraries of this test");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    out
}

/// `cdiphase info` with a clean library environment plus `envs`.
fn info(envs: &[(&str, &Path)]) -> String {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cdiphase"));
    c.arg("info");
    for v in [
        "LD_LIBRARY_PATH",
        "CDIPHASE_LIBCUDA",
        "CDIPHASE_LIBNVRTC",
        "CDIPHASE_LIBCUFFT",
        "CDIPHASE_CUDA_LIB_DIR",
        "VIRTUAL_ENV",
        "CONDA_PREFIX",
        "CUDA_HOME",
        "CUDA_PATH",
    ] {
        c.env_remove(v);
    }
    for (k, v) in envs {
        c.env(k, v);
    }
    let o = c.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn line<'a>(text: &'a str, lib: &str) -> &'a str {
    text.lines()
        .find(|l| l.trim_start().starts_with(lib))
        .unwrap_or_else(|| panic!("no {lib} line in:\n{text}"))
}

#[test]
fn libraries_are_found_by_override_folder_and_wheel_layout() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // CUDA 13 sonames, which a cudarc built for 12.x would not have opened
    let nvrtc = fake_lib(&d.join("a"), "libnvrtc.so.13", "libnvrtc.so.13");
    let out = info(&[("CDIPHASE_LIBNVRTC", &nvrtc)]);
    let l = line(&out, "libnvrtc.so");
    assert!(
        l.contains(&nvrtc.display().to_string()) && l.contains("(CDIPHASE_LIBNVRTC)"),
        "{out}"
    );

    let folder = d.join("b");
    fake_lib(&folder, "libcufft.so.12", "libcufft.so.12");
    let out = info(&[("CDIPHASE_CUDA_LIB_DIR", &folder)]);
    let l = line(&out, "libcufft.so");
    assert!(l.contains("(CDIPHASE_CUDA_LIB_DIR)"), "{out}");
    // the folder had no NVRTC: named as tried
    let l = line(&out, "libnvrtc.so");
    assert!(
        l.contains("missing") && l.contains(&folder.display().to_string()),
        "{out}"
    );

    // a pip wheel in a virtual environment: site-packages/nvidia/cu13/lib
    let venv = d.join("venv");
    let wheel = venv.join("lib/python3.12/site-packages/nvidia/cu13/lib");
    fake_lib(&wheel, "libnvrtc.so.13", "libnvrtc.so.13");
    let out = info(&[("VIRTUAL_ENV", &venv)]);
    let l = line(&out, "libnvrtc.so");
    assert!(l.contains("cu13/lib") && l.contains("found in"), "{out}");
}

#[test]
fn wrong_or_missing_libraries_are_clear_messages() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // a library named like NVRTC whose soname is something else
    let wrong = fake_lib(&d.join("w"), "libnvrtc.so.13", "libsomething.so.1");
    let out = info(&[("CDIPHASE_LIBNVRTC", &wrong)]);
    let l = line(&out, "libnvrtc.so");
    assert!(l.contains("soname") && l.contains("missing"), "{out}");

    // nothing anywhere: each library says what it tried and how to point at it
    let empty = d.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let out = info(&[("CDIPHASE_CUDA_LIB_DIR", &empty)]);
    for (lib, var) in [
        ("libcuda.so", "CDIPHASE_LIBCUDA"),
        ("libnvrtc.so", "CDIPHASE_LIBNVRTC"),
        ("libcufft.so", "CDIPHASE_LIBCUFFT"),
    ] {
        let l = line(&out, lib);
        assert!(
            l.contains("not found") && l.contains(var) && l.contains(&empty.display().to_string()),
            "{lib}: {out}"
        );
    }
}
