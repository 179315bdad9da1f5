"""The paper's encoder-decoder (SPInn, DESIGN.md section 4) and its family, in Keras.

Every builder takes the Keras module to build with as its first argument, so the same
architecture (with the same layer names and the same weight order) can be built with
Keras 3 (`import keras`) and with Keras 2 (`import tf_keras`), which is how the fixtures
get genuine Keras-2 legacy .h5 files with `kernel:0` weight names and the same weights.

    import keras
    from spinn import build_spinn
    model = build_spinn(keras)            # the paper's network, 19,721,217 parameters
    assert model.count_params() == SPINN_PARAMS

Builders:
    build_spinn(K, input_size=128, width=1.0, bottleneck=None, kernel=3)
        The paper's topology; `width` scales every channel count (64/128/256 -> 64w/...),
        the bottleneck Dense defaults to 128*width, the second Dense to the size of the
        encoder's output (input_size/8)^2 * 256*width.
    build_unet(K, input_shape=(128,128,1), base=16, depth=2, dropout=0.2, ...)
        A small U-Net-like network (Concatenate skips, Dropout, UpSampling2D or
        Conv2DTranspose stride 2 for upsampling, tanh output).
    build_strided(K, input_shape=(33,28,1))
        A fixture network exercising stride 2 'same'/'valid' convolutions and transposed
        convolutions, a 5x5 kernel, odd and non-square sizes, max pooling with a floor,
        sigmoid/linear/tanh activations and a 2-channel output.

Layer names are explicit and deterministic ("conv2d_1", ...), independent of how many
models were built before in the same process; build_spinn(..., names=keras_default_names)
leaves them to Keras instead (the paper's script), for the default-name fixtures.
"""

from __future__ import annotations

# The paper's network: count checked by tools/keras/make_fixtures.py and full_parity.py.
SPINN_PARAMS = 19_721_217


class _Namer:
    """Deterministic layer names: <kind>_<n>, n counting from 1 per kind."""

    def __init__(self):
        self.counts: dict[str, int] = {}

    def __call__(self, kind: str) -> str:
        n = self.counts.get(kind, 0) + 1
        self.counts[kind] = n
        return f"{kind}_{n}"


def _ch(c: int, width: float) -> int:
    return max(1, int(round(c * width)))


def keras_default_names(kind: str) -> None:
    """A `names` argument for build_spinn: pass no layer name, so Keras picks its
    default ("conv2d", "conv2d_1", ... in a fresh process; numbered on from whatever the
    process built before), as the paper's training script does."""
    return None


def build_spinn(K, input_size: int = 128, width: float = 1.0, bottleneck: int | None = None,
                kernel: int = 3, name: str | None = "spinn", names=None,
                out_dtype: str | None = None):
    """The paper's encoder-decoder (DESIGN.md section 4), optionally width-scaled.

    Input (S, S, 1), channels-last, 'same' padding, stride 1, ReLU unless noted:
    Conv2D 64 x2, MaxPool 2 | Conv2D 128 x2, MaxPool 2 | Conv2D 256 x2, MaxPool 2 |
    Flatten | Dense 128 | Dense (S/8)^2*256 | Reshape (S/8, S/8, 256) |
    Conv2DTranspose 256 x2, UpSampling2D 2 | Conv2DTranspose 128 x2, UpSampling2D 2 |
    Conv2DTranspose 64 x2, UpSampling2D 2 | Conv2DTranspose 1, tanh.
    Channel counts are multiplied by `width`; S must be a multiple of 8.
    `names`: kind ("conv2d", "input", ...) -> layer name, called once per layer in model
    order; default: the deterministic "<kind>_<n>" names (input "input") that the
    `--arch spinn` preset of cdiphase uses; `keras_default_names` leaves naming to Keras.
    `out_dtype`: the dtype policy of the last layer only (None: the global policy); under
    mixed precision "float32" keeps the tanh output and the loss in float32, as Keras
    advises. The layers and weights are the same either way.
    """
    if input_size % 8 != 0:
        raise ValueError(f"input_size must be a multiple of 8, got {input_size}")
    L = K.layers
    nm = names if names is not None else _Namer()
    c1, c2, c3 = _ch(64, width), _ch(128, width), _ch(256, width)
    bott = bottleneck if bottleneck is not None else _ch(128, width)
    s8 = input_size // 8
    k = (kernel, kernel)

    inp = K.Input(shape=(input_size, input_size, 1),
                  name="input" if names is None else nm("input"))
    x = inp
    for c in (c1, c2, c3):
        for _ in range(2):
            x = L.Conv2D(c, k, padding="same", activation="relu", name=nm("conv2d"))(x)
        x = L.MaxPooling2D((2, 2), name=nm("max_pooling2d"))(x)
    x = L.Flatten(name=nm("flatten"))(x)
    x = L.Dense(bott, activation="relu", name=nm("dense"))(x)
    x = L.Dense(s8 * s8 * c3, activation="relu", name=nm("dense"))(x)
    x = L.Reshape((s8, s8, c3), name=nm("reshape"))(x)
    for c in (c3, c2, c1):
        for _ in range(2):
            x = L.Conv2DTranspose(c, k, padding="same", activation="relu",
                                  name=nm("conv2d_transpose"))(x)
        x = L.UpSampling2D((2, 2), name=nm("up_sampling2d"))(x)
    out_kw = {} if out_dtype is None else {"dtype": out_dtype}
    x = L.Conv2DTranspose(1, k, padding="same", activation="tanh",
                          name=nm("conv2d_transpose"), **out_kw)(x)
    return K.Model(inp, x, name=name)


def build_unet(K, input_shape=(128, 128, 1), base: int = 16, depth: int = 2,
               dropout: float = 0.2, kernel: int = 3, transpose_up_levels: tuple = (0,),
               out_channels: int = 1, out_activation: str = "tanh", name: str = "unet"):
    """A U-Net-like encoder-decoder with Concatenate skips and Dropout.

    Level l (0..depth-1) has base*2^l channels: two Conv2D (ReLU, 'same'), a skip taken,
    then Dropout (l > 0) and MaxPool 2. Bottleneck: two Conv2D with base*2^depth channels,
    Dropout. Going up, level l upsamples with Conv2DTranspose stride 2 (k x k, 'same',
    ReLU) if l is in `transpose_up_levels`, else UpSampling2D 2 (nearest), then
    Concatenate([upsampled, skip]) on the channel axis and two Conv2D. Output: Conv2D 1x1
    with `out_channels` channels and `out_activation`. H and W must divide by 2^depth.
    """
    h, w = input_shape[0], input_shape[1]
    if h % (1 << depth) or w % (1 << depth):
        raise ValueError(f"input {h}x{w} must be divisible by 2^depth = {1 << depth}")
    L = K.layers
    nm = _Namer()
    k = (kernel, kernel)
    inp = K.Input(shape=tuple(input_shape), name="input")
    x = inp
    skips = []
    for lev in range(depth):
        c = base << lev
        x = L.Conv2D(c, k, padding="same", activation="relu", name=nm("conv2d"))(x)
        x = L.Conv2D(c, k, padding="same", activation="relu", name=nm("conv2d"))(x)
        skips.append(x)
        if lev > 0 and dropout > 0:
            x = L.Dropout(dropout, name=nm("dropout"))(x)
        x = L.MaxPooling2D((2, 2), name=nm("max_pooling2d"))(x)
    c = base << depth
    x = L.Conv2D(c, k, padding="same", activation="relu", name=nm("conv2d"))(x)
    x = L.Conv2D(c, k, padding="same", activation="relu", name=nm("conv2d"))(x)
    if dropout > 0:
        x = L.Dropout(dropout, name=nm("dropout"))(x)
    for lev in reversed(range(depth)):
        c = base << lev
        if lev in transpose_up_levels:
            x = L.Conv2DTranspose(c, k, strides=(2, 2), padding="same", activation="relu",
                                  name=nm("conv2d_transpose"))(x)
        else:
            x = L.UpSampling2D((2, 2), name=nm("up_sampling2d"))(x)
        x = L.Concatenate(axis=-1, name=nm("concatenate"))([x, skips[lev]])
        x = L.Conv2D(c, k, padding="same", activation="relu", name=nm("conv2d"))(x)
        x = L.Conv2D(c, k, padding="same", activation="relu", name=nm("conv2d"))(x)
    x = L.Conv2D(out_channels, (1, 1), padding="same", activation=out_activation,
                 name=nm("conv2d"))(x)
    return K.Model(inp, x, name=name)


def build_strided(K, input_shape=(33, 28, 1), name: str = "strided"):
    """A fixture network for the less common layer options (sizes for 33x28 input):

    Conv2D 8, 5x5, stride 2, 'same', relu        -> 17x14x8  (pad H 2+2, W 1+2: asymmetric)
    MaxPooling2D 2                               -> 8x7x8    (floor)
    Conv2D 12, 3x3, 'valid', sigmoid             -> 6x5x12
    Conv2DTranspose 12, 3x3, stride 2, 'same', linear -> 12x10x12
    Conv2D 16, 3x3, stride 2, 'valid', relu      -> 5x4x16
    Conv2DTranspose 8, 5x5, stride 2, 'valid', relu   -> 13x11x8
    UpSampling2D 2                               -> 26x22x8
    Conv2DTranspose 6, 5x5, stride 1, 'same', tanh    -> 26x22x6
    Conv2DTranspose 4, 3x3, stride 1, 'valid', relu   -> 28x24x4
    Conv2D 2, 1x1, sigmoid                       -> 28x24x2
    """
    L = K.layers
    nm = _Namer()
    inp = K.Input(shape=tuple(input_shape), name="input")
    x = L.Conv2D(8, (5, 5), strides=(2, 2), padding="same", activation="relu",
                 name=nm("conv2d"))(inp)
    x = L.MaxPooling2D((2, 2), name=nm("max_pooling2d"))(x)
    x = L.Conv2D(12, (3, 3), padding="valid", activation="sigmoid", name=nm("conv2d"))(x)
    x = L.Conv2DTranspose(12, (3, 3), strides=(2, 2), padding="same", activation="linear",
                          name=nm("conv2d_transpose"))(x)
    x = L.Conv2D(16, (3, 3), strides=(2, 2), padding="valid", activation="relu",
                 name=nm("conv2d"))(x)
    x = L.Conv2DTranspose(8, (5, 5), strides=(2, 2), padding="valid", activation="relu",
                          name=nm("conv2d_transpose"))(x)
    x = L.UpSampling2D((2, 2), name=nm("up_sampling2d"))(x)
    x = L.Conv2DTranspose(6, (5, 5), padding="same", activation="tanh",
                          name=nm("conv2d_transpose"))(x)
    x = L.Conv2DTranspose(4, (3, 3), padding="valid", activation="relu",
                          name=nm("conv2d_transpose"))(x)
    x = L.Conv2D(2, (1, 1), activation="sigmoid", name=nm("conv2d"))(x)
    return K.Model(inp, x, name=name)


# --- weights and preprocessing shared by the fixture, parity and benchmark scripts ---

def random_weights(model, seed: int, bias_scale: float = 0.05, gain: float = 1.0):
    """Deterministic random weights in get_weights() order, numpy only (so Keras 2 and 3
    builds of the same architecture get identical values).

    Kernels: He-normal (std = gain*sqrt(2/fan_in)) so ReLU stacks keep their scale; fan_in
    is kh*kw*in for Conv2D ((kh,kw,in,out)), kh*kw*in for Conv2DTranspose ((kh,kw,out,in)),
    in for Dense ((in,out)). Biases: uniform in [-bias_scale, bias_scale], never zero.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    out = []
    for layer in model.layers:
        ws = layer.get_weights()
        if not ws:
            continue
        kind = type(layer).__name__
        for w in ws:
            shape = w.shape
            if len(shape) == 4:  # conv kernel
                kh, kw = shape[0], shape[1]
                fin = kh * kw * (shape[3] if kind == "Conv2DTranspose" else shape[2])
                out.append((rng.standard_normal(shape) * gain * np.sqrt(2.0 / fin))
                           .astype(np.float32))
            elif len(shape) == 2:  # dense kernel
                out.append((rng.standard_normal(shape) * gain * np.sqrt(2.0 / shape[0]))
                           .astype(np.float32))
            elif len(shape) == 1:  # bias
                b = rng.uniform(-bias_scale, bias_scale, shape)
                b = np.where(np.abs(b) < 1e-4, 1e-4, b)
                out.append(b.astype(np.float32))
            else:
                raise ValueError(f"layer {layer.name}: unexpected weight shape {shape}")
    return out


def diffraction_patterns(n: int, h: int, w: int, seed: int):
    """(n,h,w) float32 diffraction-like intensities: |FFT|^2 of random compact blobs
    (sums of Gaussians inside a disc of about a quarter of the field), fftshift-ed so the
    zero frequency is at the centre, plus a small Poisson-like floor. Nonnegative, with a
    dynamic range of many decades."""
    import numpy as np

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    out = np.empty((n, h, w), np.float32)
    for i in range(n):
        obj = np.zeros((h, w))
        for _ in range(int(rng.integers(4, 9))):
            cy = h / 2 + rng.normal(0, h / 10)
            cx = w / 2 + rng.normal(0, w / 10)
            sy, sx = rng.uniform(0.8, 2.5, 2) * max(1.0, min(h, w) / 32)
            obj += rng.uniform(0.5, 1.5) * np.exp(-((yy - cy) ** 2 / (2 * sy ** 2)
                                                    + (xx - cx) ** 2 / (2 * sx ** 2)))
        inten = np.abs(np.fft.fftshift(np.fft.fft2(obj))) ** 2
        inten *= 1e6 / inten.max()
        inten += rng.poisson(0.5, (h, w))
        out[i] = inten.astype(np.float32)
    return out


def preprocess(x, mode: str):
    """The network's input preprocessing, per pattern (x: (N,H,W), any float dtype):
    'max': x / max(x); 'log1p-max': y = log1p(x), y / max(y). Computed in float64, returned
    as float32 with a trailing channel axis: (N,H,W,1)."""
    import numpy as np

    x = np.asarray(x, np.float64)
    if mode == "max":
        y = x
    elif mode == "log1p-max":
        y = np.log1p(x)
    else:
        raise ValueError(f"unknown preprocessing {mode!r} (max or log1p-max)")
    m = y.reshape(y.shape[0], -1).max(axis=1)
    if np.any(m <= 0):
        raise ValueError("a pattern has no positive value: cannot divide by its maximum")
    y = y / m[:, None, None]
    return y.astype(np.float32)[..., None]


def calibrate_output(model, x, target_std: float = 1.0):
    """Rescale the last layer so its pre-activation has, per output channel, mean equal to
    its original random bias and standard deviation `target_std` over the inputs x
    (N,H,W,C): the random networks' outputs then depend visibly on the input without
    saturating tanh/sigmoid. Kernel scaled by target_std / std(kernel term); bias set to
    b - f * mean(kernel term). Deterministic given the weights and x. Returns the factor."""
    import numpy as np

    last = model.layers[-1]
    K = _keras_of(model)
    feats = K.Model(model.input, last.input)
    h = np.asarray(feats(x, training=False), np.float32)
    kernel, bias = last.get_weights()
    act = last.activation
    last.activation = K.activations.get("linear")
    try:
        z = np.asarray(last(h), np.float64) - bias.astype(np.float64)
    finally:
        last.activation = act
    s = float(z.std())
    if not np.isfinite(s) or s <= 0:
        raise RuntimeError(f"{last.name}: pre-activation std {s}, cannot calibrate")
    f = target_std / s
    mean = z.reshape(-1, z.shape[-1]).mean(axis=0)
    last.set_weights([(kernel * f).astype(np.float32), (bias - f * mean).astype(np.float32)])
    return f


def _keras_of(model):
    """The Keras module (keras or tf_keras) a model was built with."""
    mod = type(model).__module__
    if mod.startswith("tf_keras"):
        import tf_keras

        return tf_keras
    import keras

    return keras
