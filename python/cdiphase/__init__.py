"""cdiphase: coherent diffraction imaging from numpy.

The Python face of the cdiphase Rust library (the same code as the ``cdiphase`` command
line): simulate diffraction patterns, estimate supports with the bundled network, phase
batches of patterns (HIO / ER / RAAR with shrinkwrap) and evaluate the results, on numpy
arrays, in notebooks and pipelines, without files.

Conventions, as in the CXI files the command line writes:

* images are centred: the zero frequency of a pattern and the centre of an object sit at
  (H/2, W/2);
* a stack is (N, H, W); a single (H, W) image is a stack of one;
* a mask is nonzero where a pixel is *not* measured;
* float64 or non-contiguous input is converted to float32 once; results are numpy arrays
  that own the library's buffers (no copy on the way out).

Long calls release the GIL, show a tqdm progress bar when tqdm is installed (``progress=
False`` to silence it), and stop within a fraction of a second on Ctrl-C with
``KeyboardInterrupt``. Bad input raises ``ValueError`` and file problems ``OSError``, with
the command line's messages.

Quick start (examples/python_quickstart.py is the longer version)::

    import cdiphase
    sim = cdiphase.simulate(synthetic="compact", count=4, size=128, seed=1)
    pred = cdiphase.Model.load().predict(sim.patterns, sim.mask)  # the bundled network
    res = cdiphase.phase(sim.patterns, sim.mask, support=pred.support,
                         schedule="40*(20*HIO + 5*ER) + 50*ER")
    res.objects, res.supports, res.final_fourier_error
    cdiphase.evaluate(sim, res)          # support FP/FN, aligned density error
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import _native

__version__ = _native.__version__

__all__ = [
    "BUNDLED_MODEL",
    "Model",
    "PhaseResult",
    "Prediction",
    "Simulation",
    "align",
    "convert",
    "describe_device",
    "evaluate",
    "fourier_error",
    "phase",
    "prtf",
    "read_cxi",
    "simulate",
    "support",
    "write_cxi",
]

#: Name of the model bundled in the package (``Model.load()`` without a path).
BUNDLED_MODEL: str = _native.BUNDLED_MODEL

PathLike = Union[str, "os.PathLike[str]"]

#: The measured default recipe (``cdiphase phase`` without ``--algorithm`` and
#: ``--shrinkwrap``): :func:`phase` runs it when neither ``schedule`` nor ``shrinkwrap`` is
#: given, with positivity (README, "Phasing recipes that work").
DEFAULT_SCHEDULE: str = _native.RECIPE_SCHEDULE
DEFAULT_SHRINKWRAP: str = _native.RECIPE_SHRINKWRAP

#: The figure-of-merit arrays of a :class:`PhaseResult` (the CXI datasets of the same names).
_MERITS = (
    "llk",
    "free_llk",
    "all_llk",
    "all_free_llk",
    "final_llk",
    "final_free_llk",
    "final_support_fraction",
    "all_final_llk",
    "all_final_free_llk",
    "all_final_support_fraction",
    "all_threshold_factor",
    "all_support_guard_events",
)
# populations, restarts, culling and the merge (present only where the run made them; the
# merged object is entry_1/image_3 of the CLI's file)
_STRATEGY = (
    "restarts",
    "all_restarts",
    "all_replaced",
    "generation_best",
    "all_culled_at",
    "merged_objects",
    "merged_supports",
    "merged_modes",
    "merged_mode_weights",
    "merged_starts",
    "merged_final_fourier_error",
    "merged_final_llk",
)


# ----------------------------------------------------------------------------------------
# array conversion (once, and only when needed)


def _f32(x: Any, what: str) -> np.ndarray:
    a = np.asarray(x)
    if np.iscomplexobj(a):
        raise ValueError(f"{what}: expected real values, got a {a.dtype} array")
    return np.asarray(a, dtype=np.float32)


def _c64(x: Any) -> np.ndarray:
    return np.asarray(x, dtype=np.complex64)


def _c128(x: Any) -> np.ndarray:
    return np.asarray(x, dtype=np.complex128)


def _u8(x: Any) -> Optional[np.ndarray]:
    if x is None:
        return None
    a = np.asarray(x)
    if a.dtype == np.uint8:
        return a
    return (a != 0).astype(np.uint8)


def _path(p: PathLike) -> str:
    return os.fspath(p)


# ----------------------------------------------------------------------------------------
# progress


class _Progress:
    """Feeds a tqdm bar from the native side (``set_total`` then the count done)."""

    def __init__(self, desc: str) -> None:
        from tqdm.auto import tqdm  # noqa: F401  (ImportError: no bar)

        self._tqdm = tqdm
        self._desc = desc
        self._bar = None
        self._last = 0

    def set_total(self, total: int) -> None:
        if self._bar is not None:
            self._bar.close()
        self._bar = self._tqdm(total=total, desc=self._desc, leave=False)
        self._last = 0

    def __call__(self, done: int) -> None:
        if self._bar is not None and done > self._last:
            self._bar.update(done - self._last)
            self._last = done

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _progress(enabled: Any, desc: str) -> Optional[Any]:
    """A progress sink: None (silent), a tqdm bar when tqdm is installed, or the caller's
    own object with ``set_total(int)`` and ``__call__(done)``."""
    if enabled is None or enabled is False:
        return None
    if enabled is True:
        try:
            return _Progress(desc)
        except ImportError:
            return None
    return enabled


def _close(p: Optional[Any]) -> None:
    if isinstance(p, _Progress):
        p.close()


# ----------------------------------------------------------------------------------------
# files


def read_cxi(path: PathLike) -> Dict[str, Any]:
    """Read what a cdiphase CXI/HDF5 file holds, as numpy arrays.

    Keys, each present only when the file has it:

    * ``patterns`` (N, H, W) float32 and ``mask`` (1 or N, H, W) uint8 (nonzero =
      unmeasured): ``entry_1/data_1/data`` and its mask;
    * ``density`` (N, H, W) float32 and ``truth_support`` (N, H, W) uint8: the ground truth
      of ``simulate`` (``entry_1/sample_1``), ``pixel_size_nm`` (N,);
    * ``objects`` (N, H, W) complex64 and ``supports`` (N, H, W) uint8: a reconstruction
      (``entry_1/image_1``), with ``fourier_error`` (N, L) and ``final_fourier_error`` (N,),
      every start's ``all_fourier_error`` (N, K, L) and ``all_final_fourier_error`` (N, K),
      and with ``--keep-all`` ``all_objects`` (N, K, H, W) complex64 and ``all_supports``;
    * ``output`` (N, H, W) float32: a ``predict`` output (its support is ``supports``);
    * ``datasets``: every dataset of the file as (path, shape, type).

    Raises ``OSError`` for a missing or unreadable file.
    """
    return dict(_native.read_cxi(_path(path)))


def write_cxi(
    path: PathLike,
    *,
    patterns: Any = None,
    mask: Any = None,
    density: Any = None,
    truth_support: Any = None,
    objects: Any = None,
    supports: Any = None,
) -> None:
    """Write arrays into a CXI file where cdiphase (and ``read_cxi``) finds them.

    ``patterns`` -> ``entry_1/data_1/data`` (float32), ``mask`` -> ``entry_1/data_1/mask``,
    ``density`` / ``truth_support`` -> ``entry_1/sample_1/{density,support}``, ``objects`` /
    ``supports`` -> ``entry_1/image_1/{data,support}`` (complex64 / uint8). Every array is
    (N, H, W) or (H, W), centred. The file is written to a temporary name and renamed, so a
    reader never sees half a file. Phasing results and predictions have their own
    ``to_cxi`` with the full layout of the command line.
    """
    m = _u8(mask)
    if m is not None and m.ndim == 3 and m.shape[0] == 1:
        m = m[0]  # one shared mask is stored (H, W), as cdiphase reads it
    _native.write_cxi(
        _path(path),
        None if patterns is None else _f32(patterns, "patterns"),
        m,
        None if density is None else _f32(density, "density"),
        _u8(truth_support),
        None if objects is None else _c64(objects),
        _u8(supports),
    )


# ----------------------------------------------------------------------------------------
# simulation


class Simulation:
    """Simulated patterns and their ground truth (see :func:`simulate`).

    Attributes: ``patterns`` (N, H, W) float32 intensities, centred; ``mask`` (1, H, W)
    uint8 (nonzero = unmeasured); ``density`` (N, H, W) float32 projected electron
    density; ``support`` (N, H, W) uint8 ideal support; ``orientation`` (N, 4) unit
    quaternions; ``names`` source per pattern; ``pixel_size_nm`` (N,); ``configuration``
    (dict); ``warnings`` (skipped structures).
    """

    def __init__(self, d: Dict[str, Any]) -> None:
        self.patterns: np.ndarray = d["patterns"]
        self.mask: np.ndarray = d["mask"]
        self.density: np.ndarray = d["density"]
        self.support: np.ndarray = d["support"]
        self.orientation: np.ndarray = d["orientation"]
        self.names: List[str] = list(d["names"])
        self.pixel_size_nm: np.ndarray = d["pixel_size_nm"]
        self.configuration: Dict[str, Any] = json.loads(d["configuration"])
        self.warnings: List[str] = list(d["warnings"])

    def __len__(self) -> int:
        return int(self.patterns.shape[0])

    def __repr__(self) -> str:
        n, h, w = self.patterns.shape
        return f"Simulation({n} patterns of {h}x{w})"

    def to_cxi(self, path: PathLike) -> None:
        """Write patterns, mask and ground truth where ``phase``/``evaluate`` read them."""
        write_cxi(
            path,
            patterns=self.patterns,
            mask=self.mask,
            density=self.density,
            truth_support=self.support,
        )


def simulate(
    pdb: Union[None, PathLike, Sequence[PathLike]] = None,
    *,
    synthetic: Optional[str] = None,
    residues: Tuple[int, int] = (150, 1200),
    count: int = 100,
    size: Union[None, int, Tuple[int, int]] = None,
    photons: Optional[float] = None,
    fluence: Optional[float] = None,
    noise: Optional[str] = None,
    mask: str = "none",
    seed: int = 0,
    preset: Optional[str] = None,
    resolution: Optional[float] = None,
    fill: Optional[float] = None,
    pixel_size: Optional[float] = None,
    atoms: str = "gaussian",
    supersample: Optional[int] = None,
    ideal_support: Optional[str] = None,
    support_threshold: Optional[float] = None,
    centre: Optional[str] = None,
    max_extent: Optional[float] = None,
    assemblies: Optional[int] = None,
    assembly_parts: Tuple[int, int] = (2, 3),
    chains: str = "all",
    keep_waters: bool = False,
    keep_hydrogens: bool = False,
    threads: Optional[int] = None,
    progress: Any = True,
) -> Simulation:
    """Simulate diffraction patterns with their ground truth (``cdiphase simulate``).

    Parameters
    ----------
    pdb : path or list of paths
        Structures: PDB or mmCIF files (gzipped or not), folders of them, or .txt lists.
    synthetic : str
        Instead of structures, synthetic protein-like particles, one per pattern: ``all``
        or a comma list of ``compact, elongated, multidomain, ring``.
    residues : (min, max)
        Residues per synthetic particle.
    count : int
        Number of patterns (cycling over the structures, a random orientation each).
    size : int or (H, W)
        Pattern size (default 128, or the preset's).
    photons, fluence : float
        Total photons per pattern, or the incident fluence in photons per µm²; default: the
        raw |F|² of the density in electrons.
    noise : ``"none"`` or ``"poisson"``
        Poisson noise needs ``photons`` or ``fluence``.
    mask : str
        Missing data: ``none | stripe:ROWS | beamstop:RADIUS | gaps:WIDTH[xPANELS]``, comma
        separated.
    seed : int
        Seed of orientations, particles and noise: the same seed gives the same data.
    preset : ``"paper"``
        The paper's geometry (128x128, 0.2333 nm pixels, molmap support).
    resolution, fill, pixel_size : float
        Blur resolution (Å), particle extent as a fraction of the field, or a fixed pixel
        size (nm) instead of ``fill``.
    atoms : ``"gaussian" | "cromer-mann"``
        Atom model.
    supersample : int
        Render K times finer per axis and sum K x K blocks (anti-aliasing).
    ideal_support : str
        ``threshold[:T]`` or ``molmap[:RANGE]``; ``support_threshold`` the threshold T.
    centre : ``"centroid" | "bbox"``
        Centre of each projection at (H/2, W/2).
    max_extent : float
        With ``pixel_size``: the largest density extent allowed, fraction of the field.
    assemblies, assembly_parts : int, (min, max)
        K assemblies of 2-3 of the structures instead of the structures themselves.
    chains : ``"all" | "first"``; keep_waters, keep_hydrogens : bool
        What is read of each structure file.
    threads : int
        CPU threads (default: all cores).
    progress : bool
        A tqdm bar when tqdm is installed.
    """
    if pdb is None:
        paths: List[str] = []
    elif isinstance(pdb, (str, os.PathLike)):
        paths = [_path(pdb)]
    else:
        paths = [_path(p) for p in pdb]
    if isinstance(size, int):
        size = (size, size)
    bar = _progress(progress, "simulate")
    try:
        d = _native.simulate(
            paths,
            synthetic,
            tuple(residues),
            count,
            size,
            photons,
            fluence,
            noise,
            mask,
            seed,
            preset,
            resolution,
            fill,
            pixel_size,
            atoms,
            supersample,
            ideal_support,
            support_threshold,
            centre,
            max_extent,
            assemblies,
            tuple(assembly_parts),
            chains,
            bool(keep_waters),
            bool(keep_hydrogens),
            threads,
            bar,
        )
    finally:
        _close(bar)
    return Simulation(d)


# ----------------------------------------------------------------------------------------
# phasing


class PhaseResult:
    """The result of :func:`phase`, centred as the CXI files store it.

    Attributes
    ----------
    objects : (N, H, W) complex64
        Best start per pattern (lowest final Fourier error).
    supports : (N, H, W) uint8
        Their final supports.
    fourier_error, real_space_error : (N, L) float32
        Error histories of the best start (L records, see ``error_every``).
    final_fourier_error : (N,) float32
        Fourier error of each best object.
    best_start : (N,) int64
        Which start was best.
    all_fourier_error, all_real_space_error : (N, K, L); all_final_fourier_error : (N, K)
        Every start's histories.
    all_objects : (N, K, H, W) complex64 and all_supports : (N, K, H, W) uint8
        Every start, with ``keep_all=True`` (else None).
    llk, free_llk, outside_energy : (N, L) float32; all_llk, all_free_llk : (N, K, L)
        Poisson log-likelihood per measured pixel, the same over the held-out pixels
        (``free_fraction``; NaN without), and the energy outside the support (the square
        of the real-space error), recorded with the Fourier error.
    final_llk, final_free_llk, final_support_fraction : (N,); all_final_* : (N, K)
        The same on each final object, and its support's fraction of the field.
    all_threshold_factor : (N, K) float32; all_support_guard_events : (N, K) int64
        Each start's final shrinkwrap threshold factor and how many shrinkwraps the support
        guard refused.
    selection : dict
        How ``best_start`` was chosen (criterion and admissible support fractions).
    restarts : (N,) int64; all_restarts : (N, K) int64
        Restarts of collapsed starts (``restart``) per pattern and per start.
    all_replaced : (N, K) int64; generation_best : (N, G) float32
        With ``population``: times each start was replaced by a child, and the criterion
        of the best start at each generation (else None).
    all_culled_at : (N, K) int64
        With ``cull``: the iteration at which each start stopped (0: it ran to the end);
        else None.
    merged_objects, merged_supports : (N, H, W); merged_modes : (N, M, H, W);
    merged_mode_weights : (N, M); merged_starts : (N, C); merged_final_fourier_error,
    merged_final_llk : (N,)
        With ``merge``: the aligned average of the best C starts (the CLI's
        ``entry_1/image_3``), its support, modes and figures of merit (else None).
    iterations : int; seconds : float; device : str; configuration : dict
    """

    def __init__(self, d: Dict[str, Any]) -> None:
        self.objects: np.ndarray = d["objects"]
        self.supports: np.ndarray = d["supports"]
        self.fourier_error: np.ndarray = d["fourier_error"]
        self.real_space_error: np.ndarray = d["real_space_error"]
        self.final_fourier_error: np.ndarray = d["final_fourier_error"]
        self.best_start: np.ndarray = d["best_start"]
        self.all_fourier_error: np.ndarray = d["all_fourier_error"]
        self.all_real_space_error: np.ndarray = d["all_real_space_error"]
        self.all_final_fourier_error: np.ndarray = d["all_final_fourier_error"]
        self.all_objects: Optional[np.ndarray] = d.get("all_objects")
        self.all_supports: Optional[np.ndarray] = d.get("all_supports")
        self.llk: np.ndarray = d["llk"]
        self.free_llk: np.ndarray = d["free_llk"]
        self.all_llk: np.ndarray = d["all_llk"]
        self.all_free_llk: np.ndarray = d["all_free_llk"]
        self.final_llk: np.ndarray = d["final_llk"]
        self.final_free_llk: np.ndarray = d["final_free_llk"]
        self.final_support_fraction: np.ndarray = d["final_support_fraction"]
        self.all_final_llk: np.ndarray = d["all_final_llk"]
        self.all_final_free_llk: np.ndarray = d["all_final_free_llk"]
        self.all_final_support_fraction: np.ndarray = d["all_final_support_fraction"]
        self.all_threshold_factor: np.ndarray = d["all_threshold_factor"]
        self.all_support_guard_events: np.ndarray = d["all_support_guard_events"]
        self.selection: Dict[str, Any] = json.loads(d["selection"])
        self.restarts: np.ndarray = d["restarts"]
        self.all_restarts: np.ndarray = d["all_restarts"]
        self.all_replaced: Optional[np.ndarray] = d.get("all_replaced")
        self.generation_best: Optional[np.ndarray] = d.get("generation_best")
        self.all_culled_at: Optional[np.ndarray] = d.get("all_culled_at")
        self.merged_objects: Optional[np.ndarray] = d.get("merged_objects")
        self.merged_supports: Optional[np.ndarray] = d.get("merged_supports")
        self.merged_modes: Optional[np.ndarray] = d.get("merged_modes")
        self.merged_mode_weights: Optional[np.ndarray] = d.get("merged_mode_weights")
        self.merged_starts: Optional[np.ndarray] = d.get("merged_starts")
        self.merged_final_fourier_error: Optional[np.ndarray] = d.get("merged_final_fourier_error")
        self.merged_final_llk: Optional[np.ndarray] = d.get("merged_final_llk")
        self.iterations: int = int(d["iterations"])
        self.seconds: float = float(d["seconds"])
        self.device: str = d["device"]
        self.configuration: Dict[str, Any] = json.loads(d["configuration"])

    @property
    def outside_energy(self) -> np.ndarray:
        """(N, L): energy outside the support, the square of the real-space error."""
        return self.real_space_error * self.real_space_error

    def __len__(self) -> int:
        return int(self.objects.shape[0])

    def __repr__(self) -> str:
        n, h, w = self.objects.shape
        k = self.all_final_fourier_error.shape[1]
        return (
            f"PhaseResult({n} patterns of {h}x{w}, {k} starts, {self.iterations} iterations, "
            f"median final Fourier error {float(np.median(self.final_fourier_error)):.3e})"
        )

    def to_cxi(self, path: PathLike) -> None:
        """Write the result as ``cdiphase phase -o PATH`` does (atomically), so that
        ``cdiphase evaluate`` and :func:`evaluate` read it."""
        _native.write_reconstruction(
            _path(path),
            self.objects,
            self.supports,
            self.best_start,
            self.all_fourier_error,
            self.all_real_space_error,
            self.all_final_fourier_error,
            self.all_objects,
            self.all_supports,
            self.iterations,
            self.seconds,
            self.device,
            json.dumps(self.configuration),
            {
                **{name: getattr(self, name) for name in _MERITS},
                **{
                    name: getattr(self, name)
                    for name in _STRATEGY
                    if getattr(self, name) is not None
                },
                "selection": json.dumps(self.selection),
            },
        )


def phase(
    intensities: Any,
    mask: Any = None,
    *,
    schedule: Optional[str] = None,
    beta: float = 0.9,
    support: Any = "autocorrelation:0.04",
    init: Any = "random",
    init_noise: float = 0.0,
    shrinkwrap: Optional[str] = None,
    constraint: str = "positive",
    starts: int = 4,
    seed: int = 0,
    error_every: Optional[int] = None,
    keep_all: bool = False,
    clip_negative: bool = False,
    select: str = "fourier",
    free_fraction: Optional[float] = None,
    support_fraction: Tuple[float, float] = (1e-4, 0.7),
    merge: Optional[int] = None,
    population: Optional[str] = None,
    restart: Optional[str] = None,
    cull: Optional[str] = None,
    missing_centre: Optional[str] = None,
    device: str = "auto",
    threads: Optional[int] = None,
    progress: Any = True,
) -> PhaseResult:
    """Phase retrieval of every pattern (``cdiphase phase``), with the GIL released.

    Parameters
    ----------
    intensities : (N, H, W) or (H, W) array
        Measured intensities, centred (zero frequency at (H/2, W/2)).
    mask : array, optional
        (H, W) shared or (N, H, W); nonzero = unmeasured pixel.
    schedule : str
        The algorithm, e.g. ``"2000*(5*HIO + 5*ER)"``, ``"100*(SW + 50*HIO) + 200*ER"``,
        ``"RAAR(0.8)**500"``. Without ``schedule`` and ``shrinkwrap``: the measured default
        recipe of ``cdiphase phase``, :data:`DEFAULT_SCHEDULE` with the shrinkwrap
        :data:`DEFAULT_SHRINKWRAP` and positivity.
    beta : float
        HIO feedback / RAAR relaxation.
    support : str or array
        Starting support: ``"autocorrelation[:THRESHOLD]"``, ``"circle:RADIUS"``, or a
        (H, W) / (N, H, W) array (nonzero = inside), centred.
    init : ``"random"`` or array
        Starting object: random (seeded) or a real/complex (H, W) / (N, H, W) array.
    init_noise : float
        With a given ``init``: per-start multiplicative noise amplitude in [0, 1).
    shrinkwrap : str
        Periodic shrinkwrap, ``"sigma=1,threshold=0.1,every=N[,start=I][,stop=I]"`` (ranges
        ``a:b`` ramp; ``ref=max|mean|rms``, ``factor=LO:HI``, ``min=F,max=F[,tune=T]``: the
        support guard); ``"none"``: none (the default when ``schedule`` is given).
    constraint : ``"none" | "real" | "positive"``
        Real-space constraint (positive by default, also with a given ``schedule``; the
        command line's default is none there).
    starts : int
        Random starts per pattern; the best one (``select``) is kept.
    seed : int
        Seed of the random starting objects: the same seed gives the same result as the
        command line with ``--seed``.
    error_every : int
        Record the errors every K iterations (default: at the end of each ER section).
    keep_all : bool
        Also return every start (``all_objects``, ``all_supports``).
    clip_negative : bool
        Clip negative intensities to zero instead of raising ``ValueError``.
    select : ``"fourier" | "llk" | "free-llk"``
        The best start by final Fourier error, Poisson log-likelihood, or free
        log-likelihood over held-out pixels, among the starts whose final support fraction
        lies in ``support_fraction`` (among all when none does).
    free_fraction : float
        Fraction of the measured pixels held out of the modulus constraint (in Friedel
        pairs) for the free log-likelihood; default 0, or 0.05 with ``select="free-llk"``.
    support_fraction : (float, float)
        Admissible final support fraction (MIN, MAX): outside, a start collapsed or blew up.
    merge : int
        Also return the aligned average of the best ``merge`` starts (``merged_*``); default
        as the command line: 4 with the default recipe and 8 or more starts, else 0.
    population : str
        GA population over the starts, ``"generations=G,keep=N[,every=K]"`` (``--population``).
    restart : str
        Restart collapsed starts, ``"guard=R[,every=K][,until=I]"`` or ``"default"``
        (``--restart``).
    cull : str
        ``"at=ITER,keep=N"``: after ITER iterations only the best N starts of each pattern
        go on (``--cull``).
    missing_centre : str
        Masked pixels: ``"free"`` (default), ``"free-after:ITER"``, ``"damp:W[,until=ITER]"``
        or ``"interpolate:ITER"`` (``--missing-centre``; README "Phasing recipes that work").
    device : ``"auto" | "cpu" | "cuda" | "emu"``
        ``auto`` takes a usable CUDA GPU, else the CPU.
    threads : int
        CPU threads (default: all cores).
    progress : bool
        A tqdm bar (patterns x starts x iterations) when tqdm is installed.

    Returns
    -------
    PhaseResult

    Raises
    ------
    ValueError
        Bad input: shapes, NaN or negative intensities (the pattern and pixel named), an
        unparsable schedule, support or shrinkwrap.
    KeyboardInterrupt
        Ctrl-C: the computation stops within a fraction of a second.
    """
    support_text: Optional[str] = None
    support_array = None
    if isinstance(support, str):
        support_text = support
    elif support is not None:
        support_array = _u8(support)
    init_array = None
    if isinstance(init, str):
        if init.lower() != "random":
            raise ValueError(f"init '{init}': expected 'random' or an array")
    elif init is not None:
        init_array = _c64(init)
    bar = _progress(progress, "phase")
    try:
        d = _native.phase(
            _f32(intensities, "intensities"),
            _u8(mask),
            schedule,
            float(beta),
            support_text,
            support_array,
            init_array,
            float(init_noise),
            shrinkwrap,
            constraint,
            int(starts),
            int(seed),
            error_every,
            bool(keep_all),
            bool(clip_negative),
            str(select),
            None if free_fraction is None else float(free_fraction),
            (float(support_fraction[0]), float(support_fraction[1])),
            None if merge is None else int(merge),
            population,
            restart,
            cull,
            missing_centre,
            device,
            threads,
            bar,
        )
    finally:
        _close(bar)
    return PhaseResult(d)


# ----------------------------------------------------------------------------------------
# the network


class Prediction:
    """The network's output (see :meth:`Model.predict`).

    Attributes: ``output`` (N, H, W) float32 network output; ``support`` (N, H, W) uint8
    (output > threshold x per-pattern maximum); ``model`` (where the model came from);
    ``description``.
    """

    def __init__(self, d: Dict[str, Any]) -> None:
        self.output: np.ndarray = d["output"]
        self.support: np.ndarray = d["support"]
        self.model: str = d["model"]
        self.description: str = d["description"]

    def __len__(self) -> int:
        return int(self.output.shape[0])

    def __repr__(self) -> str:
        n, h, w = self.output.shape
        return f"Prediction({n} images of {h}x{w} by {self.model})"

    def to_cxi(self, path: PathLike) -> None:
        """Write as ``cdiphase predict -o PATH`` does (atomically)."""
        _native.write_prediction(
            _path(path), self.output, self.support, self.model, self.description
        )


class Model:
    """A support/density network (the paper's encoder-decoder) with its weights.

    ``Model.load()`` gives the bundled model (trained for the paper's geometry: 128x128
    patterns); ``Model.load(path)`` a model file written by ``cdiphase convert`` or
    :func:`convert`.
    """

    def __init__(self, native: Any) -> None:
        self._native = native

    @staticmethod
    def load(path: Optional[PathLike] = None) -> "Model":
        """Load a model file, or the bundled default when ``path`` is None.

        Raises ``OSError`` when the file is missing or unreadable and ``ValueError`` when it
        is not a valid model."""
        return Model(_native.Model.load(None if path is None else _path(path)))

    @property
    def name(self) -> str:
        """The network's name."""
        return self._native.name

    @property
    def label(self) -> str:
        """The model file, or ``<bundled model NAME>``."""
        return self._native.label

    @property
    def input_shape(self) -> Tuple[int, int, int]:
        """Input shape (H, W, C)."""
        return tuple(self._native.input_shape)

    @property
    def preprocess(self) -> str:
        """Input normalisation stored with the model."""
        return self._native.preprocess

    @property
    def parameters(self) -> int:
        """Number of weights."""
        return self._native.parameters

    def __repr__(self) -> str:
        h, w, c = self.input_shape
        return f"Model({self.name!r}, input {h}x{w}x{c}, {self.parameters} parameters, from {self.label})"

    def predict(
        self,
        patterns: Any,
        mask: Any = None,
        *,
        threshold: float = 0.1,
        batch: int = 64,
        device: str = "auto",
        threads: Optional[int] = None,
        mode: str = "f32",
        progress: Any = True,
    ) -> Prediction:
        """Run the network on every pattern (``cdiphase predict``), GIL released.

        Parameters
        ----------
        patterns : (N, H, W) or (H, W) array
            Intensities, centred, of the model's input size.
        mask : array, optional
            Nonzero = unmeasured; those pixels are set to 0 before the normalisation.
        threshold : float
            Support = output > threshold x per-pattern maximum.
        batch : int
            Patterns per forward pass (also the granularity of Ctrl-C and progress).
        device : ``"auto" | "cpu" | "cuda" | "emu"``
        threads : int
            CPU threads (default: all cores).
        mode : str
            CPU kernels: ``f32`` (exact), ``f32-gemm``, ``winograd``, ``bf16``,
            ``bf16-avx512``, or ``fast`` (the fastest this CPU has).
        progress : bool
            A tqdm bar when tqdm is installed.
        """
        bar = _progress(progress, "predict")
        try:
            d = self._native.predict(
                _f32(patterns, "patterns"),
                _u8(mask),
                float(threshold),
                int(batch),
                device,
                threads,
                mode,
                bar,
            )
        finally:
            _close(bar)
        return Prediction(d)


def convert(
    input: PathLike,
    output: PathLike,
    *,
    arch: Optional[str] = None,
    arch_config: Optional[PathLike] = None,
    dtype: str = "f32",
    preprocess: str = "max",
) -> Model:
    """Convert a Keras checkpoint to a model file (``cdiphase convert``) and load it.

    ``input``: a legacy .h5, a .keras, or a weights-only file (then give ``arch``, a preset
    ``spinn[:SIZE[:WIDTH]]``, or ``arch_config``, a Keras model JSON). ``dtype``: weight
    storage ``f32 | f16 | bf16``. ``preprocess``: ``max | log1p-max``.
    """
    _native.convert(
        _path(input),
        _path(output),
        arch,
        None if arch_config is None else _path(arch_config),
        dtype,
        preprocess,
    )
    return Model.load(output)


def support(
    images: Any,
    mask: Any = None,
    *,
    method: str = "autocorrelation",
    threshold: Optional[float] = None,
) -> np.ndarray:
    """Supports (``cdiphase support``): from patterns (``autocorrelation``,
    ``triple-intersection``) or from network outputs (``nn``: output > threshold x max).

    ``threshold`` is a fraction of the per-image maximum (default 0.04, 0.001 and 0.1).
    Returns (N, H, W) uint8, centred.
    """
    return _native.support(_f32(images, "images"), _u8(mask), method, threshold)


# ----------------------------------------------------------------------------------------
# evaluation


def evaluate(
    truth: Any,
    inputs: Any,
    *,
    label: str = "input",
) -> Dict[str, Any]:
    """The metrics of ``cdiphase evaluate`` as a dict (no figures).

    ``truth``: a ``simulate`` output file, a :class:`Simulation`, or a dict with
    ``density`` and ``support`` (and optionally ``pixel_size_nm``). ``inputs``: files
    (a path or a list of paths: ``phase``, ``support`` or ``predict`` outputs) when
    ``truth`` is a file; else a :class:`PhaseResult`, a :class:`Prediction`, a support
    array, or a dict with ``objects`` / ``supports`` / ``all_objects``.

    The result has ``inputs[i]["per_pattern"]`` (support false positives/negatives,
    aligned density error, PRTF resolution and, with every start, the pattern's PRTF
    curve) and ``inputs[i]["aggregate"]``.
    """
    if isinstance(truth, (str, os.PathLike)):
        paths = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
        return json.loads(_native.evaluate_files(_path(truth), [_path(p) for p in paths]))
    if isinstance(truth, Simulation):
        density, tsup, px = truth.density, truth.support, truth.pixel_size_nm
    else:
        density, tsup = truth["density"], truth["support"]
        px = truth.get("pixel_size_nm")
    objects = supports = all_objects = None
    if isinstance(inputs, PhaseResult):
        objects, supports = inputs.objects, inputs.supports
        if inputs.all_objects is not None and inputs.all_objects.shape[1] >= 2:
            all_objects = inputs.all_objects
    elif isinstance(inputs, Prediction):
        supports = inputs.support
    elif isinstance(inputs, dict):
        objects = inputs.get("objects")
        supports = inputs.get("supports")
        all_objects = inputs.get("all_objects")
    else:
        supports = inputs
    return json.loads(
        _native.evaluate_arrays(
            _f32(density, "density"),
            _u8(tsup),
            None if px is None else [float(v) for v in np.ravel(px)],
            label,
            None if objects is None else _c64(objects),
            _u8(supports),
            None if all_objects is None else _c64(all_objects),
        )
    )


def align(
    reference: Any,
    candidate: Any,
    *,
    twin: bool = True,
    upsample: int = 1,
    fit_scale: bool = False,
) -> Tuple[np.ndarray, Dict[str, Any]]:
    """Align ``candidate`` to ``reference`` (both (H, W), real or complex) under the trivial
    ambiguities: translation (sub-pixel with ``upsample`` > 1), the twin (flip + conjugate,
    with ``twin``), a global phase (or a complex scale with ``fit_scale``).

    Returns the aligned candidate (complex128) and ``{"shift", "twin", "phase", "scale",
    "error"}``, error = ||reference - aligned|| / ||reference||.
    """
    out, info = _native.align_images(
        _c128(reference), _c128(candidate), bool(twin), int(upsample), bool(fit_scale)
    )
    return out, dict(info)


def prtf(
    images: Any, *, upsample: int = 1, pixel_size_nm: Optional[float] = None
) -> Dict[str, Any]:
    """The phase retrieval transfer function of K >= 2 reconstructions (K, H, W) of one
    pattern: aligned to the first, |<F_k/|F_k|>| ring-averaged.

    Returns ``frequency`` (cycles/pixel), ``prtf``, ``average`` (the aligned mean image)
    and the resolution at the 1/e crossing (``resolution_pixels``, ``resolution_nm`` with
    ``pixel_size_nm``, ``crossed``).
    """
    return dict(_native.prtf(_c128(images), int(upsample), pixel_size_nm))


def fourier_error(objects: Any, intensities: Any, mask: Any = None) -> Union[float, np.ndarray]:
    """The Fourier (modulus) error of each object against its pattern, as ``phase``
    records it: sqrt(sum (|F| - sqrt(I))² / sum I) over the measured pixels, F the
    unnormalised FFT of the object. (H, W) inputs give a float, (N, H, W) an (N,) array."""
    o = _c128(objects)
    single = o.ndim == 2
    if single:
        o = o[None]
    i = _f32(intensities, "intensities")
    if i.ndim == 2:
        i = i[None]
    e = _native.fourier_error(o, i, _u8(mask))
    return float(e[0]) if single else e


def describe_device(device: str = "auto", threads: Optional[int] = None) -> str:
    """What ``device`` runs on here (for ``auto``: what it chose and why)."""
    return _native.describe_device(device, threads)
