//! The diffraction simulator: physics identities (Friedel, Parseval, photon count), the
//! projected density against a direct float64 sum, determinism across thread counts, masks,
//! and the PDB/mmCIF readers. Ignored tests: phasing of every shared structure from its ideal
//! support, and the 10,000-pattern timing.

use cdiphase::simulate::{
    collect_structures, random_quaternion, read_structure, rotation_matrix, simulate,
    simulate_to_cxi, write_cxi, Atom, AtomModel, MaskSpec, Noise, ReadOptions, SimConfig,
    Structure,
};
use std::io::Write;
use std::path::{Path, PathBuf};

fn pdb_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/pdb")
}

fn one_structure() -> Structure {
    read_structure(&pdb_dir().join("1eteA.pdb.gz"), &ReadOptions::default()).unwrap()
}

fn toy() -> Structure {
    let atoms = [
        ([0.0, 0.0, 0.0], 6.0),
        ([4.1, 1.3, -2.0], 8.0),
        ([-3.2, 2.7, 1.5], 7.0),
        ([1.0, -5.0, 3.0], 16.0),
        ([-2.5, -1.5, -3.5], 6.0),
    ];
    Structure {
        name: "toy".into(),
        atoms: atoms
            .iter()
            .map(|&(pos, e)| Atom {
                pos,
                element: "X".into(),
                electrons: e,
            })
            .collect(),
        path: PathBuf::new(),
        unknown_elements: 0,
    }
}

#[test]
fn friedel_parseval_and_photon_count() {
    let s = vec![one_structure(), toy()];
    let (h, w) = (64, 64);
    let cfg = SimConfig {
        size: (h, w),
        count: 4,
        seed: 11,
        ..SimConfig::default()
    };
    let out = simulate(&s, &cfg, &|_| {}).unwrap();
    for i in 0..cfg.count {
        let im = out.intensities.image(i);
        let max = im.iter().fold(0f32, |m, &v| m.max(v)) as f64;
        let mut worst = 0f64;
        for y in 0..h {
            for x in 0..w {
                let (fy, fx) = ((h - y) % h, (w - x) % w);
                worst = worst.max((im[y * w + x] as f64 - im[fy * w + fx] as f64).abs());
            }
        }
        assert!(worst / max < 1e-5, "Friedel pattern {i}: {}", worst / max);
        let si: f64 = im.iter().map(|&v| v as f64).sum();
        let sd: f64 = out
            .density
            .image(i)
            .iter()
            .map(|&v| (v as f64).powi(2))
            .sum();
        let rel = (si - (h * w) as f64 * sd).abs() / si;
        assert!(rel < 1e-4, "Parseval pattern {i}: {rel}");
        // Total electrons ~ the integral of the density.
        let electrons: f64 = s[i % 2].atoms.iter().map(|a| a.electrons as f64).sum();
        let sum_d: f64 = out.density.image(i).iter().map(|&v| v as f64).sum();
        assert!(
            (sum_d / electrons - 1.0).abs() < 0.02,
            "{sum_d} vs {electrons}"
        );
        // Support: > 1% of the maximum, and contains the density's centre pixel.
        assert_eq!(out.support.image(i)[(h / 2) * w + w / 2], 1);
    }
    let photons = 1e6;
    let exact = simulate(
        &s,
        &SimConfig {
            photons: Some(photons),
            ..cfg.clone()
        },
        &|_| {},
    )
    .unwrap();
    let noisy = simulate(
        &s,
        &SimConfig {
            photons: Some(photons),
            noise: Noise::Poisson,
            ..cfg.clone()
        },
        &|_| {},
    )
    .unwrap();
    for i in 0..cfg.count {
        let t: f64 = exact.intensities.image(i).iter().map(|&v| v as f64).sum();
        assert!((t / photons - 1.0).abs() < 1e-5, "noise-free total {t}");
        let t: f64 = noisy.intensities.image(i).iter().map(|&v| v as f64).sum();
        assert!(
            (t - photons).abs() < 5.0 * photons.sqrt(),
            "Poisson total {t}"
        );
        assert!(noisy.intensities.image(i).iter().all(|v| v.fract() == 0.0));
        assert_eq!(exact.density.image(i), out.density.image(i));
    }
}

#[test]
fn deterministic_across_runs_and_threads() {
    let s = vec![one_structure(), toy()];
    let cfg = SimConfig {
        size: (48, 40),
        count: 7,
        photons: Some(1e5),
        noise: Noise::Poisson,
        mask: MaskSpec::parse("stripe:3,beamstop:4").unwrap(),
        seed: 5,
        ..SimConfig::default()
    };
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| simulate(&s, &cfg, &|_| {}).unwrap())
    };
    let a = run(1);
    let b = run(2);
    let c = run(2);
    for o in [&b, &c] {
        assert_eq!(a.intensities, o.intensities);
        assert_eq!(a.density, o.density);
        assert_eq!(a.support, o.support);
        assert_eq!(a.mask, o.mask);
        assert_eq!(a.orientation, o.orientation);
    }
    let other = simulate(
        &s,
        &SimConfig {
            seed: 6,
            ..cfg.clone()
        },
        &|_| {},
    )
    .unwrap();
    assert_ne!(other.intensities, a.intensities);
}

fn rg(p: &[[f64; 3]]) -> f64 {
    let n = p.len() as f64;
    let c: Vec<f64> = (0..3)
        .map(|d| p.iter().map(|v| v[d]).sum::<f64>() / n)
        .collect();
    (p.iter()
        .map(|v| (0..3).map(|d| (v[d] - c[d]).powi(2)).sum::<f64>())
        .sum::<f64>()
        / n)
        .sqrt()
}

#[test]
fn rotation_keeps_radius_of_gyration() {
    let s = one_structure();
    let pos: Vec<[f64; 3]> = s.atoms.iter().map(|a| a.pos).collect();
    let r0 = rg(&pos);
    for i in 0..20 {
        let q = random_quaternion(9, i);
        let norm: f64 = q.iter().map(|v| v * v).sum();
        assert!((norm - 1.0).abs() < 1e-12);
        let m = rotation_matrix(&q);
        let rot: Vec<[f64; 3]> = pos
            .iter()
            .map(|p| {
                let mut o = [0.0; 3];
                for (r, row) in o.iter_mut().zip(&m) {
                    *r = row[0] * p[0] + row[1] * p[1] + row[2] * p[2];
                }
                o
            })
            .collect();
        assert!((rg(&rot) / r0 - 1.0).abs() < 1e-12);
    }
    // Uniformity, roughly: the mean of |w| of a uniform rotation is 8 / (3 pi) ~ 0.849 for
    // w >= 0 canonical quaternions... use <w^2> = 1/2 + ... simpler: <x^2> = <y^2> = <z^2> = 1/4.
    let n = 4000;
    let mut m2 = [0.0f64; 4];
    for i in 0..n {
        let q = random_quaternion(1, i);
        for d in 0..4 {
            m2[d] += q[d] * q[d] / n as f64;
        }
    }
    for v in m2 {
        assert!((v - 0.25).abs() < 0.02, "{m2:?}");
    }
}

/// Rotate a point by a unit quaternion [w, x, y, z] with q v q*, written independently.
fn qrot(q: &[f64; 4], v: [f64; 3]) -> [f64; 3] {
    let (w, u) = (q[0], [q[1], q[2], q[3]]);
    let cross = |a: [f64; 3], b: [f64; 3]| {
        [
            a[1] * b[2] - a[2] * b[1],
            a[2] * b[0] - a[0] * b[2],
            a[0] * b[1] - a[1] * b[0],
        ]
    };
    let t = cross(u, v).map(|c| 2.0 * c);
    let ut = cross(u, t);
    [0, 1, 2].map(|d| v[d] + w * t[d] + ut[d])
}

#[test]
fn projected_density_matches_direct_sum() {
    let s = toy();
    for (h, w) in [(64usize, 64usize), (50, 36)] {
        let cfg = SimConfig {
            size: (h, w),
            count: 3,
            resolution: 4.0,
            seed: 3,
            ..SimConfig::default()
        };
        let out = simulate(std::slice::from_ref(&s), &cfg, &|_| {}).unwrap();
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
        let rmax = s
            .atoms
            .iter()
            .map(|a| {
                (0..3)
                    .map(|d| (a.pos[d] - c[d]).powi(2))
                    .sum::<f64>()
                    .sqrt()
            })
            .fold(0.0, f64::max);
        let a_px = 2.0 * rmax / (0.45 * h.min(w) as f64);
        assert!((out.pixel_size_nm[0] * 10.0 / a_px - 1.0).abs() < 1e-12);
        let sigma = 4.0 / (std::f64::consts::PI * 2f64.sqrt()) / a_px;
        for i in 0..cfg.count {
            let q = out.orientation[i];
            let mut num = 0.0;
            let mut den = 0.0;
            let got = out.density.image(i);
            let mut expect = vec![0.0f64; h * w];
            for at in &s.atoms {
                let r = qrot(&q, [0, 1, 2].map(|d| at.pos[d] - c[d]));
                let (px, py) = ((w / 2) as f64 + r[0] / a_px, (h / 2) as f64 + r[1] / a_px);
                for y in 0..h {
                    for x in 0..w {
                        let d2 = (y as f64 - py).powi(2) + (x as f64 - px).powi(2);
                        expect[y * w + x] += at.electrons as f64
                            / (2.0 * std::f64::consts::PI * sigma * sigma)
                            * (-d2 / (2.0 * sigma * sigma)).exp();
                    }
                }
            }
            for (g, e) in got.iter().zip(&expect) {
                num += (*g as f64 - e).powi(2);
                den += e * e;
            }
            let rel = (num / den).sqrt();
            assert!(rel < 1e-5, "{h}x{w} pattern {i}: relative error {rel}");
        }
    }
}

/// Cromer-Mann atoms: the simulated |F| equals the float64 structure-factor sum
/// `|sum_atoms f0_e(k) exp(-2 pi^2 sigma^2 k^2) exp(-2 pi i k.r')|` with `f0` evaluated
/// from the International Tables coefficients written out here (independently of the
/// crate's table), at every frequency up to 0.6 1/Å, for several orientations and a
/// non-square field.
#[test]
fn cromer_mann_pattern_matches_structure_factor_sum() {
    // a1 b1 a2 b2 a3 b3 a4 b4 c (ITC Vol. C, Table 6.1.1.4)
    let table: [(&str, f64, [f64; 9]); 5] = [
        (
            "C",
            6.0,
            [
                2.31, 20.8439, 1.02, 10.2075, 1.5886, 0.5687, 0.865, 51.6512, 0.2156,
            ],
        ),
        (
            "N",
            7.0,
            [
                12.2126, 0.0057, 3.1322, 9.8933, 2.0125, 28.9975, 1.1663, 0.5826, -11.529,
            ],
        ),
        (
            "O",
            8.0,
            [
                3.0485, 13.2771, 2.2868, 5.7011, 1.5463, 0.3239, 0.867, 32.9089, 0.2508,
            ],
        ),
        (
            "S",
            16.0,
            [
                6.9053, 1.4679, 5.2034, 22.2151, 1.4379, 0.2536, 1.5863, 56.172, 0.8669,
            ],
        ),
        (
            "Fe",
            26.0,
            [
                11.7695, 4.7611, 7.3573, 0.3072, 3.5222, 15.3535, 2.3045, 76.8805, 1.0369,
            ],
        ),
    ];
    let pos = [
        [0.0, 0.0, 0.0],
        [4.1, 1.3, -2.0],
        [-3.2, 2.7, 1.5],
        [1.0, -5.0, 3.0],
        [-2.5, -1.5, -3.5],
        [2.2, 3.9, 0.4],
    ];
    let s = Structure {
        name: "cm".into(),
        atoms: pos
            .iter()
            .enumerate()
            .map(|(k, &p)| {
                let (e, z, _) = table[k % table.len()];
                Atom {
                    pos: p,
                    element: e.into(),
                    electrons: z as f32,
                }
            })
            .collect(),
        path: PathBuf::new(),
        unknown_elements: 0,
    };
    let (h, w) = (72usize, 90usize);
    let a = 0.35; // Å per pixel: sigma = 0.79 Å is 2.3 px, well sampled
    let res = 3.5;
    let cfg = SimConfig {
        size: (h, w),
        count: 3,
        resolution: res,
        atoms: AtomModel::CromerMann,
        pixel_size_nm: Some(a / 10.0),
        seed: 11,
        ..SimConfig::default()
    };
    let out = simulate(std::slice::from_ref(&s), &cfg, &|_| {}).unwrap();
    let sigma = res / (std::f64::consts::PI * 2f64.sqrt());
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
    let f0 = |coef: &[f64; 9], k: f64| {
        let s2 = k * k / 4.0;
        (0..4)
            .map(|i| coef[2 * i] * (-coef[2 * i + 1] * s2).exp())
            .sum::<f64>()
            + coef[8]
    };
    for i in 0..cfg.count {
        let q = out.orientation[i];
        let rot: Vec<[f64; 3]> = s
            .atoms
            .iter()
            .map(|at| qrot(&q, [0, 1, 2].map(|d| at.pos[d] - c[d])))
            .collect();
        let (mut num, mut den, mut used) = (0.0, 0.0, 0);
        for y in 0..h {
            for x in 0..w {
                let ky = (y as f64 - (h / 2) as f64) / (h as f64 * a);
                let kx = (x as f64 - (w / 2) as f64) / (w as f64 * a);
                let k = (kx * kx + ky * ky).sqrt();
                if k > 0.6 {
                    continue;
                }
                let blur = (-2.0 * std::f64::consts::PI.powi(2) * sigma * sigma * k * k).exp();
                let (mut re, mut im) = (0.0, 0.0);
                for (at, r) in s.atoms.iter().zip(&rot) {
                    let coef = &table.iter().find(|t| t.0 == at.element).unwrap().2;
                    let ph = -2.0 * std::f64::consts::PI * (kx * r[0] + ky * r[1]);
                    re += f0(coef, k) * blur * ph.cos();
                    im += f0(coef, k) * blur * ph.sin();
                }
                let want = (re * re + im * im).sqrt();
                let got = (out.intensities.image(i)[y * w + x] as f64).sqrt();
                num += (got - want).powi(2);
                den += want * want;
                used += 1;
            }
        }
        let rel = (num / den).sqrt();
        assert!(used > 500, "{used}");
        assert!(rel < 1e-4, "orientation {i}: relative error {rel}");
    }
    // and it differs from the plain Gaussian model (the check above can fail)
    let gauss = simulate(
        std::slice::from_ref(&s),
        &SimConfig {
            atoms: AtomModel::Gaussian,
            ..cfg.clone()
        },
        &|_| {},
    )
    .unwrap();
    let d: f64 = gauss
        .intensities
        .data
        .iter()
        .zip(&out.intensities.data)
        .map(|(a, b)| (*a as f64 - *b as f64).powi(2))
        .sum::<f64>()
        .sqrt()
        / out
            .intensities
            .data
            .iter()
            .map(|v| (*v as f64).powi(2))
            .sum::<f64>()
            .sqrt();
    assert!(
        d > 0.05,
        "Cromer-Mann and Gaussian patterns differ by only {d}"
    );
}

#[test]
fn masks_are_flagged_as_specified() {
    let s = vec![toy()];
    let (h, w) = (32, 30);
    let cfg = SimConfig {
        size: (h, w),
        count: 2,
        mask: MaskSpec::Stripe { rows: 4 },
        ..SimConfig::default()
    };
    let plain = simulate(
        &s,
        &SimConfig {
            mask: MaskSpec::None,
            ..cfg.clone()
        },
        &|_| {},
    )
    .unwrap();
    let out = simulate(&s, &cfg, &|_| {}).unwrap();
    assert_eq!(out.mask.shape(), [1, h, w]);
    for y in 0..h {
        for x in 0..w {
            let want = (14..18).contains(&y) as u8;
            assert_eq!(out.mask.data[y * w + x], want, "stripe ({y},{x})");
        }
    }
    assert_eq!(out.intensities, plain.intensities, "masked values kept");
    let out = simulate(
        &s,
        &SimConfig {
            mask: MaskSpec::Beamstop { radius: 3.0 },
            ..cfg.clone()
        },
        &|_| {},
    )
    .unwrap();
    let mut count = 0;
    for y in 0..h {
        for x in 0..w {
            let inside = (y as i64 - 16).pow(2) + (x as i64 - 15).pow(2) <= 9;
            assert_eq!(out.mask.data[y * w + x], inside as u8, "beamstop ({y},{x})");
            count += inside as usize;
        }
    }
    assert_eq!(count, 29);
    let m = MaskSpec::parse("stripe:2, beamstop:1.5, gaps:2x2").unwrap();
    let mut img = vec![0u8; h * w];
    m.apply(h, w, &mut img);
    assert_eq!(img[16 * w], 1); // stripe / gap row
    assert_eq!(img[15], 1); // gap column through the centre
    assert_eq!(img[0], 0);
    assert!(MaskSpec::parse("donut:3").is_err());
}

fn write_gz(path: &Path, text: &str) {
    let f = std::fs::File::create(path).unwrap();
    let mut e = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
    e.write_all(text.as_bytes()).unwrap();
    e.finish().unwrap();
}

const PDB: &str = "\
HEADER    TEST
ATOM      1  N   ALA A   1      11.104   6.134  -6.504  1.00  0.00           N
ATOM      2  CA  ALA A   1      11.639   6.071  -5.147  1.00  0.00           C
ATOM      3  CB AALA A   1      12.000   7.000  -4.000  0.50  0.00           C
ATOM      4  CB BALA A   1      12.500   7.500  -4.500  0.50  0.00           C
ATOM      5  H   ALA A   1      10.000   6.000  -6.000  1.00  0.00           H
HETATM    6 FE   HEM A 101       1.000   2.000   3.000  1.00  0.00          FE
HETATM    7  O   HOH A 201       5.000   5.000   5.000  1.00  0.00           O
ATOM      8  SG  CYS A   2      -1.5     2.25    0.125  1.00  0.00
END
";

#[test]
fn pdb_plain_gz_and_errors() {
    let d = tempfile::tempdir().unwrap();
    let plain = d.path().join("abcd.pdb");
    std::fs::write(&plain, PDB).unwrap();
    let gz = d.path().join("abcd2.pdb.gz");
    write_gz(&gz, PDB);
    let opts = ReadOptions::default();
    let a = read_structure(&plain, &opts).unwrap();
    let b = read_structure(&gz, &opts).unwrap();
    assert_eq!(a.atoms, b.atoms);
    assert_eq!(a.name, "abcd");
    assert_eq!(b.name, "abcd2");
    let els: Vec<&str> = a.atoms.iter().map(|x| x.element.as_str()).collect();
    assert_eq!(els, ["N", "C", "C", "Fe", "S"]);
    let e: Vec<f32> = a.atoms.iter().map(|x| x.electrons).collect();
    assert_eq!(e, [7.0, 6.0, 6.0, 26.0, 16.0]);
    assert_eq!(a.atoms[2].pos, [12.0, 7.0, -4.0]); // altloc A kept, B dropped
    assert_eq!(a.atoms[4].pos, [-1.5, 2.25, 0.125]);
    let all = read_structure(
        &plain,
        &ReadOptions {
            skip_waters: false,
            skip_hydrogens: false,
            ..ReadOptions::default()
        },
    )
    .unwrap();
    assert_eq!(all.atoms.len(), 7);

    // A folder, a list file, a broken file, a missing file: broken ones named, others read.
    let broken = d.path().join("broken.pdb.gz");
    std::fs::write(&broken, b"\x1f\x8b\x08garbage").unwrap();
    let empty = d.path().join("empty.pdb");
    std::fs::write(&empty, "HEADER nothing\n").unwrap();
    let missing = d.path().join("missing.cif");
    let list = d.path().join("list.txt");
    std::fs::write(&list, "# structures\nabcd.pdb\n\nmissing.cif\n").unwrap();
    let (ok, bad) = collect_structures(
        &[d.path().to_path_buf(), list.clone(), missing.clone()],
        &opts,
    );
    let names: Vec<&str> = ok.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["abcd", "abcd2", "abcd"]);
    let bad_names: Vec<&Path> = bad.iter().map(|(p, _)| p.as_path()).collect();
    assert!(bad_names.contains(&broken.as_path()), "{bad:?}");
    assert!(bad_names.contains(&empty.as_path()), "{bad:?}");
    assert_eq!(bad_names.iter().filter(|p| **p == missing).count(), 2);
    for (p, e) in &bad {
        assert!(
            e.to_string()
                .contains(&*p.file_name().unwrap().to_string_lossy()),
            "{e}"
        );
    }
}

const CIF: &str = "\
data_TEST
#
_entry.id TEST
#
loop_
_atom_site.group_PDB
_atom_site.id
_atom_site.type_symbol
_atom_site.label_atom_id
_atom_site.label_alt_id
_atom_site.label_comp_id
_atom_site.label_asym_id
_atom_site.Cartn_x
_atom_site.Cartn_y
_atom_site.Cartn_z
_atom_site.occupancy
_atom_site.pdbx_PDB_model_num
ATOM   1 N  N     . ALA A 11.104 6.134 -6.504 1.00 1
ATOM   2 C  CA    . ALA A 11.639 6.071 -5.147 1.00 1
ATOM   3 C  \"C1'\" . NAG A 1.0 2.0 3.0 1.00 1
ATOM   4 H  H     . ALA A 10.0 6.0 -6.0 1.00 1
HETATM 5 ZN ZN    . ZN  B -1.0 -2.0 -3.0 1.00 1
HETATM 6 O  O     . HOH C 5.0 5.0 5.0 1.00 1
ATOM   7 C  CB    B ALA A 9.0 9.0 9.0 0.5 1
ATOM   8 N  N     . ALA A 99.0 99.0 99.0 1.00 2
#
loop_
_other.x
1
";

#[test]
fn mmcif_snippet() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("test.cif");
    std::fs::write(&p, CIF).unwrap();
    let s = read_structure(&p, &ReadOptions::default()).unwrap();
    let got: Vec<(&str, f32, [f64; 3])> = s
        .atoms
        .iter()
        .map(|a| (a.element.as_str(), a.electrons, a.pos))
        .collect();
    assert_eq!(
        got,
        [
            ("N", 7.0, [11.104, 6.134, -6.504]),
            ("C", 6.0, [11.639, 6.071, -5.147]),
            ("C", 6.0, [1.0, 2.0, 3.0]),
            ("Zn", 30.0, [-1.0, -2.0, -3.0]),
        ]
    );
    let gz = d.path().join("test.cif.gz");
    write_gz(&gz, CIF);
    assert_eq!(
        read_structure(&gz, &ReadOptions::default()).unwrap().atoms,
        s.atoms
    );
}

#[test]
fn cxi_round_trip() {
    let s = vec![toy(), one_structure()];
    let cfg = SimConfig {
        size: (32, 32),
        count: 3,
        photons: Some(1e4),
        noise: Noise::Poisson,
        mask: MaskSpec::Beamstop { radius: 2.0 },
        ..SimConfig::default()
    };
    let out = simulate(&s, &cfg, &|_| {}).unwrap();
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("sim.cxi");
    write_cxi(&out, &cfg, &f).unwrap();
    let p = cdiphase::io::read_patterns(&f, None).unwrap();
    assert_eq!(p.intensities, out.intensities);
    assert_eq!(p.mask.unwrap(), out.mask);
    let (shape, dens) = cdiphase::io::read_f32(&f, "entry_1/sample_1/density").unwrap();
    assert_eq!(shape, [3, 32, 32]);
    assert_eq!(dens, out.density.data);
    let sup = cdiphase::io::read_support(&f, Some("entry_1/sample_1/support")).unwrap();
    assert_eq!(sup, out.support);
    let (shape, q) = cdiphase::io::read_f32(&f, "entry_1/sample_1/geometry_1/orientation").unwrap();
    assert_eq!(shape, [3, 4]);
    assert_eq!(q[4], out.orientation[1][0] as f32);
}

/// An incident fluence gives the expected counts fluence * r_e^2 * dOmega * |F|^2, with the
/// detector pixel's solid angle from the geometry written to the file (checked at zero
/// frequency, where |F| is the number of electrons in the projection).
#[test]
fn fluence_gives_expected_counts() {
    let s = vec![one_structure()];
    let cfg = SimConfig {
        size: (48, 40),
        count: 2,
        fluence: Some(1e12),
        ..SimConfig::default()
    };
    let out = simulate(&s, &cfg, &|_| {}).unwrap();
    let (h, w) = (48usize, 40usize);
    for i in 0..2 {
        let electrons: f64 = out.density.image(i).iter().map(|&v| v as f64).sum();
        let dx = out.pixel_size_nm[i] * 1e-9;
        let (lam, dist) = (0.2e-9, 0.7);
        let (px, py) = (lam * dist / (w as f64 * dx), lam * dist / (h as f64 * dx));
        let d_omega = px * py / (dist * dist);
        let r_e = 2.8179403262e-15;
        let expect = 1e12 * 1e12 * r_e * r_e * d_omega * electrons * electrons;
        let got = out.intensities.image(i)[(h / 2) * w + w / 2] as f64;
        assert!((got / expect - 1.0).abs() < 1e-4, "{got} vs {expect}");
    }
    // fluence and photons together are refused; a non-positive fluence too
    for bad in [
        SimConfig {
            photons: Some(1e6),
            ..cfg.clone()
        },
        SimConfig {
            fluence: Some(-1.0),
            ..cfg.clone()
        },
    ] {
        let e = simulate(&s, &bad, &|_| {}).unwrap_err().to_string();
        assert!(e.contains("fluence"), "{e}");
    }
}

/// Streaming by blocks writes the same file content as the in-memory path, whatever the block
/// size (1, a size that does not divide N, N and more), and leaves nothing behind on error.
#[test]
fn streamed_cxi_matches_in_memory() {
    let s = vec![toy(), one_structure()];
    let cfg = SimConfig {
        size: (24, 20),
        count: 11,
        photons: Some(1e5),
        noise: Noise::Poisson,
        mask: MaskSpec::parse("stripe:2").unwrap(),
        seed: 5,
        ..SimConfig::default()
    };
    let out = simulate(&s, &cfg, &|_| {}).unwrap();
    let d = tempfile::tempdir().unwrap();
    let reference = d.path().join("mem.cxi");
    write_cxi(&out, &cfg, &reference).unwrap();
    for chunk in [1usize, 4, 11, 64] {
        let f = d.path().join(format!("stream{chunk}.cxi"));
        let done = std::sync::atomic::AtomicU64::new(0);
        let rep = simulate_to_cxi(&s, &cfg, &f, chunk, &|k| {
            done.fetch_add(k, std::sync::atomic::Ordering::Relaxed);
        })
        .unwrap();
        assert_eq!(rep.patterns, 11);
        assert_eq!(done.into_inner(), 11);
        let p = cdiphase::io::read_patterns(&f, None).unwrap();
        assert_eq!(p.intensities, out.intensities, "chunk {chunk}");
        assert_eq!(p.mask.unwrap(), out.mask);
        let (_, dens) = cdiphase::io::read_f32(&f, "entry_1/sample_1/density").unwrap();
        assert_eq!(dens, out.density.data, "chunk {chunk}");
        let sup = cdiphase::io::read_support(&f, Some("entry_1/sample_1/support")).unwrap();
        assert_eq!(sup, out.support);
        assert_eq!(
            cdiphase::io::read_string(&f, "entry_1/sample_1/name").unwrap(),
            out.names.join("\n")
        );
        // byte-identical to the in-memory writer's file
        assert_eq!(
            std::fs::read(&f).unwrap(),
            std::fs::read(&reference).unwrap()
        );
    }
    // a bad configuration fails before anything is created
    let bad = SimConfig {
        resolution: -1.0,
        ..cfg.clone()
    };
    let f = d.path().join("bad.cxi");
    assert!(simulate_to_cxi(&s, &bad, &f, 4, &|_| {}).is_err());
    let left: Vec<_> = std::fs::read_dir(d.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("bad") || n.contains(".tmp"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `cargo test --release --test simulate -- --ignored --nocapture phasing_of_real_structures`
/// (SIM_ORIENTATIONS, SIM_STARTS, SIM_SCHEDULE, SIM_BETA, SIM_RESOLUTION, SIM_SIZE,
/// SIM_FILL, SIM_SUPPORT, SIM_SEED to vary it).
#[test]
#[ignore = "experiment, ~3 min on 2 cores; results in BENCHMARKS.md (issue 3)"]
fn phasing_of_real_structures() {
    use cdiphase::phasing::program::Constraint;
    use cdiphase::phasing::PhaseConfig;
    let (s, bad) = collect_structures(&[pdb_dir()], &ReadOptions::default());
    assert!(bad.is_empty(), "{bad:?}");
    let size = env("SIM_SIZE", 128usize);
    let seed = env("SIM_SEED", 7u64);
    let sim = SimConfig {
        size: (size, size),
        count: s.len() * env("SIM_ORIENTATIONS", 2usize),
        resolution: env("SIM_RESOLUTION", 3.5),
        fill: env("SIM_FILL", 0.45),
        support_threshold: env("SIM_SUPPORT", 0.025),
        seed,
        ..SimConfig::default()
    };
    let pcfg = PhaseConfig {
        schedule: env("SIM_SCHEDULE", "200*(20*HIO + 5*ER) + 100*ER".to_string()),
        beta: env("SIM_BETA", 0.9f32),
        constraint: Constraint::Positive,
        starts: env("SIM_STARTS", 4usize),
        seed: seed ^ 0xC0FFEE,
        ..PhaseConfig::default()
    };
    let t0 = std::time::Instant::now();
    let res = cdiphase::simulate::phasing_check_with(&s, &sim, &pcfg).unwrap();
    let mut ok = 0;
    for r in &res {
        println!(
            "{:>12} {:.4} fourier {:.4} low-q {:.4} high-q energy {:.4} support floor {:.4}",
            r.name, r.error, r.fourier_error, r.error_low_q, r.high_q_energy, r.support_floor
        );
        ok += (r.error < 0.1) as usize;
    }
    println!(
        "{ok}/{} below 0.1 ({:.1}%), {:.1} s",
        res.len(),
        100.0 * ok as f64 / res.len() as f64,
        t0.elapsed().as_secs_f64()
    );
    assert!(ok * 10 >= res.len() * 8);
}

/// `cargo test --release --test simulate -- --ignored --nocapture ten_thousand_patterns`
#[test]
#[ignore = "timing run, 10,000 patterns, ~20 s and 2.5 GB"]
fn ten_thousand_patterns() {
    let t0 = std::time::Instant::now();
    let (s, bad) = collect_structures(&[pdb_dir()], &ReadOptions::default());
    assert!(bad.is_empty());
    let t_read = t0.elapsed().as_secs_f64();
    let count = std::env::var("SIM_COUNT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let cfg = SimConfig {
        count,
        photons: Some(1e7),
        noise: Noise::Poisson,
        mask: MaskSpec::parse("stripe:4,beamstop:3").unwrap(),
        ..SimConfig::default()
    };
    // a temporary folder, removed with its file even when the run fails
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("sim_10k.cxi");
    let rep = simulate_to_cxi(
        &s,
        &cfg,
        &dest,
        cdiphase::simulate::chunk_for(128, 128),
        &|_| {},
    )
    .unwrap();
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let hwm = status
        .lines()
        .find(|l| l.starts_with("VmHWM"))
        .unwrap_or("VmHWM: ?")
        .to_string();
    println!(
        "read {} structures {t_read:.2} s; simulate + write (streamed) {:.2} s wall (CPU s: projection {:.2}, fft {:.2}, noise {:.2}; writer thread busy {:.2} s); {} MB; total {:.2} s; peak memory {hwm}",
        s.len(),
        rep.total_seconds,
        rep.timings.projection,
        rep.timings.fft,
        rep.timings.noise_mask,
        rep.write_seconds,
        std::fs::metadata(&dest).unwrap().len() / 1_000_000,
        t0.elapsed().as_secs_f64()
    );
}
