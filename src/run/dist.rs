//! Block-wise runs across MPI ranks (`mpirun -n N cdiphase phase|predict|simulate|support
//! ...`, issue 18).
//!
//! Only with the cargo feature `mpi` (the `mpi` crate, rsmpi, over OpenMPI or MPICH); a
//! build without it, or a process not started by an MPI launcher, or a world of one rank,
//! runs as one process ([`crate::io::blocks::pipeline`]), exactly as before.
//!
//! Design: rank 0 is the master. It opens the output and its journal (resume included),
//! hands out the indices of the blocks still to do, in order, to whichever worker asks,
//! and writes the rows each worker sends back at their place in the one output file,
//! committing each block to the journal as the one-process run does. Ranks 1..N-1 are the
//! workers: each opens the input itself (a shared file system) and holds two blocks at a
//! time: it reads the next on a reader thread while it computes the current one, sends the
//! rows to rank 0 (in pieces of at most 1 GiB: one MPI message carries less than 2 GiB)
//! and receives its next block with the reply. A fast worker therefore takes more blocks
//! than a slow one. Every block is computed by the same function, with the same seeds, as
//! in a one-process run, so the data written are identical. Any error on any rank aborts
//! the whole job (`MPI_Abort`, from `main`); the journal then lists only the blocks on
//! disk, so the same command with `--resume` continues it.
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

/// The largest piece of a block's rows sent as one MPI message: 1 GiB (an MPI count is
/// an `int`: one message carries less than 2 GiB), or `CDIPHASE_MPI_PIECE_BYTES` (tests
/// split small blocks with it).
#[cfg_attr(not(feature = "mpi"), allow(dead_code))]
fn max_piece() -> Result<usize> {
    const LIMIT: usize = 1 << 30;
    match std::env::var("CDIPHASE_MPI_PIECE_BYTES") {
        Err(_) => Ok(LIMIT),
        Ok(v) => match v.trim().parse::<usize>() {
            Ok(n) if (1..=LIMIT).contains(&n) => Ok(n),
            _ => Err(Error::Config(format!(
                "CDIPHASE_MPI_PIECE_BYTES '{v}': expected bytes from 1 to {LIMIT}"
            ))),
        },
    }
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
        return serve(todo, write);
    }
    crate::io::blocks::pipeline(todo, read, compute, write)
}

/// Rank 0 of an MPI job: hand out the blocks `todo` to the workers as they ask (each holds
/// at most two: the one it computes and the one it reads meanwhile) and `write` the rows
/// they send back, on this thread (the one that initialised MPI).
pub fn serve(todo: &[usize], write: impl FnMut(usize, Rows) -> Result<()>) -> Result<()> {
    imp::serve(todo, write)
}

/// What every rank needs before the blocks start and only rank 0 makes (the training
/// set's mean image of `support --method mean-image`): `make` runs on rank 0 (and in a
/// one-process run), and its bytes are sent to every worker, which waits for them without
/// spinning a core (a poll every millisecond). An error of `make` is rank 0's error: the
/// job stops (`MPI_Abort` from `main`) and the workers with it.
pub fn share_from_master(make: impl FnOnce() -> Result<Vec<u8>>) -> Result<Vec<u8>> {
    if world_size() <= 1 {
        return make();
    }
    imp::share_from_master(make)
}

/// A worker's loop: ask rank 0 for two blocks; read the next block on a reader thread
/// while this thread computes the current one, send its rows back (in pieces below MPI's
/// 2 GiB message limit) and get the next block in reply, until rank 0 has none left.
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

    pub fn share_from_master(_: impl FnOnce() -> Result<Vec<u8>>) -> Result<Vec<u8>> {
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
    use std::sync::mpsc::{channel, sync_channel};

    /// A worker asking for its first blocks (payload: how many, u64).
    const TAG_READY: i32 = 1;
    /// A worker announcing a block's rows (payload: the message's length in bytes, u64),
    /// which follow as [`TAG_PIECE`] messages; the worker then waits for its next block.
    const TAG_ROWS: i32 = 2;
    /// Rank 0's answer: a block index, or `STOP`.
    const TAG_BLOCK: i32 = 3;
    /// One piece of a block's rows (at most [`super::max_piece`] bytes).
    const TAG_PIECE: i32 = 4;
    /// Rank 0's bytes for every worker, before the blocks ([`share_from_master`]).
    const TAG_SHARED: i32 = 5;
    const STOP: u64 = u64::MAX;
    /// Blocks a worker holds at once: the one it computes and the one it reads meanwhile.
    const DEPTH: u64 = 2;

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
        // a bad setting stops every rank before any output is opened
        super::max_piece()?;
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

    fn u64_of(m: &[u8], what: &str, rank: i32) -> Result<u64> {
        let b: [u8; 8] = m.try_into().map_err(|_| {
            Error::invalid(
                format!("MPI message from rank {rank}"),
                format!("{what}: {} bytes, expected 8", m.len()),
            )
        })?;
        Ok(u64::from_le_bytes(b))
    }

    /// Rank 0: hand out `todo` in order (each worker holds up to [`DEPTH`] blocks: it reads
    /// one while it computes the other) and `write` the rows that come back. Called on the
    /// thread that initialised MPI.
    pub fn serve(todo: &[usize], mut write: impl FnMut(usize, Rows) -> Result<()>) -> Result<()> {
        let world = SimpleCommunicator::world();
        let size = world.size() as usize;
        let mut next = todo.iter();
        // blocks handed to each rank and not yet returned
        let mut held: Vec<Vec<usize>> = vec![Vec::new(); size];
        let mut finished = 0;
        while finished < size - 1 {
            // poll, then sleep: a blocking receive of OpenMPI spins a core at 100%, which
            // the workers of this node need (the master waits most of the time)
            if world.any_process().immediate_probe().is_none() {
                std::thread::sleep(std::time::Duration::from_micros(500));
                continue;
            }
            let (msg, status) = world.any_process().receive_vec::<u8>();
            let r = status.source_rank();
            let from = world.process_at_rank(r);
            let (wanted, got) = match status.tag() {
                TAG_READY => (u64_of(&msg, "blocks wanted", r)?.clamp(1, DEPTH), None),
                TAG_ROWS => {
                    let total = u64_of(&msg, "length of a block's rows", r)? as usize;
                    let mut m = Vec::new();
                    while m.len() < total {
                        let (piece, _) = from.receive_vec_with_tag::<u8>(TAG_PIECE);
                        if piece.is_empty() || m.len() + piece.len() > total {
                            return Err(Error::invalid(
                                format!("MPI message from rank {r}"),
                                format!(
                                    "a piece of {} bytes after {} of {total}",
                                    piece.len(),
                                    m.len()
                                ),
                            ));
                        }
                        if m.is_empty() && piece.len() == total {
                            m = piece; // one piece: no copy
                        } else {
                            m.extend_from_slice(&piece);
                        }
                    }
                    let (b, rows) = decode(&m)?;
                    drop(m);
                    let Some(i) = held[r as usize].iter().position(|&x| x == b) else {
                        return Err(Error::invalid(
                            format!("MPI message from rank {r}"),
                            format!("rows of block {b}, which was not handed to it"),
                        ));
                    };
                    held[r as usize].swap_remove(i);
                    (1, Some((b, rows)))
                }
                t => {
                    return Err(Error::Config(format!(
                        "unexpected MPI message (tag {t}) from rank {r}"
                    )))
                }
            };
            // the worker's next block(s) first, so that it computes while this block is written
            for _ in 0..wanted {
                let reply = match next.next() {
                    Some(&b) => {
                        held[r as usize].push(b);
                        b as u64
                    }
                    None => STOP,
                };
                from.send_with_tag(&reply, TAG_BLOCK);
            }
            // a rank holding nothing got STOP (a block would be held): it has ended
            if held[r as usize].is_empty() {
                finished += 1;
            }
            if let Some((b, rows)) = got {
                write(b, rows)?;
            }
        }
        Ok(())
    }

    /// See [`super::share_from_master`]. The bytes go in one message to each worker: at
    /// most 1 GiB (an image, not a block).
    pub fn share_from_master(make: impl FnOnce() -> Result<Vec<u8>>) -> Result<Vec<u8>> {
        let world = SimpleCommunicator::world();
        let master = world.process_at_rank(0);
        if world.rank() == 0 {
            let v = make()?;
            if v.len() > 1 << 30 {
                return Err(Error::Config(format!(
                    "{} bytes to send to every MPI rank: more than one message carries",
                    v.len()
                )));
            }
            for r in 1..world.size() {
                world.process_at_rank(r).send_with_tag(&v[..], TAG_SHARED);
            }
            return Ok(v);
        }
        // poll, then sleep: rank 0 may read a large file first, and a blocking receive of
        // OpenMPI spins a core that rank 0 (on this node, say) needs
        while master.immediate_probe_with_tag(TAG_SHARED).is_none() {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let (v, _) = master.receive_vec_with_tag::<u8>(TAG_SHARED);
        Ok(v)
    }

    /// Send a block's rows to rank 0: their length, then pieces of at most
    /// [`super::max_piece`] bytes (one MPI message carries less than 2 GiB).
    fn send_rows(master: &::mpi::topology::Process<'_>, m: &[u8], piece: usize) {
        master.send_with_tag(&(m.len() as u64), TAG_ROWS);
        for p in m.chunks(piece) {
            master.send_with_tag(p, TAG_PIECE);
        }
    }

    /// A worker: `read` runs on a thread of its own, one block ahead of `compute` (which,
    /// like every MPI call, stays on this thread: a GPU context lives here).
    pub fn work<I: Send>(
        read: impl FnMut(usize) -> Result<I> + Send,
        mut compute: impl FnMut(usize, I) -> Result<Rows>,
    ) -> Result<()> {
        let piece = super::max_piece()?;
        let world = SimpleCommunicator::world();
        let master = world.process_at_rank(0);
        master.send_with_tag(&DEPTH, TAG_READY);
        let mut first = Vec::new();
        for _ in 0..DEPTH {
            let (b, _) = master.receive_with_tag::<u64>(TAG_BLOCK);
            if b != STOP {
                first.push(b as usize);
            }
        }
        let mut read = read;
        std::thread::scope(|s| -> Result<()> {
            let (idx_tx, idx_rx) = channel::<usize>();
            // a rendezvous: the reader holds at most the one block it read ahead
            let (data_tx, data_rx) = sync_channel::<Result<(usize, I)>>(0);
            let reader = std::thread::Builder::new()
                .name("cdiphase-read".into())
                .spawn_scoped(s, move || {
                    for b in idx_rx {
                        let x = read(b).map(|x| (b, x));
                        let failed = x.is_err();
                        if data_tx.send(x).is_err() || failed {
                            break;
                        }
                    }
                })
                .map_err(|e| Error::io("<reader thread>", e))?;
            let run = move || -> Result<()> {
                let mut pending = first.len();
                for b in first {
                    let _ = idx_tx.send(b);
                }
                while pending > 0 {
                    let (b, x) = data_rx.recv().map_err(|_| {
                        Error::Config("the reader thread of an MPI worker stopped".into())
                    })??;
                    let rows = compute(b, x)?;
                    pending -= 1;
                    let m = encode(b, &rows);
                    drop(rows);
                    send_rows(&master, &m, piece);
                    drop(m);
                    let (nb, _) = master.receive_with_tag::<u64>(TAG_BLOCK);
                    if nb != STOP {
                        let _ = idx_tx.send(nb as usize);
                        pending += 1;
                    }
                }
                Ok(())
            };
            // the channels are dropped when `run` returns: the reader then ends too
            let r = run();
            reader
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p));
            r
        })
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
