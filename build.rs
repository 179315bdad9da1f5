//! Compiles the CUDA kernels in kernels/*.cu as host C++20 through the emulator shim
//! (kernels/emu/cuda_emu.h), one wrapper translation unit per kernel family, into the static
//! library behind `--device emu`. The CUDA backend compiles the same sources with NVRTC at run
//! time; build.rs only embeds nothing: the .cu sources are `include_str!`ed by the backend.

fn main() {
    let sources = [
        "kernels/emu/runtime.cpp",
        "kernels/emu/phasing_emu.cpp",
        "kernels/emu/nn_emu.cpp",
        "kernels/emu/test_emu.cpp",
    ];
    let mut b = cc::Build::new();
    b.cpp(true)
        .std("c++20")
        .include("kernels")
        .define("CDIPHASE_EMU", None)
        .opt_level(2)
        .flag_if_supported("-fno-math-errno")
        .flag_if_supported("-ffp-contract=off")
        // `#pragma unroll` is for nvcc/NVRTC; kernels take arguments some variants ignore
        .flag_if_supported("-Wno-unknown-pragmas")
        .flag_if_supported("-Wno-unused-parameter")
        .warnings(true);
    for s in sources {
        if std::path::Path::new(s).exists() {
            b.file(s);
        }
    }
    b.compile("cdiphase_emu");
    println!("cargo:rerun-if-changed=kernels");
    println!("cargo:rerun-if-changed=build.rs");
}
