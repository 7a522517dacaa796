"""The README's pictures, made from the example data (run from the repository root):

    python notebooks/make_readme_figures.py

Writes notebooks/figures/sleepstudy_plots.png: a caterpillar plot and a shrinkage plot of
sleepstudy's ``Reaction ~ Days + (Days | Subject)``.
"""

import matplotlib

matplotlib.use("Agg")

from pathlib import Path  # noqa: E402

import matplotlib.pyplot as plt  # noqa: E402

import jaxmlm  # noqa: E402
from jaxmlm import plot  # noqa: E402

m = jaxmlm.lmer("Reaction ~ Days + (Days | Subject)", jaxmlm.load_example("sleepstudy"))
fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.6))
plot.caterpillar(m, term="Days", ax=a)
plot.shrinkage(m, ax=b)
fig.tight_layout()
out = Path(__file__).parent / "figures" / "sleepstudy_plots.png"
fig.savefig(out, dpi=80)
print(out)
