"""Errors, the GIL, Ctrl-C, progress, input conversion and the metric helpers."""

import os
import signal
import threading
import time

import numpy as np
import pytest

import cdiphase

LONG = "100000*(5*HIO + 5*ER)"  # minutes of work: only ever interrupted


# -- bad input: ValueError / OSError with the CLI's messages, never a panic ---------------

def test_nan_intensity_names_the_pattern_and_pixel(small):
    bad = small.patterns.copy()
    bad[1, 4, 7] = np.nan
    with pytest.raises(ValueError, match=r"pattern 1 pixel \(y=4, x=7\) is NaN: mask it"):
        cdiphase.phase(bad, schedule="10*ER", progress=False)


def test_negative_intensity_is_refused_or_clipped(small):
    bad = small.patterns.copy()
    bad[0, 0, 3] = -2.0
    with pytest.raises(ValueError, match=r"negative intensity -2.*clip"):
        cdiphase.phase(bad, schedule="10*ER", progress=False)
    r = cdiphase.phase(bad, schedule="10*ER", clip_negative=True, starts=1, progress=False)
    assert np.isfinite(r.final_fourier_error).all()


def test_shapes_are_named(small):
    with pytest.raises(ValueError, match=r"mask: expected shape .*found \[1, 31, 32\]"):
        cdiphase.phase(small.patterns, np.zeros((31, 32)), schedule="10*ER", progress=False)
    with pytest.raises(ValueError, match=r"intensities: expected shape \(N, H, W\) or \(H, W\)"):
        cdiphase.phase(np.ones(5), progress=False)
    with pytest.raises(ValueError, match=r"support: expected shape"):
        cdiphase.phase(small.patterns, support=np.ones((2, 32, 32)), progress=False)
    with pytest.raises(ValueError, match=r"patterns: expected shape \(N, 128, 128\)"):
        cdiphase.Model.load().predict(small.patterns, progress=False)


def test_bad_options_are_value_errors(small):
    with pytest.raises(ValueError, match=r"schedule '5\*HOI'"):
        cdiphase.phase(small.patterns, schedule="5*HOI", progress=False)
    with pytest.raises(ValueError, match=r"support 'disc:3'"):
        cdiphase.phase(small.patterns, support="disc:3", progress=False)
    with pytest.raises(ValueError, match=r"unknown device 'tpu'"):
        cdiphase.phase(small.patterns, device="tpu", progress=False)
    with pytest.raises(ValueError, match=r"starts must be at least 1"):
        cdiphase.phase(small.patterns, starts=0, progress=False)
    with pytest.raises(ValueError, match=r"--noise poisson needs --photons"):
        cdiphase.simulate(synthetic="compact", count=1, size=32, noise="poisson")
    with pytest.raises(ValueError, match=r"empty"):
        cdiphase.phase(small.patterns, support=np.zeros((32, 32)), progress=False)


def test_files_raise_os_errors(tmp_path):
    with pytest.raises(OSError, match="nope.cxi"):
        cdiphase.read_cxi(tmp_path / "nope.cxi")
    with pytest.raises(OSError, match="missing.safetensors"):
        cdiphase.Model.load(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.cxi"
    junk.write_bytes(b"not an hdf5 file")
    with pytest.raises(OSError, match="junk.cxi"):
        cdiphase.read_cxi(junk)
    with pytest.raises(OSError):
        cdiphase.simulate(tmp_path / "no.pdb", count=1, size=32, progress=False)


# -- the GIL is released, Ctrl-C interrupts -------------------------------------------------

def test_a_second_thread_runs_during_phase(small):
    ticks = []
    stop = threading.Event()

    def count():
        while not stop.is_set():
            ticks.append(time.perf_counter())
            time.sleep(0.001)

    t = threading.Thread(target=count)
    t.start()
    try:
        t0 = time.perf_counter()
        r = cdiphase.phase(small.patterns, small.mask, schedule="2000*(5*HIO + 5*ER)",
                           starts=4, device="cpu", threads=1, progress=False)
        t1 = time.perf_counter()
    finally:
        stop.set()
        t.join()
    assert t1 - t0 > 0.3, "the phasing run must be long enough to measure"
    during = [x for x in ticks if t0 < x < t1]
    # with the GIL held the counter would not move at all while Rust computes; released,
    # it ticks about every millisecond (>= 10 leaves room for a loaded 2-core machine)
    assert len(during) >= 10, (len(during), t1 - t0)
    assert np.isfinite(r.final_fourier_error).all()


def _interrupt_after(seconds):
    timer = threading.Timer(seconds, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    return timer


@pytest.fixture(autouse=True)
def _python_handles_sigint():
    """Python's own Ctrl-C handler for the duration of a test. A process started in the
    background by a non-interactive shell (`cmd &`) inherits SIGINT ignored, and Python then
    installs no handler: a SIGINT would do nothing, and the Ctrl-C tests would test the
    launcher, not cdiphase."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, old)


@pytest.mark.parametrize("threads", [1, 2])
def test_ctrl_c_interrupts_phase_within_a_second(small, threads):
    timer = _interrupt_after(0.5)
    t0 = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        cdiphase.phase(small.patterns, small.mask, schedule=LONG, starts=4, device="cpu",
                       threads=threads, progress=False)
    elapsed = time.perf_counter() - t0
    timer.join()
    assert elapsed < 1.5, f"KeyboardInterrupt came {elapsed - 0.5:.2f} s after SIGINT"
    # nothing is left in a broken state: the next call works
    r = cdiphase.phase(small.patterns, small.mask, schedule="20*ER", starts=1, progress=False)
    assert np.isfinite(r.final_fourier_error).all()


def test_ctrl_c_interrupts_predict(paper_size):
    many = np.repeat(paper_size.patterns, 200, axis=0)  # 400 patterns, batches of 1
    model = cdiphase.Model.load()
    timer = _interrupt_after(0.5)
    t0 = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        model.predict(many, batch=1, device="cpu", threads=2, progress=False)
    elapsed = time.perf_counter() - t0
    timer.join()
    assert elapsed < 1.5, f"KeyboardInterrupt came {elapsed - 0.5:.2f} s after SIGINT"


# -- progress --------------------------------------------------------------------------------

class Sink:
    def __init__(self):
        self.total = None
        self.seen = []

    def set_total(self, total):
        self.total = total

    def __call__(self, done):
        self.seen.append(done)


def test_progress_reaches_the_total(small):
    sink = Sink()
    r = cdiphase.phase(small.patterns, small.mask, schedule="200*(5*HIO + 5*ER)", starts=2,
                       progress=sink)
    assert sink.total == 3 * 2 * r.iterations
    assert sink.seen == sorted(sink.seen) and sink.seen[-1] == sink.total


def test_tqdm_bar_is_used_when_installed(small, capsys):
    pytest.importorskip("tqdm")
    cdiphase.phase(small.patterns, schedule="300*(5*HIO + 5*ER)", starts=2, progress=True)
    assert "phase" in capsys.readouterr().err


def test_an_exception_in_the_progress_sink_stops_the_run(small):
    class Boom(Sink):
        def __call__(self, done):
            raise RuntimeError("stop here")

    t0 = time.perf_counter()
    with pytest.raises(RuntimeError, match="stop here"):
        cdiphase.phase(small.patterns, schedule=LONG, progress=Boom())
    assert time.perf_counter() - t0 < 2.0


# -- input conversion, metrics ---------------------------------------------------------------

def test_float64_and_strided_input_give_the_same_result(small):
    kw = dict(schedule="40*(5*HIO + 5*ER)", starts=2, seed=3, device="cpu", progress=False)
    a = cdiphase.phase(small.patterns, small.mask, **kw)
    wide = np.zeros((3, 32, 64), dtype=np.float64)
    wide[:, :, ::2] = small.patterns
    strided = wide[:, :, ::2]
    assert not strided.flags.c_contiguous
    b = cdiphase.phase(strided, small.mask.astype(bool), **kw)
    assert np.array_equal(a.objects, b.objects)
    one = cdiphase.phase(small.patterns[1], small.mask[0], **kw)
    assert one.objects.shape == (1, 32, 32)


def test_fourier_error_matches_what_phase_records(small):
    # a short run: errors of a few percent, far above float32 rounding
    r = cdiphase.phase(small.patterns, small.mask, schedule="5*ER", starts=2, progress=False)
    assert (r.final_fourier_error > 1e-2).all()
    e = cdiphase.fourier_error(r.objects, small.patterns, small.mask)
    np.testing.assert_allclose(e, r.final_fourier_error, rtol=1e-3)
    assert cdiphase.fourier_error(small.density[0], small.patterns[0], small.mask) < 1e-3


def test_align_and_prtf(small):
    x = small.density[0].astype(np.complex128)
    shifted = np.roll(x, (3, -2), axis=(0, 1)) * np.exp(1j * 0.7)
    aligned, info = cdiphase.align(x, shifted)
    assert info["shift"] == (-3.0, 2.0) and not info["twin"]
    assert abs(info["phase"] + 0.7) < 1e-9 and info["error"] < 1e-12
    np.testing.assert_allclose(aligned, x, atol=1e-12 * np.abs(x).max())
    twin = np.conj(np.roll(x[::-1, ::-1], (1, 1), axis=(0, 1)))
    assert cdiphase.align(x, twin)[1]["twin"]
    assert not cdiphase.align(x, twin, twin=False)[1]["twin"]
    # identical reconstructions up to the trivial ambiguities: PRTF 1 everywhere
    p = cdiphase.prtf(np.stack([x, shifted, twin]))
    np.testing.assert_allclose(p["prtf"], 1.0, atol=1e-9)
    assert not p["crossed"]
    # a random-phase third image lowers it
    rng = np.random.default_rng(0)
    noisy = np.fft.ifft2(np.abs(np.fft.fft2(x)) * np.exp(2j * np.pi * rng.random(x.shape)))
    assert cdiphase.prtf(np.stack([x, noisy]))["prtf"][5:].max() < 0.9


def test_supports_and_cxi_round_trip(small, tmp_path):
    s = cdiphase.support(small.patterns, small.mask)
    assert s.shape == small.patterns.shape and s.dtype == np.uint8 and s.any()
    t = cdiphase.support(small.density, method="nn", threshold=0.5)
    assert (t <= small.support).all()
    f = tmp_path / "x.cxi"
    cdiphase.write_cxi(f, patterns=small.patterns, mask=small.mask, supports=s)
    d = cdiphase.read_cxi(f)
    assert np.array_equal(d["patterns"], small.patterns)
    assert np.array_equal(d["supports"], s)


def test_docstrings_and_device():
    for f in (cdiphase.phase, cdiphase.simulate, cdiphase.Model.predict, cdiphase.evaluate,
              cdiphase.read_cxi, cdiphase.write_cxi, cdiphase.align, cdiphase.prtf,
              cdiphase.fourier_error, cdiphase.support, cdiphase.convert):
        assert f.__doc__ and len(f.__doc__) > 80, f.__name__
    assert "cpu" in cdiphase.describe_device("cpu").lower()
