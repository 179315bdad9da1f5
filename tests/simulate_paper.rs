//! The simulator in the paper's geometry (issue 13): a fixed pixel size, supersampling and
//! binning against a float64 fine-grid sum, molmap's extent (support = density > 0 exactly
//! where the truncated Gaussians reach), bounding-box centring, the `paper` preset and its
//! overrides, too-large structures skipped or refused, `--chains`, and assemblies.
//!
//! The float64 comparisons draw fresh random particles and orientations each run
//! (`CDIPHASE_TEST_SEED` repeats one); the assembly and real-structure checks keep fixed
//! seeds, as they pin particular draws.

mod common;

use cdiphase::simulate::{
    self, assembly, check_fit, read_structure, simulate, AssemblyConfig, Atom, Centring, Chains,
    IdealSupport, ReadOptions, SimConfig, Structure,
};
use common::cli::{fails, ok};
use common::{seed, Lcg};
use std::path::{Path, PathBuf};
use std::process::Output;

fn pdb(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("assets/pdb")
        .join(name)
}

fn read(name: &str) -> Structure {
    read_structure(&pdb(name), &ReadOptions::default()).unwrap()
}

/// A random blob of `n` atoms within `r` Å, with Z of C, N, O, S, drawn from `g`.
fn blob(name: &str, n: usize, r: f64, g: &mut Lcg) -> Structure {
    let atoms = (0..n)
        .map(|_| {
            let pos = loop {
                let p = [0, 1, 2].map(|_| r * (2.0 * g.next() - 1.0));
                if p.iter().map(|v| v * v).sum::<f64>() <= r * r {
                    break p;
                }
            };
            let z = [6.0, 7.0, 8.0, 16.0][(g.next() * 4.0) as usize];
            Atom {
                pos,
                element: "X".into(),
                electrons: z,
            }
        })
        .collect();
    Structure {
        name: name.into(),
        atoms,
        path: PathBuf::new(),
        unknown_elements: 0,
    }
}

fn qrot(q: &[f64; 4], v: [f64; 3]) -> [f64; 3] {
    let m = simulate::rotation_matrix(q);
    [0, 1, 2].map(|r| m[r][0] * v[0] + m[r][1] * v[1] + m[r][2] * v[2])
}

/// Float64 reference of one projection: every atom's Gaussian (sigma 0.225 x resolution)
/// sampled at the centres of a grid `ss` times finer, kept where the fine pixel lies within
/// `cut` sigma of the atom on both axes, summed over ss x ss blocks. Returns (density per
/// output pixel, whether any Gaussian reaches the pixel).
#[allow(clippy::too_many_arguments)]
fn reference(
    s: &Structure,
    q: &[f64; 4],
    h: usize,
    w: usize,
    pixel_a: f64,
    resolution: f64,
    ss: usize,
    cut: f64,
    bbox: bool,
) -> (Vec<f64>, Vec<bool>) {
    let tot: f64 = s.atoms.iter().map(|a| a.electrons as f64).sum();
    let c: Vec<f64> = (0..3)
        .map(|d| {
            s.atoms
                .iter()
                .map(|a| a.electrons as f64 * a.pos[d])
                .sum::<f64>()
                / tot
        })
        .collect();
    let rotated: Vec<[f64; 3]> = s
        .atoms
        .iter()
        .map(|a| qrot(q, [0, 1, 2].map(|d| a.pos[d] - c[d])))
        .collect();
    let mut off = [0.0; 2];
    if bbox {
        for d in 0..2 {
            let lo = rotated.iter().map(|r| r[d]).fold(f64::INFINITY, f64::min);
            let hi = rotated
                .iter()
                .map(|r| r[d])
                .fold(f64::NEG_INFINITY, f64::max);
            off[d] = 0.5 * (lo + hi);
        }
    }
    let sigma = resolution / (std::f64::consts::PI * 2f64.sqrt());
    let fine = pixel_a / ss as f64; // Å per fine pixel
    let (fh, fw) = (ss * h, ss * w);
    let mut grid = vec![0.0f64; fh * fw];
    let mut reach = vec![false; fh * fw];
    for (a, r) in s.atoms.iter().zip(&rotated) {
        // fine pixel i has its centre at output coordinate (i + 1/2) / ss - 1/2, and the
        // output pixel W/2 is the centre of the field
        let ax = (w / 2) as f64 + (r[0] - off[0]) / pixel_a;
        let ay = (h / 2) as f64 + (r[1] - off[1]) / pixel_a;
        for j in 0..fh {
            let y = ((j as f64 + 0.5) / ss as f64 - 0.5 - ay) * pixel_a; // Å
            if y.abs() > cut * sigma {
                continue;
            }
            for i in 0..fw {
                let x = ((i as f64 + 0.5) / ss as f64 - 0.5 - ax) * pixel_a;
                if x.abs() > cut * sigma {
                    continue;
                }
                // electrons per fine pixel: the Gaussian's density (per Å^2) times its area
                grid[j * fw + i] += a.electrons as f64
                    / (2.0 * std::f64::consts::PI * sigma * sigma)
                    * (-(x * x + y * y) / (2.0 * sigma * sigma)).exp()
                    * fine
                    * fine;
                reach[j * fw + i] = true;
            }
        }
    }
    let mut out = vec![0.0; h * w];
    let mut any = vec![false; h * w];
    for j in 0..fh {
        for i in 0..fw {
            out[(j / ss) * w + i / ss] += grid[j * fw + i];
            any[(j / ss) * w + i / ss] |= reach[j * fw + i];
        }
    }
    (out, any)
}

#[test]
fn binned_fine_grid_matches_float64_and_molmap_support_is_the_reach() {
    let s = blob("blob", 60, 14.0, &mut Lcg::new("binned blob"));
    let sim_seed = seed("binned orientations");
    for &(h, w, ss, bbox, px) in &[
        (40usize, 52usize, 2usize, true, 0.2333),
        (33, 36, 3, false, 0.31),
        (48, 48, 1, true, 0.2333),
    ] {
        let cfg = SimConfig {
            size: (h, w),
            count: 3,
            pixel_size_nm: Some(px),
            supersample: Some(ss),
            ideal_support: IdealSupport::Molmap { cutoff_range: 5.0 },
            centre: if bbox {
                Centring::BoundingBox
            } else {
                Centring::Centroid
            },
            seed: sim_seed,
            ..SimConfig::default()
        };
        let out = simulate(std::slice::from_ref(&s), &cfg, &|_| {}).unwrap();
        for i in 0..cfg.count {
            assert!((out.pixel_size_nm[i] - px).abs() < 1e-12);
            let (e, reach) =
                reference(&s, &out.orientation[i], h, w, px * 10.0, 3.5, ss, 5.0, bbox);
            let got = out.density.image(i);
            let num: f64 = got
                .iter()
                .zip(&e)
                .map(|(&g, &x)| (g as f64 - x).powi(2))
                .sum();
            let den: f64 = e.iter().map(|x| x * x).sum();
            let rel = (num / den).sqrt();
            assert!(
                rel < 2e-6,
                "{h}x{w} ss {ss} pattern {i}: relative error {rel}"
            );
            // molmap: the ideal support is density > 0, exactly the pixels some truncated
            // Gaussian reaches
            let sup = out.support.image(i);
            for k in 0..h * w {
                assert_eq!(sup[k] != 0, got[k] > 0.0, "pixel {k}");
                assert_eq!(
                    sup[k] != 0,
                    reach[k],
                    "{h}x{w} ss {ss} pattern {i} pixel {k}"
                );
            }
            // electrons are conserved once the fine grid resolves the Gaussian: the sum of
            // its samples is 1 + 2 sum_k exp(-2 pi^2 s^2 k^2) cos(2 pi k phase) per axis, s in
            // fine pixels, so off by at most ~2.4e-4 per axis at 0.675 px; at the 0.34 px of
            // unsupersampled 2.33 Å pixels by up to 0.21 per axis, depending on where each
            // atom falls (the aliasing that supersampling removes)
            let total: f64 = got.iter().map(|&v| v as f64).sum();
            let z: f64 = s.atoms.iter().map(|a| a.electrons as f64).sum();
            let s_fine = 3.5 / (std::f64::consts::PI * 2f64.sqrt()) / (px * 10.0 / ss as f64);
            let axis: f64 = (1..10)
                .map(|k| 2.0 * (-2.0 * (std::f64::consts::PI * s_fine * k as f64).powi(2)).exp())
                .sum();
            let tol = if ss >= 2 {
                1e-3
            } else {
                (1.0 + axis).powi(2) - 1.0
            };
            assert!((total / z - 1.0).abs() < tol, "ss {ss}: {total} vs {z}");
        }
    }
}

/// Supersampling removes the aliasing of a 3.5 Å blur on 2.33 Å pixels: the pattern of the
/// binned density is closer to the float64 continuous-projection pattern (sampled with the
/// pixel's box average, as a detector integrates) than the point-sampled one.
#[test]
fn supersampling_reduces_aliasing() {
    let s = blob("blob", 80, 16.0, &mut Lcg::new("aliasing blob"));
    let sim_seed = seed("aliasing orientation");
    let mut errs = Vec::new();
    for ss in [1usize, 2, 8] {
        let cfg = SimConfig {
            size: (64, 64),
            count: 1,
            pixel_size_nm: Some(0.2333),
            supersample: Some(ss),
            centre: Centring::BoundingBox,
            seed: sim_seed,
            ..SimConfig::default()
        };
        let out = simulate(std::slice::from_ref(&s), &cfg, &|_| {}).unwrap();
        // the reference: a 32x finer grid, binned
        let (e, _) = reference(&s, &out.orientation[0], 64, 64, 2.333, 3.5, 32, 6.0, true);
        let got = out.density.image(0);
        let num: f64 = got
            .iter()
            .zip(&e)
            .map(|(&g, &x)| (g as f64 - x).powi(2))
            .sum();
        let den: f64 = e.iter().map(|x| x * x).sum();
        errs.push((num / den).sqrt());
    }
    assert!(errs[1] < 0.5 * errs[0], "{errs:?}");
    assert!(errs[2] < errs[1], "{errs:?}");
}

#[test]
fn bounding_box_centred_and_real_structure_reach() {
    let s = read("1eteA.pdb.gz");
    let cfg = SimConfig {
        count: 4,
        seed: 1,
        ..SimConfig::paper()
    };
    let out = simulate(std::slice::from_ref(&s), &cfg, &|_| {}).unwrap();
    for i in 0..cfg.count {
        let sup = out.support.image(i);
        let (mut y0, mut y1, mut x0, mut x1) = (usize::MAX, 0, usize::MAX, 0);
        for y in 0..128 {
            for x in 0..128 {
                if sup[y * 128 + x] != 0 {
                    y0 = y0.min(y);
                    y1 = y1.max(y);
                    x0 = x0.min(x);
                    x1 = x1.max(x);
                }
            }
        }
        // the support's bounding box is centred on (64, 64) within a pixel
        assert!(((y0 + y1) as f64 / 2.0 - 64.0).abs() <= 1.0, "{y0} {y1}");
        assert!(((x0 + x1) as f64 / 2.0 - 64.0).abs() <= 1.0, "{x0} {x1}");
        let (_, reach) = reference(&s, &out.orientation[i], 128, 128, 2.333, 3.5, 2, 5.0, true);
        let got: Vec<bool> = sup.iter().map(|&v| v != 0).collect();
        assert_eq!(got, reach, "pattern {i}");
        let area = got.iter().filter(|&&v| v).count();
        assert!((150..600).contains(&area), "{area}");
    }
}

/// The configuration in the `--json` summary of a successful run.
fn config_of(o: &Output) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v["configuration"].clone()
}

fn p(x: &Path) -> &str {
    x.to_str().unwrap()
}

#[test]
fn paper_preset_and_overrides() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("a.cxi");
    let one = pdb("1eteA.pdb.gz");
    let base = ["simulate", "--pdb", p(&one), "--count", "2", "-q", "--json"];
    let c = config_of(&ok(
        &[&base[..], &["--preset", "paper", "-o", p(&out)]].concat()
    ));
    assert_eq!(c["size"], serde_json::json!([128, 128]));
    assert_eq!(c["pixel_size_nm"], serde_json::json!(0.2333));
    assert_eq!(c["resolution"], serde_json::json!(3.5));
    assert_eq!(c["supersample"], serde_json::json!(2));
    assert_eq!(c["centre"], serde_json::json!("BoundingBox"));
    assert_eq!(c["noise"], serde_json::json!("None"));
    assert_eq!(c["cutoff_sigmas"], serde_json::json!(5.0));
    assert!(c["ideal_support"]["Molmap"].is_object(), "{c}");
    let f = cdiphase::io::read_support(&out, Some("entry_1/sample_1/support")).unwrap();
    assert_eq!(f.shape(), [2, 128, 128]);

    // explicit flags override the preset
    let c = config_of(&ok(&[
        &base[..],
        &[
            "--preset",
            "paper",
            "--size",
            "96x80",
            "--resolution",
            "4",
            "--ideal-support",
            "threshold:0.05",
            "--centre",
            "centroid",
            "--pixel-size",
            "0.3",
            "-o",
            p(&out),
        ],
    ]
    .concat()));
    assert_eq!(c["size"], serde_json::json!([96, 80]));
    assert_eq!(c["pixel_size_nm"], serde_json::json!(0.3));
    assert_eq!(c["resolution"], serde_json::json!(4.0));
    assert_eq!(c["ideal_support"], serde_json::json!("Threshold"));
    assert_eq!(c["support_threshold"], serde_json::json!(0.05));
    assert_eq!(c["centre"], serde_json::json!("Centroid"));
    // the preset's supersampling was for its own pixel: now automatic (0.3 nm / (4/3) Å -> 3)
    assert_eq!(c["supersample"], serde_json::Value::Null);
    // --fill goes back to the scaled geometry
    let c = config_of(&ok(&[
        &base[..],
        &["--preset", "paper", "--fill", "0.4", "-o", p(&out)],
    ]
    .concat()));
    assert_eq!(c["pixel_size_nm"], serde_json::Value::Null);
    assert_eq!(c["fill"], serde_json::json!(0.4));

    // without a preset: today's defaults
    let c = config_of(&ok(&[&base[..], &["-o", p(&out)]].concat()));
    assert_eq!(c["fill"], serde_json::json!(0.45));
    assert_eq!(c["pixel_size_nm"], serde_json::Value::Null);
    assert_eq!(c["ideal_support"], serde_json::json!("Threshold"));
    assert_eq!(c["support_threshold"], serde_json::json!(0.025));
    assert_eq!(c["centre"], serde_json::json!("Centroid"));

    for (args, needle) in [
        (vec!["--preset", "nature"], "expected paper"),
        (vec!["--ideal-support", "molmap:x"], "expected a number"),
        (vec!["--ideal-support", "otsu"], "expected molmap"),
        (vec!["--centre", "middle"], "expected centroid or bbox"),
        (
            vec!["--pixel-size", "0.2", "--max-extent", "1.5"],
            "maximum extent",
        ),
    ] {
        let e = fails(&[&base[..], &args[..], &["-o", p(&out)]].concat());
        assert!(e.contains(needle), "{args:?}: {e}");
    }
}

#[test]
fn too_large_structures_skipped_or_refused() {
    let big = read("1eteA.pdb.gz");
    let cfg = SimConfig {
        pixel_size_nm: Some(0.03),
        ..SimConfig::paper()
    };
    let e = check_fit(&big, &cfg).unwrap_err().to_string();
    assert!(e.contains("1eteA") && e.contains("skipped"), "{e}");
    assert!(check_fit(&big, &SimConfig::paper()).is_ok());
    // simulate() itself refuses it (never a clipped density)
    let e = simulate(
        std::slice::from_ref(&big),
        &SimConfig {
            count: 1,
            ..cfg.clone()
        },
        &|_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("1eteA"), "{e}");

    let d = tempfile::tempdir().unwrap();
    let small = d.path().join("tiny.pdb");
    std::fs::write(
        &small,
        "ATOM      1  CA  ALA A   1       0.000   0.000   0.000  1.00  0.00           C\n\
         ATOM      2  CA  ALA A   2       3.800   0.000   0.000  1.00  0.00           C\n",
    )
    .unwrap();
    let out = d.path().join("x.cxi");
    let o = ok(&[
        "simulate",
        "--preset",
        "paper",
        "--pixel-size",
        "0.03",
        "--pdb",
        p(&pdb("1eteA.pdb.gz")),
        p(&small),
        "--count",
        "2",
        "-o",
        p(&out),
        "-q",
    ]);
    let err = common::cli::stderr(&o);
    assert!(err.contains("warning: skipped 1eteA"), "{err}");
    let names = cdiphase::io::read_string(&out, "entry_1/sample_1/name").unwrap();
    assert_eq!(names, "tiny\ntiny");
    let err = fails(&[
        "simulate",
        "--preset",
        "paper",
        "--pixel-size",
        "0.03",
        "--pdb",
        p(&pdb("1eteA.pdb.gz")),
        "--count",
        "2",
        "-o",
        p(&d.path().join("y.cxi")),
        "-q",
    ]);
    assert!(err.contains("none of the 1 structures fits"), "{err}");
    assert!(!d.path().join("y.cxi").exists());
}

const TWO_CHAINS: &str = "\
ATOM      1  CA  ALA A   1       0.000   0.000   0.000  1.00  0.00           C
ATOM      2  CA  ALA A   2       3.800   0.000   0.000  1.00  0.00           C
HETATM    3 ZN    ZN A 101       1.000   1.000   1.000  1.00  0.00          ZN
ATOM      4  CA  GLY B   1      20.000   0.000   0.000  1.00  0.00           C
ATOM      5  CA  GLY B   2      23.800   0.000   0.000  1.00  0.00           C
END
";

#[test]
fn chains_all_or_first() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("ab.pdb");
    std::fs::write(&f, TWO_CHAINS).unwrap();
    let all = read_structure(&f, &ReadOptions::default()).unwrap();
    assert_eq!(all.atoms.len(), 5);
    let first = read_structure(
        &f,
        &ReadOptions {
            chains: Chains::First,
            ..ReadOptions::default()
        },
    )
    .unwrap();
    let z: Vec<f32> = first.atoms.iter().map(|a| a.electrons).collect();
    assert_eq!(z, [6.0, 6.0, 30.0]);
    let cif = d.path().join("ab.cif");
    std::fs::write(
        &cif,
        "data_x\nloop_\n_atom_site.group_PDB\n_atom_site.type_symbol\n_atom_site.label_atom_id\n\
         _atom_site.label_comp_id\n_atom_site.auth_asym_id\n_atom_site.Cartn_x\n\
         _atom_site.Cartn_y\n_atom_site.Cartn_z\n\
         ATOM C CA ALA A 0 0 0\nATOM C CA ALA A 3.8 0 0\nATOM N N GLY B 20 0 0\n",
    )
    .unwrap();
    let r = |c| {
        read_structure(
            &cif,
            &ReadOptions {
                chains: c,
                ..ReadOptions::default()
            },
        )
        .unwrap()
        .atoms
        .len()
    };
    assert_eq!((r(Chains::All), r(Chains::First)), (3, 2));
    assert!(Chains::parse("second").is_err());
}

fn min_distance(a: &[[f64; 3]], b: &[[f64; 3]]) -> f64 {
    let mut m = f64::INFINITY;
    for p in a {
        for q in b {
            m = m.min(
                ((p[0] - q[0]).powi(2) + (p[1] - q[1]).powi(2) + (p[2] - q[2]).powi(2)).sqrt(),
            );
        }
    }
    m
}

#[test]
fn assemblies_touch_without_overlap_and_are_named() {
    let parts = vec![
        read("1eteA.pdb.gz"),
        read("2xdgA.pdb.gz"),
        blob("blob", 300, 12.0, &mut Lcg(3)),
    ];
    let ac = AssemblyConfig {
        count: 6,
        parts: (2, 3),
    };
    let mut counts = std::collections::HashSet::new();
    for k in 0..ac.count {
        let a = assembly::build(&parts, &ac, 7, k, 0);
        assert_eq!(a, assembly::build(&parts, &ac, 7, k, 0), "deterministic");
        counts.insert(a.parts.len());
        let ids: Vec<&str> = a
            .parts
            .iter()
            .map(|p| parts[p.structure].name.as_str())
            .collect();
        assert_eq!(a.name, format!("asm{k:05}-{}", ids.join("+")));
        // each part's atoms in the assembly frame
        let placed: Vec<Vec<[f64; 3]>> = a
            .parts
            .iter()
            .map(|p| {
                let s = &parts[p.structure];
                let single = Structure {
                    atoms: s.atoms.clone(),
                    ..s.clone()
                };
                let tot: f64 = single.atoms.iter().map(|x| x.electrons as f64).sum();
                let c: Vec<f64> = (0..3)
                    .map(|d| {
                        single
                            .atoms
                            .iter()
                            .map(|x| x.electrons as f64 * x.pos[d])
                            .sum::<f64>()
                            / tot
                    })
                    .collect();
                single
                    .atoms
                    .iter()
                    .map(|x| {
                        let r = [0, 1, 2].map(|d| {
                            (0..3)
                                .map(|e| p.rotation[d][e] * (x.pos[e] - c[e]))
                                .sum::<f64>()
                        });
                        [0, 1, 2].map(|d| r[d] + p.offset[d])
                    })
                    .collect()
            })
            .collect();
        for j in 1..placed.len() {
            let others: Vec<[f64; 3]> = placed[..j].iter().flatten().copied().collect();
            let m = min_distance(&placed[j], &others);
            assert!(
                (2.0..8.0).contains(&m),
                "assembly {k} part {j}: closest atoms {m} Å"
            );
        }
        let st = a.to_structure(&parts);
        let all: Vec<[f64; 3]> = placed.iter().flatten().copied().collect();
        assert_eq!(st.atoms.len(), all.len());
        for (x, y) in st.atoms.iter().zip(&all) {
            assert!((0..3).all(|d| (x.pos[d] - y[d]).abs() < 1e-9));
        }
    }
    assert_eq!(counts.len(), 2, "both 2 and 3 parts drawn");

    // simulated: names and indices recorded, the density is the assembly's
    let cfg = SimConfig {
        count: 4,
        assemblies: Some(AssemblyConfig {
            count: 3,
            parts: (2, 2),
        }),
        seed: 7,
        ..SimConfig::paper()
    };
    let out = simulate(&parts, &cfg, &|_| {}).unwrap();
    assert!(
        out.names.iter().all(|n| n.starts_with("asm")),
        "{:?}",
        out.names
    );
    assert_eq!(out.names[0], out.names[3]);
    assert_eq!(out.structure_index, [0, 1, 2, 0]);
    let a0 = assembly::build(&parts, cfg.assemblies.as_ref().unwrap(), 7, 0, 0);
    let single = SimConfig {
        assemblies: None,
        ..cfg.clone()
    };
    let alone = simulate(&[a0.to_structure(&parts)], &single, &|_| {}).unwrap();
    let (x, y) = (out.density.image(0), alone.density.image(0));
    let rel = (x
        .iter()
        .zip(y)
        .map(|(a, b)| ((a - b) as f64).powi(2))
        .sum::<f64>()
        / y.iter().map(|b| (*b as f64).powi(2)).sum::<f64>())
    .sqrt();
    assert!(rel < 1e-5, "{rel}");
}
