# %% [markdown]
# # Random intercepts and random slopes, read the way Stata prints them
#
# Course note 004 (lecture 7) fits linear mixed models with Stata's `mixed` and reads them off
# Stata's output. It has two examples:
#
# 1. **Growth curves.** Children weighed up to four times between six weeks and 27 months; the
#    mean weight follows a broken line (a linear spline with a knot at one year) that may differ
#    between boys and girls, and each child gets a random intercept.
# 2. **Inner-London schools.** The GCSE exam score at 16 against a reading test taken at 11, in
#    65 schools; each school gets its own intercept *and* its own slope, correlated.
#
# Every model here is fitted with `jaxmlm.lmer` (lme4's formula language) and printed with
# `m.summary(style="stata")`, which lays the fit out as Stata's `mixed` does: the header with
# the group sizes and the Wald test, the fixed-effects table with z-tests, the random-effects
# parameters with standard errors and intervals, and the likelihood-ratio test against the
# ordinary regression. The translation is
#
# | Stata | jaxmlm |
# |---|---|
# | `mixed y x \|\| id: , var` (ML, Stata's default) | `jaxmlm.lmer("y ~ x + (1 \| id)", d, REML=False).summary(style="stata")` |
# | `mixed y x \|\| school: x, cov(uns) reml stddev` | `jaxmlm.lmer("y ~ x + (x \| school)", d).summary(style="stata", stddev=True)` |
#
# The note's residual-correlation models (exchangeable and AR(1) errors within a child, and its
# autocorrelation table) come when jaxmlm gains residual structures; they are skipped here.

# %%
import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from scipy import stats

import jaxmlm
from jaxmlm import plot

# %% [markdown]
# ## Part 1 — growth of children's weights
#
# ### The data: simulated with the note's design
#
# The note's data (Asian children's weights, a Stata file) are not public. We therefore simulate
# a data set **of the same design**, seeded so that the notebook gives the same numbers every
# time: 68 children (half of them girls), weighed at about 6 weeks, 8 months, 12 months and 27
# months, with some visits missed so that there are 189 weighings — between 1 and 4 per child,
# 2.8 on average, exactly as in the note's header. The weights are drawn from the note's own
# fitted model (its fixed effects, its child variance 0.716 and residual variance 0.573), plus
# a modest child-specific growth rate (SD 0.6 kg per year) so that a random-slope model has
# something to find. A public growth data set such as nlme's `Oxboys` (heights of 26 boys at 9
# occasions) would not do: it has no girls and no missed visits, and the lesson is the spline
# by gender on unbalanced visits.
#
# Because the data are simulated, our estimates cannot equal the note's to the digit; what we can
# check is that the note's values (the truth of the simulation) lie where the fitted model says
# they should — within a few standard errors of our estimates.

# %%
rng = np.random.default_rng(2004)
n_child = 68
visits = np.array([6 / 52, 8 / 12, 1.0, 27 / 12])  # years: 6 weeks, 8, 12 and 27 months
n_visits = np.repeat([4, 3, 2, 1], [25, 16, 14, 13])  # 189 weighings in all
rng.shuffle(n_visits)
girl = rng.permutation(np.repeat([0, 1], n_child // 2))

# the note's fitted random-intercept model (its printed estimates) is the truth here
beta = {"_cons": 10.27181, "age_c": 6.466099, "age_sp": -4.5202, "girl": -0.9660133,
        "age_c_girl": -0.7398512, "age_sp_girl": 0.8015376}
sd_child, sd_slope, sd_resid = math.sqrt(0.7161207), 0.6, math.sqrt(0.5727228)

rows = []
for i in range(n_child):
    which = np.sort(rng.choice(4, size=n_visits[i], replace=False))
    b0, b1 = rng.normal(0, sd_child), rng.normal(0, sd_slope)
    for v in which:
        age = visits[v] + rng.normal(0, 0.02)  # visits a little early or late
        rows.append((i + 1, girl[i], age, v + 1, b0, b1))
growth = pd.DataFrame(rows, columns=["id", "girl", "age", "visit", "b0", "b1"])
growth["age_c"] = growth["age"] - 1  # age centred at one year
growth["age_sp"] = np.maximum(growth["age_c"], 0)  # the spline: extra slope after the first birthday
growth["age_c_girl"] = growth["age_c"] * growth["girl"]
growth["age_sp_girl"] = growth["age_sp"] * growth["girl"]
mean = (beta["_cons"] + beta["age_c"] * growth.age_c + beta["age_sp"] * growth.age_sp + beta["girl"] * growth.girl
        + beta["age_c_girl"] * growth.age_c_girl + beta["age_sp_girl"] * growth.age_sp_girl)
growth["weight"] = mean + growth.b0 + growth.b1 * growth.age_c + rng.normal(0, sd_resid, len(growth))
growth = growth.drop(columns=["b0", "b1"])
per_child = growth.groupby("id").size()
print(len(growth), "weighings of", growth.id.nunique(), "children;", "per child: min", per_child.min(),
      "mean", round(per_child.mean(), 1), "max", per_child.max())
growth.head()

# %%
# the note's header: 189 observations, 68 groups, 1 / 2.8 / 4 observations per group
assert len(growth) == 189 and growth.id.nunique() == 68
assert per_child.min() == 1 and abs(per_child.mean() - 2.8) < 0.05 and per_child.max() == 4

# %% [markdown]
# The observed growth, one line per child, by gender: fast growth in the first year, slower
# afterwards — the reason for the knot at one year.

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
for g, ax in zip([0, 1], axes):
    for _, child in growth[growth.girl == g].groupby("id"):
        ax.plot(child.age, child.weight, "-o", ms=2.5, lw=0.8, alpha=0.6)
    ax.set_title("girls" if g else "boys")
    ax.set_xlabel("age (years)")
axes[0].set_ylabel("weight (kg)")
fig.tight_layout()

# %% [markdown]
# ### The random-intercept model
#
# With age centred at one year, $a_{ij} = \text{age}_{ij} - 1$, and the spline term
# $s_{ij} = \max(a_{ij}, 0)$, child $i$'s weight at visit $j$ is
#
# $$y_{ij} = \beta_0 + \beta_1 a_{ij} + \beta_2 s_{ij} + \beta_3 \text{girl}_i + \beta_4 a_{ij}\text{girl}_i
#   + \beta_5 s_{ij}\text{girl}_i + b_i + \varepsilon_{ij},\qquad b_i \sim N(0, \tau^2),\ \varepsilon_{ij} \sim N(0, \sigma^2).$$
#
# $\beta_1$ is a boy's growth rate before his first birthday (kg per year), $\beta_1 + \beta_2$ after
# it; $\beta_0$ is a boy's mean weight at one year; the girl terms shift each of these. The child
# effect $b_i$ moves the whole curve of child $i$ up or down. Stata's
# `mixed weight age_c age_sp girl age_c_girl age_sp_girl || id: , var` fits this by maximum
# likelihood (Stata's default), so we use `REML=False`.

# %%
m_int = jaxmlm.lmer("weight ~ age_c + age_sp + girl + age_c_girl + age_sp_girl + (1 | id)", growth, REML=False)
print(m_int.summary(style="stata"))

# %% [markdown]
# Reading the output as Stata users do:
#
# - the **header**: 189 weighings of 68 children, 1 to 4 per child; the Wald $\chi^2(5)$ tests
#   that all five slopes are zero, $W = \hat\beta^\top \hat V^{-1} \hat\beta$ over the
#   coefficients other than `_cons`;
# - the **fixed effects**: each coefficient with $z = \hat\beta/\text{se}$ and a normal 95%
#   interval. They describe the *population-mean* growth curve;
# - the **random-effects parameters**: `var(_cons)`, the variance $\tau^2$ of the children's
#   intercepts, and `var(Residual)`, $\sigma^2$. Their intervals are not $\hat v \pm 1.96\,\text{se}$:
#   Stata computes them on the log-SD scale and transforms back, which keeps them positive and
#   makes them asymmetric;
# - the **LR test vs. linear regression**: the model against the same regression without the
#   child effect.
#
# The note's table comes from the real children; ours from the simulation of them. The note's
# coefficients were the truth of the simulation, so each should lie within a few of our standard
# errors of our estimate:

# %%
fe, se = m_int.fixef, m_int.se
names = {"(Intercept)": "_cons"}
compare = pd.DataFrame({"note (real data)": [beta[names.get(k, k)] for k in fe.index],
                        "simulated data": fe.to_numpy(), "Std. Err.": se.to_numpy()}, index=fe.index)
compare["z of the difference"] = (compare["simulated data"] - compare["note (real data)"]) / compare["Std. Err."]
print(compare.round(4))
assert (compare["z of the difference"].abs() < 3).all()

# %% [markdown]
# The numbers in the note's table hang together by Stata's formulas, which we can check on its
# printed values alone: $z = 6.466099 / 0.2687824 = 24.06$; the interval of `age_c` is
# $6.466099 \mp 1.96 \times 0.2687824$; and the interval of `var(_cons)` is
# $\hat v\,\exp(\mp 1.96 \cdot \text{se}/\hat v)$ — the interval of the SD on the log scale,
# squared, because $\text{se}(\log \text{sd}) = \text{se}(v) / (2v)$.

# %%
z975 = stats.norm.ppf(0.975)
assert abs(6.466099 / 0.2687824 - 24.06) < 5e-3
assert abs(6.466099 - z975 * 0.2687824 - 5.939295) < 5e-7 and abs(6.466099 + z975 * 0.2687824 - 6.992903) < 5e-7
v, s = 0.7161207, 0.1608949  # the note's var(_cons) and its Std. Err.
assert abs(v * math.exp(-z975 * s / v) - 0.4610435) < 5e-7 and abs(v * math.exp(z975 * s / v) - 1.112322) < 5e-6
v, s = 0.5727228, 0.0730425  # var(Residual)
assert abs(v * math.exp(-z975 * s / v) - 0.4460526) < 5e-7 and abs(v * math.exp(z975 * s / v) - 0.7353648) < 5e-7
# the same formulas in jaxmlm: variance_components() gives these intervals for our fit
vc = m_int.variance_components()
r = vc.loc["var_(Intercept)|id"]
assert abs(r["lower"] - r["Estimate"] * math.exp(-z975 * r["Std. Error"] / r["Estimate"])) < 1e-9
vc[["Estimate", "Std. Error", "lower", "upper"]]

# %% [markdown]
# ### How alike are two weighings of the same child?
#
# With a random intercept only, two weighings of the same child share $b_i$, so
# $\text{Cov}(y_{ij}, y_{ik}) = \tau^2$ and their correlation is $\tau^2 / (\tau^2 + \sigma^2)$, the
# same for any two visits (an exchangeable correlation). It is also the share of the variance in
# weight, around the mean curve, that lies between children. The note: $0.72 / (0.72 + 0.57) = 0.56$.

# %%
icc_note = 0.7161207 / (0.7161207 + 0.5727228)
assert abs(icc_note - 0.56) < 5e-3
tau2 = m_int.varcorr.set_index("grp").loc["id", "vcov"]
icc_sim = tau2 / (tau2 + m_int.sigma**2)
print(f"note: {icc_note:.2f}   simulated data: {icc_sim:.2f}   (jaxmlm's icc(): {m_int.icc().loc['id', 'ICC']:.2f})")
assert abs(icc_sim - m_int.icc().loc["id", "ICC"]) < 1e-12

# %% [markdown]
# ### Is the child effect needed? The LR test against the linear regression
#
# The null hypothesis $\tau^2 = 0$ lies on the edge of the parameter space (a variance cannot be
# negative), so twice the log-likelihood ratio is not $\chi^2_1$ under the null but a 50:50 mixture
# of $\chi^2_0$ (a point mass at 0) and $\chi^2_1$ — Stata's `chibar2(01)` — and its p-value is half
# the $\chi^2_1$ one. The note finds $\bar\chi^2 = 56.33$, p < 0.0001, for the real children.

# %%
lr = m_int.lrt_vs_ols()
print(lr)
assert lr.distribution == "chibar2(01)" and lr.p_value < 1e-4
assert abs(lr.p_value - 0.5 * stats.chi2.sf(lr.statistic, 1)) < 1e-15
# the note's statistic with the same formula: p = P(chi2_1 > 56.33) / 2, printed 0.0000
assert 0.5 * stats.chi2.sf(56.33, 1) < 5e-5

# %% [markdown]
# ### The same model written as a correlation structure
#
# The note's summary says that with independent within-child residuals the random-intercept model
# *is* a marginal model with an exchangeable correlation: every pair of a child's weighings has
# correlation $\tau^2/(\tau^2+\sigma^2)$. nlme writes that marginal model as `gls` with
# `corCompSymm`, and so does jaxmlm: no random effect, and one correlation $\rho$ shared by all
# pairs of rows of a child. Its maximum likelihood is the random-intercept model's, and its $\rho$ is
# the intraclass correlation above. The two are the same model whenever $\rho \ge 0$.

# %%
m_cs = jaxmlm.gls("weight ~ age_c + age_sp + girl + age_c_girl + age_sp_girl", growth,
                  correlation=jaxmlm.corCompSymm(form="~ 1 | id"), REML=False)
print(m_cs.summary())
assert abs(m_cs.loglik - m_int.loglik) < 1e-6
assert abs(m_cs.correlation_params["Rho"] - icc_sim) < 1e-5
assert np.allclose(m_cs.fixef.to_numpy(), m_int.fixef.to_numpy(), atol=1e-5)

# %% [markdown]
# ### Are successive weighings more alike? AR(1) residuals
#
# The note inspects an autocorrelation plot of the residuals by visit. A model can ask the same
# question. On top of the child's intercept, let the residuals of visits $j$ and $k$ of a child
# have correlation $\phi^{|j-k|}$: AR(1) in the visit number. That is nlme's
# `corAR1(form = ~ visit | id)` and Stata's `residuals(ar 1, t(visit))`. A child who missed a visit
# simply has a gap, and the correlation across the gap is $\phi^2$.
#
# The data here were simulated with independent residuals, but also with a random slope: each
# child grows at its own rate. The random-intercept model leaves that out, so what it calls
# residuals share the child's slope. Those of neighbouring visits are alike and those far apart
# less so, and AR(1) picks that up as a positive $\phi$. The likelihood-ratio test against the
# random-intercept model (both ML fits, with the same fixed effects) asks whether $\phi$ is needed.
# The next section models the cause directly.

# %%
m_ar1 = jaxmlm.lmer("weight ~ age_c + age_sp + girl + age_c_girl + age_sp_girl + (1 | id)", growth,
                    correlation=jaxmlm.corAR1(form="~ visit | id"), REML=False)
print(m_ar1.correlation_params)
ar_test = jaxmlm.anova(m_int, m_ar1, names=["intercept", "intercept + AR(1)"])
print(ar_test)
phi = m_ar1.correlation_params["Phi"]
assert 0 < phi < 0.6 and m_ar1.loglik >= m_int.loglik - 1e-6
assert ar_test["Df"].iloc[1] == 1 and abs(ar_test["Chisq"].iloc[1] - 2 * (m_ar1.loglik - m_int.loglik)) < 1e-9
# the estimated residual correlation of a child seen at all four visits (rows and columns: its rows in the data)
full = growth.groupby("id").size().idxmax()
print(m_ar1.residual_cor(full).round(3))

# %% [markdown]
# ### A random slope: children also grow at their own rates
#
# Adding `age_c` to the random part, `(1 + age_c | id)` — Stata's `|| id: age_c, cov(uns)` — gives
# each child a growth rate of its own around the mean. (The simulated children do differ in rate;
# the note's growth example stops at the random intercept, and its school example below has the
# random slopes.) The two models differ by a variance and a covariance; their LR test is again
# on the boundary, so the $\chi^2_2$ p-value is conservative.

# %%
m_slope = jaxmlm.lmer("weight ~ age_c + age_sp + girl + age_c_girl + age_sp_girl + (1 + age_c | id)", growth,
                      REML=False)
print(m_slope.summary(style="stata"))
lrt = jaxmlm.anova(m_int, m_slope)
print(lrt)
assert lrt["Df"].iloc[1] == 2 and lrt["Pr(>Chisq)"].iloc[1] < 0.05
# the simulation's truth for the slope SD (0.6 kg/year) lies inside the fitted interval
sd_row = m_slope.variance_components().loc["sd_age_c|id"]
assert sd_row["lower"] < 0.6 < sd_row["upper"]

# %% [markdown]
# ### Predicted mean growth and the children around it
#
# The fixed effects give the **population-mean** curve of boys and of girls (the predictions with
# every random effect at zero, `re_form="~0"`); adding each child's predicted random effects gives
# the child's own curve. Conditional modes shrink towards zero — more for children weighed once or
# twice — so the children's curves fan out less than their raw data did.

# %%
grid = pd.DataFrame({"age": np.linspace(visits[0] - 0.05, visits[-1] + 0.05, 60)})
grid["age_c"] = grid.age - 1
grid["age_sp"] = np.maximum(grid.age_c, 0)
fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
for g, ax in zip([0, 1], axes):
    kids = growth[growth.girl == g]
    for cid in kids.id.unique():
        newd = grid.assign(girl=g, id=cid, age_c_girl=grid.age_c * g, age_sp_girl=grid.age_sp * g)
        ax.plot(newd.age, m_slope.predict(newd), color="C0", alpha=0.3, lw=0.8)
    newd = grid.assign(girl=g, age_c_girl=grid.age_c * g, age_sp_girl=grid.age_sp * g, id=0)
    ax.plot(newd.age, m_slope.predict(newd, re_form="~0"), color="k", lw=2.5, label="population mean")
    ax.set_title("girls" if g else "boys")
    ax.set_xlabel("age (years)")
    ax.legend(fontsize="small")
axes[0].set_ylabel("predicted weight (kg)")
fig.tight_layout()

# %% [markdown]
# The children's predicted intercepts (weight at one year, relative to the mean curve) with their
# conditional 95% intervals: the wide ones belong to children with few weighings.

# %%
ax = plot.caterpillar(m_slope, term="(Intercept)")
ax.figure.set_size_inches(6, 7)

# %% [markdown]
# ## Part 2 — the Inner-London schools
#
# `jaxmlm.load_example("Exam")` is mlmRev's copy of these data: 4,059 pupils in 65 schools, with
# `normexam`, the GCSE score, and `standLRT`, the London Reading Test score at 11, both on a
# standardized scale. The note uses the raw scores (`gcse`, `lrt`); the pupils and schools are the
# same, as the school sizes show — the note's summary of pupils per school is reproduced to every
# printed digit:

# %%
exam = jaxmlm.load_example("Exam")
size = exam.groupby("school", observed=True).size()
print(f"schools {len(size)}, pupils per school: mean {size.mean():.5f}, SD {size.std():.5f}, "
      f"min {size.min()}, max {size.max()}")
assert len(size) == 65 and size.min() == 2 and size.max() == 198
assert abs(size.mean() - 62.44615) < 5e-6 and abs(size.std() - 29.74844) < 5e-6

# %% [markdown]
# ### Exploring: one regression line per school
#
# Two schools' pupils with their own least-squares lines, and then every school's OLS intercept and
# slope (`jaxmlm.lmList`, for schools with at least 5 pupils): the lines differ in both, and schools
# with higher intercepts tend to have steeper slopes.

# %%
exam["lrt_groupc"] = exam["standLRT"] - exam.groupby("school", observed=True)["standLRT"].transform("mean")
ols = jaxmlm.lmList("normexam ~ lrt_groupc | school", exam)
fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
for school, ax in zip(["1", "2"], axes[:2]):
    s = exam[exam.school == school]
    ax.scatter(s.lrt_groupc, s.normexam, s=10)
    xs = np.linspace(s.lrt_groupc.min(), s.lrt_groupc.max(), 2)
    ax.plot(xs, ols.loc[school, "(Intercept)"] + ols.loc[school, "lrt_groupc"] * xs, color="C1")
    ax.set_title(f"school {school}")
    ax.set_xlabel("reading score, centred at the school mean")
axes[0].set_ylabel("exam score (normexam)")
big = ols.loc[size[size >= 5].index.astype(str)]
axes[2].scatter(big["(Intercept)"], big["lrt_groupc"], s=12)
axes[2].set_xlabel("school's OLS intercept")
axes[2].set_ylabel("school's OLS slope")
axes[2].set_title(f"{len(big)} schools with at least 5 pupils")
fig.tight_layout()
print("correlation of the OLS intercepts and slopes:", round(big["(Intercept)"].corr(big["lrt_groupc"]), 2))

# %% [markdown]
# ### The random-intercept and random-slope model
#
# With $x_{ij}$ pupil $j$'s reading score centred at the mean of school $i$,
#
# $$y_{ij} = (\beta_0 + b_{0i}) + (\beta_1 + b_{1i})\,x_{ij} + \varepsilon_{ij},\qquad
#   \begin{pmatrix} b_{0i} \\ b_{1i}\end{pmatrix} \sim N\!\left(0, \begin{pmatrix}\tau_1^2 & \tau_{12} \\ \tau_{12} & \tau_2^2\end{pmatrix}\right),\
#   \varepsilon_{ij} \sim N(0, \sigma^2).$$
#
# The note's command is `mixed gcse lrt_groupc || school: lrt_groupc, cov(uns) stddev` (with an
# `mle` option), yet the output it shows is a REML fit ("Mixed-effects REML regression", a log
# *restricted*-likelihood). We reproduce the output, so we fit by REML (lmer's default) and print SDs
# and the correlation:

# %%
m_exam = jaxmlm.lmer("normexam ~ lrt_groupc + (lrt_groupc | school)", exam)
print(m_exam.summary(style="stata", stddev=True))

# %% [markdown]
# These are lme4's numbers on the public data (R's values are in the asserts) (tests/test_stata.py checks every printed number
# against Stata's formulas computed in R); the asserts below hold them to the printed digits.

# %%
def close(got, printed, slack=0):
    """got agrees with R's printed value to its last digit, allowing for two optimizers (lme4 stops
    about 1e-6 from the optimum, relative) and ``slack`` more units of that digit."""
    digits = len(printed.split(".")[1]) if "." in printed else 0
    return abs(got - float(printed)) <= (0.5 + slack) * 10.0**-digits + 5e-6 * abs(float(printed))

vc = m_exam.variance_components()
wald = float(m_exam.fixef.iloc[1:] @ np.linalg.solve(m_exam.vcov.iloc[1:, 1:], m_exam.fixef.iloc[1:]))
lr = m_exam.lrt_vs_ols()
assert m_exam.nobs == 4059 and m_exam.ngroups == {"school": 65}
assert close(m_exam.loglik, "-4680.753") and close(wald, "756.87") and close(lr.statistic, "837.28")
assert lr.distribution == "chi2(3)" and lr.conservative
assert close(m_exam.fixef["lrt_groupc"], ".5534628") and close(m_exam.se["lrt_groupc"], ".0201177")
assert close(m_exam.fixef["(Intercept)"], "-.0159992") and close(m_exam.se["(Intercept)"], ".0542305")
for name, est, se_, lo, hi in [("sd_lrt_groupc|school", ".121959", ".019116", ".0897006", ".1658182"),
                               ("sd_(Intercept)|school", ".4227007", ".0400276", ".3510981", ".5089057"),
                               ("cor_lrt_groupc.(Intercept)|school", ".5503216", ".137053", ".2293757", ".7633335"),
                               ("sigma", ".7439193", ".0083906", ".7276543", ".7605478")]:
    row = vc.loc[name]
    assert close(row["Estimate"], est) and close(row["Std. Error"], se_), name
    assert close(row["lower"], lo) and close(row["upper"], hi), name

# %% [markdown]
# ### On the note's scale
#
# The note's estimates say what its scale is: an intercept near 70 and a residual SD near 7.4 where
# ours are 0 and 0.74, and the same slope, 0.55, are what one gets with GCSE ≈ 70 + 10 × `normexam`
# and LRT ≈ 10 × `standLRT`. Refitting on that scale (an exact linear change of units: the slope,
# the correlation, the z-values and both χ² tests do not move, the SDs of the intercept and the
# residual are ten times larger) puts our numbers next to the note's:
#
# | | note (raw scores) | public data, rescaled |
# |---|---:|---:|
# | `lrt_groupc` coefficient (SE) | .5529766 (.0199474) | .5534628 (.0201177) |
# | `_cons` (SE) | 69.83566 (.5415451) | 69.84001 (.5423047) |
# | Wald χ²(1) | 768.50 | 756.87 |
# | sd(lrt_groupc) | .1202955 | .121959 |
# | sd(_cons) | 4.220941 | 4.227007 |
# | corr(lrt_groupc, _cons) | .5481782 | .5503216 |
# | sd(Residual) | 7.432694 | 7.439193 |
# | log restricted-likelihood | −14020.718 | −14024.643 |
# | LR test vs. linear regression, χ²(3) | 835.32 | 837.28 |
#
# They agree to two or three digits, not to all seven: mlmRev's `normexam` is a normal-scores
# transform of the exam score, not the raw score, so the public data are close to, but not exactly,
# a rescaled copy of the note's.

# %%
note_scale = pd.DataFrame({"gcse": 70 + 10 * exam["normexam"], "lrt_groupc": 10 * exam["lrt_groupc"],
                           "school": exam["school"]})
m_note = jaxmlm.lmer("gcse ~ lrt_groupc + (lrt_groupc | school)", note_scale)
print(m_note.summary(style="stata", stddev=True))

# %%
vn = m_note.variance_components()
# lme4 on the rescaled public data, to the printed digits (R's values for normexam, times 10 where a unit is gcse)
assert close(m_note.fixef["(Intercept)"], "69.84001") and close(m_note.se["(Intercept)"], ".5423047")
assert close(vn.loc["sd_(Intercept)|school", "Estimate"], "4.227007") and close(vn.loc["sigma", "Estimate"], "7.439193")
assert close(m_note.loglik, "-14024.643")  # = -4680.753 - 4058 log(10): a change of units
# ... and close to the note's printed values
assert abs(m_note.fixef["lrt_groupc"] - 0.5529766) < 1e-3
assert abs(m_note.fixef["(Intercept)"] - 69.83566) < 0.01
assert abs(vn.loc["sd_lrt_groupc|school", "Estimate"] - 0.1202955) < 2e-3
assert abs(vn.loc["sd_(Intercept)|school", "Estimate"] - 4.220941) < 0.01
assert abs(vn.loc["cor_lrt_groupc.(Intercept)|school", "Estimate"] - 0.5481782) < 3e-3
assert abs(vn.loc["sigma", "Estimate"] - 7.432694) < 0.01
assert abs(m_note.lrt_vs_ols().statistic - 835.32) < 3 and abs(m_note.loglik - (-14020.718)) < 5

# %% [markdown]
# Without `stddev`, Stata (and `summary(style="stata")`) lists variances and the covariance
# instead. The covariance's interval is a plain Wald interval (a covariance may be negative, so
# there is no log scale to work on):

# %%
print(m_note.summary(style="stata"))

# %% [markdown]
# ### What the estimates say
#
# - **Fixed effects.** In the average school, a pupil 1 point above the school's mean reading score
#   scores 0.55 points higher at 16; the average school's mean score is 69.8 (on the note's scale).
# - **Random effects.** Schools' mean scores vary with an SD of about 4.2 points; their slopes with
#   an SD of 0.12 — so in about 95% of schools the slope lies within 0.55 ± 2 × 0.12, roughly
#   0.31 to 0.79. Schools with higher means have steeper slopes (correlation 0.55).
# - **The residual variance is not constant.** Writing the model as fixed part plus
#   $\xi_{ij} = b_{0i} + b_{1i}x_{ij} + \varepsilon_{ij}$,
#   $\text{var}(\xi_{ij}) = \tau_1^2 + 2\tau_{12}x_{ij} + \tau_2^2x_{ij}^2 + \sigma^2$: a random slope
#   makes the total variance depend on $x$ (with $\tau_2^2 = \tau_{12} = 0$ it is the constant
#   $\tau_1^2 + \sigma^2$ of the random-intercept model).

# %%
S = m_note.varcorr_matrices["school"].to_numpy()  # [[tau1^2, tau12], [tau12, tau2^2]]
x = np.linspace(-30, 30, 61)
total = S[0, 0] + 2 * S[0, 1] * x + S[1, 1] * x**2 + m_note.sigma**2
fig, ax = plt.subplots(figsize=(5.5, 3.5))
ax.plot(x, total)
ax.axhline(S[0, 0] + m_note.sigma**2, color="0.5", ls="--", lw=0.8, label="at x = 0")
ax.set_xlabel("reading score, centred at the school mean (note's scale)")
ax.set_ylabel("var(gcse | x)")
ax.legend(fontsize="small")
fig.tight_layout()
assert total.argmin() < 30  # the covariance is positive: the variance is least below the school mean

# %% [markdown]
# Is the random slope needed? The random-intercept model is the special case
# $\tau_2^2 = \tau_{12} = 0$; both are REML fits with the same fixed effects, so their restricted
# likelihoods can be compared (`refit=False`). As before, the null is on the boundary, so the
# $\chi^2_2$ p-value is conservative — it is tiny anyway.

# %%
m_exam_int = jaxmlm.lmer("gcse ~ lrt_groupc + (1 | school)", note_scale)
print(m_exam_int.summary(style="stata", stddev=True))
slope_test = jaxmlm.anova(m_exam_int, m_note, refit=False)
print(slope_test)
assert slope_test["Df"].iloc[1] == 2 and slope_test["Pr(>Chisq)"].iloc[1] < 1e-6
# R (lme4) on the public data: 2 (logLik(slope) - logLik(intercept)) = 2 (-4680.753 + 4702.410)
assert close(slope_test["Chisq"].iloc[1], "43.315")

# %% [markdown]
# ### Shrinkage
#
# Each school's own OLS line (no pooling) against the mixed model's school lines (partial pooling):
# the predicted intercepts and slopes are pulled towards the fixed effects, the most for small
# schools whose OLS estimates are noisy. The extreme case is the school with two pupils: its OLS
# slope, through two points, is far below every other school's (off the chart below), and the model
# pulls it almost all the way to the average slope. The second plot shows the consequence for the
# predicted lines: fanned out less than the OLS lines, around the population line (thick).

# %%
ols_note = jaxmlm.lmList("gcse ~ lrt_groupc | school", note_scale)
outlier = ols_note["lrt_groupc"].idxmin()
print(f"school {outlier}: {size[outlier]} pupils, OLS slope {ols_note.loc[outlier, 'lrt_groupc']:.2f}, "
      f"predicted slope {m_note.coef['school'].loc[outlier, 'lrt_groupc']:.2f}")
assert size[outlier] == 2
fig, axes = plt.subplots(1, 2, figsize=(13, 5))
plot.shrinkage(m_note, ax=axes[0])
axes[0].set_ylim(-0.1, 1.3)  # leaves out the two-pupil school's OLS slope (printed above)
for arrow in axes[0].texts:  # and clips its arrow at the frame
    arrow.arrow_patch.set_clip_path(axes[0].patch)
plot.trajectories(m_note, x="lrt_groupc", ax=axes[1])
axes[1].set_title("predicted school lines and the population line")
fig.tight_layout()

# %% [markdown]
# ### Ranking the schools
#
# The note asks which schools perform best. With the reading score centred within schools, a
# school's predicted intercept $\beta_0 + \hat b_{0i}$ is its expected mean GCSE score at its own
# mean intake — it mixes what the school adds with whom it takes in; ranking on *value added* would
# centre the reading score at the overall mean (or add the school's mean intake as a covariate), so
# that the intercept compares schools at the same intake. The slope says for whom a school does well:
# a steep slope favours pupils who came in reading well. The caterpillar plot orders the schools by
# their predicted intercepts with 95% intervals: only the schools at either end are distinguishable
# from the average.

# %%
ax = plot.caterpillar(m_note, term="(Intercept)")
ax.figure.set_size_inches(6, 9)
b = m_note.ranef["school"]["(Intercept)"]
print("top 3 schools:", list(b.sort_values(ascending=False).index[:3]),
      " bottom 3:", list(b.sort_values().index[:3]))

# %% [markdown]
# ## Summary
#
# - A random intercept gives every cluster (child, school) its own level; with independent
#   residuals it implies an exchangeable correlation, $\tau^2/(\tau^2+\sigma^2)$, between any two
#   observations of a cluster — `gls` with `corCompSymm` is the same model. Residual structures
#   such as AR(1) (`correlation=jaxmlm.corAR1(...)`) add correlation that decays with time.
# - A random slope gives every cluster its own effect of a level-1 covariate; the intercept and
#   slope variances and their covariance make the total variance a quadratic function of that
#   covariate.
# - Stata's `mixed` output and `m.summary(style="stata")` report the variance parameters with
#   delta-method standard errors and intervals from the log-SD / atanh scale, the Wald test of the
#   fixed effects, and the boundary-aware LR test against the linear regression.
# - Predicted random effects are shrunken: use them (with their intervals) to describe or rank
#   clusters, bearing in mind what the intercept means under the chosen centring.
