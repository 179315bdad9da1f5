# Type stubs of the cdiphase package (the pure-Python layer over cdiphase._native).
import os
from typing import Any, Dict, List, Optional, Protocol, Sequence, Tuple, Union

import numpy as np
import numpy.typing as npt

__version__: str
BUNDLED_MODEL: str
DEFAULT_SCHEDULE: str
DEFAULT_SHRINKWRAP: str

PathLike = Union[str, os.PathLike[str]]
ArrayLike = npt.ArrayLike

class ProgressSink(Protocol):
    def set_total(self, total: int) -> None: ...
    def __call__(self, done: int) -> None: ...

Progress = Union[bool, None, ProgressSink]

def read_cxi(path: PathLike) -> Dict[str, Any]: ...
def write_cxi(
    path: PathLike,
    *,
    patterns: Optional[ArrayLike] = ...,
    mask: Optional[ArrayLike] = ...,
    density: Optional[ArrayLike] = ...,
    truth_support: Optional[ArrayLike] = ...,
    objects: Optional[ArrayLike] = ...,
    supports: Optional[ArrayLike] = ...,
) -> None: ...

class Simulation:
    patterns: npt.NDArray[np.float32]
    mask: npt.NDArray[np.uint8]
    density: npt.NDArray[np.float32]
    support: npt.NDArray[np.uint8]
    orientation: npt.NDArray[np.float64]
    names: List[str]
    pixel_size_nm: npt.NDArray[np.float64]
    configuration: Dict[str, Any]
    warnings: List[str]
    def __len__(self) -> int: ...
    def to_cxi(self, path: PathLike) -> None: ...

def simulate(
    pdb: Union[None, PathLike, Sequence[PathLike]] = ...,
    *,
    synthetic: Optional[str] = ...,
    residues: Tuple[int, int] = ...,
    count: int = ...,
    size: Union[None, int, Tuple[int, int]] = ...,
    photons: Optional[float] = ...,
    fluence: Optional[float] = ...,
    noise: Optional[str] = ...,
    mask: str = ...,
    seed: int = ...,
    preset: Optional[str] = ...,
    resolution: Optional[float] = ...,
    fill: Optional[float] = ...,
    pixel_size: Optional[float] = ...,
    atoms: str = ...,
    supersample: Optional[int] = ...,
    ideal_support: Optional[str] = ...,
    support_threshold: Optional[float] = ...,
    centre: Optional[str] = ...,
    max_extent: Optional[float] = ...,
    assemblies: Optional[int] = ...,
    assembly_parts: Tuple[int, int] = ...,
    chains: str = ...,
    keep_waters: bool = ...,
    keep_hydrogens: bool = ...,
    threads: Optional[int] = ...,
    progress: Progress = ...,
) -> Simulation: ...

class PhaseResult:
    objects: npt.NDArray[np.complex64]
    supports: npt.NDArray[np.uint8]
    fourier_error: npt.NDArray[np.float32]
    real_space_error: npt.NDArray[np.float32]
    final_fourier_error: npt.NDArray[np.float32]
    best_start: npt.NDArray[np.int64]
    all_fourier_error: npt.NDArray[np.float32]
    all_real_space_error: npt.NDArray[np.float32]
    all_final_fourier_error: npt.NDArray[np.float32]
    all_objects: Optional[npt.NDArray[np.complex64]]
    all_supports: Optional[npt.NDArray[np.uint8]]
    llk: npt.NDArray[np.float32]
    free_llk: npt.NDArray[np.float32]
    all_llk: npt.NDArray[np.float32]
    all_free_llk: npt.NDArray[np.float32]
    final_llk: npt.NDArray[np.float32]
    final_free_llk: npt.NDArray[np.float32]
    final_support_fraction: npt.NDArray[np.float32]
    all_final_llk: npt.NDArray[np.float32]
    all_final_free_llk: npt.NDArray[np.float32]
    all_final_support_fraction: npt.NDArray[np.float32]
    all_threshold_factor: npt.NDArray[np.float32]
    all_support_guard_events: npt.NDArray[np.int64]
    selection: Dict[str, Any]
    restarts: npt.NDArray[np.int64]
    all_restarts: npt.NDArray[np.int64]
    all_replaced: Optional[npt.NDArray[np.int64]]
    generation_best: Optional[npt.NDArray[np.float32]]
    all_culled_at: Optional[npt.NDArray[np.int64]]
    merged_objects: Optional[npt.NDArray[np.complex64]]
    merged_supports: Optional[npt.NDArray[np.uint8]]
    merged_modes: Optional[npt.NDArray[np.complex64]]
    merged_mode_weights: Optional[npt.NDArray[np.float32]]
    merged_starts: Optional[npt.NDArray[np.int64]]
    merged_final_fourier_error: Optional[npt.NDArray[np.float32]]
    merged_final_llk: Optional[npt.NDArray[np.float32]]
    @property
    def outside_energy(self) -> npt.NDArray[np.float32]: ...
    iterations: int
    seconds: float
    device: str
    configuration: Dict[str, Any]
    def __len__(self) -> int: ...
    def to_cxi(self, path: PathLike) -> None: ...

def phase(
    intensities: ArrayLike,
    mask: Optional[ArrayLike] = ...,
    *,
    schedule: Optional[str] = ...,
    beta: float = ...,
    support: Union[str, ArrayLike] = ...,
    init: Union[str, ArrayLike] = ...,
    init_noise: float = ...,
    shrinkwrap: Optional[str] = ...,
    constraint: str = ...,
    starts: int = ...,
    seed: int = ...,
    error_every: Optional[int] = ...,
    keep_all: bool = ...,
    clip_negative: bool = ...,
    select: str = ...,
    free_fraction: Optional[float] = ...,
    support_fraction: Tuple[float, float] = ...,
    merge: Optional[int] = ...,
    population: Optional[str] = ...,
    restart: Optional[str] = ...,
    cull: Optional[str] = ...,
    missing_centre: Optional[str] = ...,
    device: str = ...,
    threads: Optional[int] = ...,
    progress: Progress = ...,
) -> PhaseResult: ...

class Prediction:
    output: npt.NDArray[np.float32]
    support: npt.NDArray[np.uint8]
    model: str
    description: str
    def __len__(self) -> int: ...
    def to_cxi(self, path: PathLike) -> None: ...

class Model:
    @staticmethod
    def load(path: Optional[PathLike] = ...) -> Model: ...
    @property
    def name(self) -> str: ...
    @property
    def label(self) -> str: ...
    @property
    def input_shape(self) -> Tuple[int, int, int]: ...
    @property
    def preprocess(self) -> str: ...
    @property
    def parameters(self) -> int: ...
    def predict(
        self,
        patterns: ArrayLike,
        mask: Optional[ArrayLike] = ...,
        *,
        threshold: float = ...,
        batch: int = ...,
        device: str = ...,
        threads: Optional[int] = ...,
        mode: str = ...,
        progress: Progress = ...,
    ) -> Prediction: ...

def convert(
    input: PathLike,
    output: PathLike,
    *,
    arch: Optional[str] = ...,
    arch_config: Optional[PathLike] = ...,
    dtype: str = ...,
    preprocess: str = ...,
) -> Model: ...
def support(
    images: ArrayLike,
    mask: Optional[ArrayLike] = ...,
    *,
    method: str = ...,
    threshold: Optional[float] = ...,
) -> npt.NDArray[np.uint8]: ...
def evaluate(truth: Any, inputs: Any, *, label: str = ...) -> Dict[str, Any]: ...
def align(
    reference: ArrayLike,
    candidate: ArrayLike,
    *,
    twin: bool = ...,
    upsample: int = ...,
    fit_scale: bool = ...,
) -> Tuple[npt.NDArray[np.complex128], Dict[str, Any]]: ...
def prtf(
    images: ArrayLike, *, upsample: int = ..., pixel_size_nm: Optional[float] = ...
) -> Dict[str, Any]: ...
def fourier_error(
    objects: ArrayLike, intensities: ArrayLike, mask: Optional[ArrayLike] = ...
) -> Union[float, npt.NDArray[np.float64]]: ...
def describe_device(device: str = ..., threads: Optional[int] = ...) -> str: ...
