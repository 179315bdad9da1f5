"""cdiphase from Python: simulate, predict a support with the bundled network, phase from
it, evaluate against the ground truth, and plot.

    pip install ./python matplotlib        # or: scripts/test.sh, which runs this file
    python examples/python_quickstart.py [OUTPUT.png]

Runs in a few seconds on two cores; run by the package's tests (python/tests).
"""

import sys

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import cdiphase  # noqa: E402

out = sys.argv[1] if len(sys.argv) > 1 else "python_quickstart.png"

# 1. four 128x128 patterns of synthetic protein-like particles (the bundled network's
#    input size), 1e7 photons each with Poisson noise, a small beamstop
sim = cdiphase.simulate(synthetic="compact,multidomain", count=4, size=128, photons=1e7,
                        noise="poisson", mask="beamstop:2", seed=7)
print(sim)

# 2. the bundled network's support estimate
model = cdiphase.Model.load()
pred = model.predict(sim.patterns, sim.mask, threshold=0.1)
print(model, "->", pred)

# 3. phase from the predicted support with the measured default recipe (HIO then ER,
#    shrinkwrap, positivity) and 4 random starts per pattern
res = cdiphase.phase(sim.patterns, sim.mask, support=pred.support, starts=4, seed=0)
print(res)

# 4. metrics against the ground truth (the numbers of `cdiphase evaluate`)
metrics = cdiphase.evaluate(sim, res)["inputs"][0]["per_pattern"]
for m in metrics:
    s = m["support"]
    print(f"pattern {m['index']}: support FP {s['false_positives']}, FN {s['false_negatives']}, "
          f"aligned density error {m['density']['error']:.3f}")
nn = cdiphase.evaluate(sim, pred)["inputs"][0]["per_pattern"]
print("network support FN per pattern:", [m["support"]["false_negatives"] for m in nn])

# 5. the figure: pattern, truth, predicted support, reconstruction
fig, ax = plt.subplots(len(sim), 4, figsize=(10, 2.6 * len(sim)))
for i in range(len(sim)):
    aligned, _ = cdiphase.align(sim.density[i], np.abs(res.objects[i]), fit_scale=True)
    panels = [
        (np.log10(np.maximum(sim.patterns[i], 1.0)), "log10 intensity"),
        (sim.density[i], "true density"),
        (pred.support[i], "network support"),
        (np.abs(aligned), f"phased (FFE {res.final_fourier_error[i]:.3f})"),
    ]
    for a, (img, title) in zip(ax[i], panels):
        a.imshow(img, cmap="magma")
        a.set_title(title, fontsize=8)
        a.axis("off")
fig.tight_layout()
fig.savefig(out, dpi=80)
print("wrote", out)
