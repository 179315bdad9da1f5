//! Block-wise runs across MPI ranks (`mpirun -n N cdiphase phase|predict ...`, issue 18).
//!
//! Only with the cargo feature `mpi` (the `mpi` crate, rsmpi, over OpenMPI or MPICH); a
//! build without it, or a process not started by an MPI launcher, or a world of one rank,
//! runs as one process ([`crate::io::blocks::pipeline`]), exactly as before.
//!
//! Design: rank 0 is the master. It opens the output and its journal (resume included),
//! hands out the indices of the blocks still to do one at a time, in order, to whichever
//! worker asks, and writes the rows each worker sends back at their place in the one output
//! file, committing each block to the journal as the one-process run does. Ranks 1..N-1 are
//! the workers: each opens the input itself (a shared file system), reads and computes the
//! block it was given, sends its rows to rank 0 and receives its next block with the
//! reply. A fast worker therefore takes more blocks than a slow one. Every block is
//! computed by the same function, with the same seeds, as in a one-process run, so the
//! data written are identical. Any error on any rank aborts the whole job
//! (`MPI_Abort`, from `main`); the journal then lists only the blocks on disk, so the same
//! command with `--resume` continues it.
//!
//! The alternative, every rank writing its own blocks into the file at their offsets, is
//! recorded in NOTES.md ("Streaming, resume and MPI").

use std::sync::OnceLock;

use crate::{Error, Result};

/// The rows of one block, one byte buffer per output dataset, in the order the verb
/// declares them; little-endian, as [`crate::io::stream::StreamWriter::write_rows_raw`]
/// takes them.
pub type Rows = Vec<Vec<u8>>;

/// Where this process is in the MPI job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Place {
    pub rank: usize,
    pub size: usize,
    /// Rank and number of ranks on this node (shared-memory domain).
    pub local_rank: usize,
    pub local_size: usize,
    /// Whether rank 0 (the master, which computes nothing) runs on this node.
    pub node_has_master: bool,
}

static PLACE: OnceLock<Place> = OnceLock::new();

/// This process's place; one rank of one when MPI is not initialised.
pub fn place() -> Place {
    PLACE.get().copied().unwrap_or(Place {
        rank: 0,
        size: 1,
        local_rank: 0,
        local_size: 1,
        node_has_master: true,
    })
}

/// Number of ranks (1 without MPI).
pub fn world_size() -> usize {
    place().size
}

/// Rank 0 of a job of several ranks: hands out blocks and writes the output.
pub fn is_master() -> bool {
    let p = place();
    p.size > 1 && p.rank == 0
}

/// A rank other than 0 of a job of several ranks: computes the blocks it is given.
pub fn is_worker() -> bool {
    let p = place();
    p.size > 1 && p.rank > 0
}

/// This worker's index among the computing ranks of its node (the master computes
/// nothing): the GPU it takes.
pub fn local_worker() -> usize {
    let p = place();
    if p.size > 1 && p.node_has_master {
        p.local_rank.saturating_sub(1)
    } else {
        p.local_rank
    }
}

/// Computing ranks on this node.
pub fn local_workers() -> usize {
    let p = place();
    if p.size > 1 && p.node_has_master {
        (p.local_size - 1).max(1)
    } else {
        p.local_size.max(1)
    }
}

/// CPU threads of a rank when the user gives none: the cores shared by the computing
/// ranks of the node; `None` (all cores) in a one-process run.
pub fn default_threads() -> Option<usize> {
    if world_size() <= 1 {
        return None;
    }
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    Some((cores / local_workers()).max(1))
}

/// The CUDA ordinal of this rank when `CDIPHASE_CUDA_DEVICE` is not set: 0 when the
/// launcher left one GPU visible (`CUDA_VISIBLE_DEVICES` of one entry, as SLURM's
/// `--gpus-per-task=1` does), else the worker's index on its node.
pub fn default_cuda_ordinal() -> usize {
    if world_size() <= 1 {
        return 0;
    }
    match std::env::var("CUDA_VISIBLE_DEVICES") {
        Ok(v) if v.split(',').filter(|s| !s.trim().is_empty()).count() == 1 => 0,
        _ => local_worker(),
    }
}

/// Whether an MPI launcher started this process (mpirun/mpiexec of OpenMPI or MPICH,
/// srun with PMI or PMIx).
pub fn launched_by_mpi() -> bool {
    [
        "OMPI_COMM_WORLD_SIZE",
        "PMI_SIZE",
        "PMI_RANK",
        "PMIX_RANK",
        "MPI_LOCALNRANKS",
    ]
    .iter()
    .any(|v| std::env::var_os(v).is_some())
}

/// Little-endian bytes of `f32`s.
pub fn f32_bytes(v: &[f32]) -> Vec<u8> {
    if cfg!(target_endian = "little") {
        return bytemuck::cast_slice(v).to_vec();
    }
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Little-endian bytes of complex64 values (real, imaginary).
pub fn c64_bytes(v: &[num_complex::Complex32]) -> Vec<u8> {
    v.iter()
        .flat_map(|c| c.re.to_le_bytes().into_iter().chain(c.im.to_le_bytes()))
        .collect()
}

/// One block's message: its index, the number of buffers, their lengths, their bytes.
// (used by the MPI transport only; unit-tested in every build)
#[cfg_attr(not(feature = "mpi"), allow(dead_code))]
fn encode(b: usize, rows: &Rows) -> Vec<u8> {
    let total: usize = rows.iter().map(Vec::len).sum();
    let mut m = Vec::with_capacity(16 + 8 * rows.len() + total);
    m.extend_from_slice(&(b as u64).to_le_bytes());
    m.extend_from_slice(&(rows.len() as u64).to_le_bytes());
    for r in rows {
        m.extend_from_slice(&(r.len() as u64).to_le_bytes());
    }
    for r in rows {
        m.extend_from_slice(r);
    }
    m
}

#[cfg_attr(not(feature = "mpi"), allow(dead_code))]
fn decode(m: &[u8]) -> Result<(usize, Rows)> {
    let bad = || Error::invalid("MPI message", "a block's rows are truncated");
    let word = |i: usize| -> Result<usize> {
        let s = m.get(8 * i..8 * i + 8).ok_or_else(bad)?;
        Ok(u64::from_le_bytes(s.try_into().map_err(|_| bad())?) as usize)
    };
    let b = word(0)?;
    let k = word(1)?;
    let mut at = 16usize
        .checked_add(k.checked_mul(8).ok_or_else(bad)?)
        .ok_or_else(bad)?;
    let mut rows = Vec::with_capacity(k.min(64));
    for i in 0..k {
        let len = word(2 + i)?;
        let end = at.checked_add(len).ok_or_else(bad)?;
        rows.push(m.get(at..end).ok_or_else(bad)?.to_vec());
        at = end;
    }
    if at != m.len() {
        return Err(bad());
    }
    Ok((b, rows))
}

/// Run the blocks `todo`: in one process through [`crate::io::blocks::pipeline`]; on the
/// master by handing them out and writing what the workers send (`read` and `compute`
/// unused there). Workers call [`work`] instead.
pub fn run_blocks<I: Send>(
    todo: &[usize],
    read: impl FnMut(usize) -> Result<I> + Send,
    compute: impl FnMut(usize, I) -> Result<Rows>,
    write: impl FnMut(usize, Rows) -> Result<()> + Send,
) -> Result<()> {
    if is_master() {
        return imp::serve(todo, write);
    }
    crate::io::blocks::pipeline(todo, read, compute, write)
}

/// A worker's loop: ask rank 0 for a block, read and compute it, send its rows back, until
/// rank 0 has no block left.
pub fn work<I: Send>(
    read: impl FnMut(usize) -> Result<I> + Send,
    compute: impl FnMut(usize, I) -> Result<Rows>,
) -> Result<()> {
    imp::work(read, compute)
}

#[cfg(not(feature = "mpi"))]
mod imp {
    use super::Rows;
    use crate::{Error, Result};

    fn unavailable() -> Error {
        Error::Config("this cdiphase was built without MPI (cargo feature `mpi`)".into())
    }

    pub fn serve(_: &[usize], _: impl FnMut(usize, Rows) -> Result<()>) -> Result<()> {
        Err(unavailable())
    }

    pub fn work<I>(
        _: impl FnMut(usize) -> Result<I>,
        _: impl FnMut(usize, I) -> Result<Rows>,
    ) -> Result<()> {
        Err(unavailable())
    }
}

/// MPI is never initialised without the feature: one process.
#[cfg(not(feature = "mpi"))]
pub fn init() -> Result<Option<Session>> {
    Ok(None)
}

/// Without the feature there is no other rank to stop.
#[cfg(not(feature = "mpi"))]
pub fn abort(_code: i32) {}

/// Keeps MPI initialised; dropping it finalises MPI.
#[cfg(not(feature = "mpi"))]
pub struct Session;

#[cfg(feature = "mpi")]
pub use imp::{abort, init, Session};

#[cfg(feature = "mpi")]
mod imp {
    use super::{decode, encode, Place, Rows, PLACE};
    use crate::{Error, Result};
    use ::mpi::collective::SystemOperation;
    use ::mpi::point_to_point::{Destination, Source};
    use ::mpi::topology::{Communicator, SimpleCommunicator};
    use ::mpi::traits::CommunicatorCollectives;

    /// A worker asking for its first block (no rows).
    const TAG_READY: i32 = 1;
    /// A worker sending a block's rows (and asking for the next).
    const TAG_ROWS: i32 = 2;
    /// Rank 0's answer: a block index, or `STOP`.
    const TAG_BLOCK: i32 = 3;
    const STOP: u64 = u64::MAX;

    /// Keeps MPI initialised; dropping it finalises MPI.
    pub struct Session {
        _universe: ::mpi::environment::Universe,
    }

    /// Initialise MPI when an MPI launcher started this process, and record its place
    /// ([`super::place`]). `None` (one process) otherwise.
    pub fn init() -> Result<Option<Session>> {
        if !super::launched_by_mpi() {
            return Ok(None);
        }
        let Some((universe, _)) = ::mpi::initialize_with_threading(::mpi::Threading::Funneled)
        else {
            return Err(Error::Config(
                "MPI_Init failed (or MPI was initialised twice)".into(),
            ));
        };
        let world = universe.world();
        let rank = world.rank() as usize;
        let size = world.size() as usize;
        let local = world.split_shared(world.rank());
        let mut lowest = 0i32;
        local.all_reduce_into(&world.rank(), &mut lowest, SystemOperation::min());
        let _ = PLACE.set(Place {
            rank,
            size,
            local_rank: local.rank() as usize,
            local_size: local.size() as usize,
            node_has_master: lowest == 0,
        });
        Ok(Some(Session {
            _universe: universe,
        }))
    }

    /// Stop every rank of the job (after an error on this one).
    pub fn abort(code: i32) {
        if super::world_size() > 1 {
            SimpleCommunicator::world().abort(code)
        }
    }

    fn check_size(m: &[u8]) -> Result<()> {
        if m.len() > i32::MAX as usize {
            return Err(Error::Config(format!(
                "a block's output is {} bytes, more than one MPI message carries (2 GiB): lower --block",
                m.len()
            )));
        }
        Ok(())
    }

    pub fn serve(todo: &[usize], mut write: impl FnMut(usize, Rows) -> Result<()>) -> Result<()> {
        let world = SimpleCommunicator::world();
        let mut next = todo.iter();
        let mut active = world.size() as usize - 1;
        while active > 0 {
            // poll, then sleep: a blocking receive of OpenMPI spins a core at 100%, which
            // the workers of this node need (the master waits most of the time)
            if world.any_process().immediate_probe().is_none() {
                std::thread::sleep(std::time::Duration::from_micros(500));
                continue;
            }
            let (msg, status) = world.any_process().receive_vec::<u8>();
            let got = match status.tag() {
                TAG_ROWS => Some(decode(&msg)?),
                TAG_READY => None,
                t => {
                    return Err(Error::Config(format!(
                        "unexpected MPI message (tag {t}) from rank {}",
                        status.source_rank()
                    )))
                }
            };
            // the worker's next block first, so that it computes while this block is written
            let reply = next.next().map_or(STOP, |&b| b as u64);
            if reply == STOP {
                active -= 1;
            }
            world
                .process_at_rank(status.source_rank())
                .send_with_tag(&reply, TAG_BLOCK);
            if let Some((b, rows)) = got {
                write(b, rows)?;
            }
        }
        Ok(())
    }

    pub fn work<I>(
        mut read: impl FnMut(usize) -> Result<I>,
        mut compute: impl FnMut(usize, I) -> Result<Rows>,
    ) -> Result<()> {
        let world = SimpleCommunicator::world();
        let master = world.process_at_rank(0);
        let none: [u8; 0] = [];
        master.send_with_tag(&none[..], TAG_READY);
        loop {
            let (b, _) = master.receive_with_tag::<u64>(TAG_BLOCK);
            if b == STOP {
                return Ok(());
            }
            let b = b as usize;
            let x = read(b)?;
            let rows = compute(b, x)?;
            let m = encode(b, &rows);
            drop(rows);
            check_size(&m)?;
            master.send_with_tag(&m[..], TAG_ROWS);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn messages_round_trip_and_truncation_is_an_error() {
        let rows = vec![vec![1u8, 2, 3], vec![], vec![9u8; 17]];
        let m = super::encode(42, &rows);
        assert_eq!(super::decode(&m).unwrap(), (42, rows));
        assert!(super::decode(&m[..m.len() - 1]).is_err());
        assert!(super::decode(&m[..10]).is_err());
        let mut longer = m.clone();
        longer.push(0);
        assert!(super::decode(&longer).is_err());
    }

    #[test]
    fn one_process_without_mpi() {
        assert_eq!(super::world_size(), 1);
        assert!(!super::is_master() && !super::is_worker());
        assert_eq!(super::default_threads(), None);
        assert_eq!(super::default_cuda_ordinal(), 0);
    }

    #[test]
    fn bytes_are_little_endian() {
        assert_eq!(super::f32_bytes(&[1.0]), 1.0f32.to_le_bytes().to_vec());
        let c = num_complex::Complex32::new(1.0, -2.0);
        let mut want = 1.0f32.to_le_bytes().to_vec();
        want.extend_from_slice(&(-2.0f32).to_le_bytes());
        assert_eq!(super::c64_bytes(&[c]), want);
    }
}
