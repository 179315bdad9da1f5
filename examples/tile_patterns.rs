//! A large pattern file for the streaming benchmarks: the patterns of a small file
//! repeated (cycling) to COUNT patterns, written in blocks (memory flat in COUNT), with the
//! input's shared mask. Only `entry_1/data_1/data` and the mask are written, so 100,000
//! patterns of 128x128 are 6.55 GB (a `simulate` output of that size also holds the
//! densities and supports: 14.7 GB).
//!
//!     cargo run --release --example tile_patterns -- SMALL.cxi BIG.cxi COUNT

use anyhow::{bail, Context, Result};
use cdiphase::io::stream::{Dtype, StreamWriter};
use std::path::PathBuf;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [src, dest, count] = args.as_slice() else {
        bail!("usage: tile_patterns SMALL.cxi BIG.cxi COUNT");
    };
    let count: usize = count.parse().context("COUNT")?;
    let ps = cdiphase::io::read_patterns(&PathBuf::from(src), None)
        .with_context(|| format!("reading {src}"))?;
    let st = &ps.intensities;
    let (h, w, l) = (st.h, st.w, st.h * st.w);
    let mut f = StreamWriter::create(&PathBuf::from(dest))?;
    let data = f.stream("entry_1/data_1/data", Dtype::F32, &[count, h, w])?;
    f.string("cxi_version", "150")?;
    match &ps.mask {
        Some(m) if m.n == 1 => f.u8("entry_1/instrument_1/detector_1/mask", &[h, w], &m.data)?,
        Some(_) => bail!("{src}: a per-pattern mask is not repeated by this tool"),
        None => {}
    }
    let rows = 1000;
    let mut buf = vec![0f32; rows * l];
    let mut first = 0;
    while first < count {
        let k = rows.min(count - first);
        for i in 0..k {
            let p = (first + i) % st.n;
            buf[i * l..(i + 1) * l].copy_from_slice(st.image(p));
        }
        f.write_rows_f32(data, first, &buf[..k * l])?;
        first += k;
    }
    f.finish()?;
    eprintln!(
        "{dest}: {count} patterns of {h}x{w} (cycling over {} of {src})",
        st.n
    );
    Ok(())
}
