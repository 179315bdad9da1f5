"""The spinn_names fixture's specification (tests/data/keras/spinn_names/), shared by
make_fixtures.py (which writes it) and check_fixtures.py (which re-checks it): the
default-name rule of `cdiphase convert --arch` (layers matched by order and shape when the
names differ), its files, sizes, seeds and the model builder. Its own module so that the
two scripts do not import each other."""
from __future__ import annotations

import spinn

# spinn_names/: the fixture of the default-name rule (cdiphase convert --arch matches by
# order when the names differ). name -> (fixture file, what it is)
NAMES_DIR = "spinn_names"
NAMES_SIZE, NAMES_WIDTH, NAMES_ARCH = 16, 1 / 16, "spinn:16:0.0625"
NAMES_PREP, NAMES_WSEED, NAMES_ISEED = "max", 104, 204
NAMES_FILES = {
    "tf2_fresh_weights.h5": "tf_keras (TF 2.x Keras) save_weights, legacy HDF5, in a fresh "
                            "process: default names conv2d, conv2d_1, ..., dense, dense_1, "
                            "conv2d_transpose, ... (the paper's training script)",
    "tf2_offset_weights.h5": "tf_keras save_weights after another model was built in the same "
                             "process: default names numbered on (conv2d_6, ...)",
    "k3_fresh.weights.h5": "Keras 3 save_weights in a fresh process: default names conv2d, "
                           "conv2d_1, ... (the issue's failing case)",
    "k3_offset.weights.h5": "Keras 3 save_weights after another model was built in the same "
                            "process: default names numbered on (conv2d_6, ...)",
    "k3_offset.h5": "Keras 3 model.save legacy HDF5 of the offset-named model (model_weights "
                    "with layer_names; also has model_config)",
    "named.weights.h5": "Keras 3 save_weights, explicit names unlike the preset's (enc1, "
                        "pool1, fc1, dec1, ...); architecture with those names: "
                        "named_config.json",
}


def build_names_model(K, names=None, name="spinn_names"):
    return spinn.build_spinn(K, input_size=NAMES_SIZE, width=NAMES_WIDTH, names=names,
                             name=name)


def custom_names():
    """Explicit layer names unlike the preset's: enc1.., pool1.., flat1, fc1.., dec1.."""
    short = {"input": "patterns", "conv2d": "enc", "max_pooling2d": "pool", "flatten": "flat",
             "dense": "fc", "reshape": "unflat", "conv2d_transpose": "dec",
             "up_sampling2d": "up"}
    counts: dict[str, int] = {}

    def nm(kind: str) -> str:
        counts[kind] = counts.get(kind, 0) + 1
        return f"{short[kind]}{counts[kind]}"
    return nm
