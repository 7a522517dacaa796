# %% [markdown]
# # Means models for High School and Beyond: how much do schools differ?
#
# This notebook retells course note 000 with jaxmlm. The data are the 1982 *High School and
# Beyond* survey extract used throughout Raudenbush & Bryk's *Hierarchical Linear Models*:
# 7185 students in 160 U.S. high schools. The note calls the response `math`; in the copy that
# ships with jaxmlm (`Hsb82`, from R's mlmRev package) it is `mAch`, math achievement. Other
# columns: `ses` (the student's socio-economic status, centred near zero over all students),
# `meanses` (the school's mean `ses`), `cses` (`ses − meanses`, the student's position within
# the school), `sector` (Public or Catholic), `sx` and `minrty`.
#
# The lesson builds a sequence of models:
#
# 1. the **unconditional means model** (no predictors), which splits the variance of math
#    scores into a between-school and a within-school part and gives the **intraclass
#    correlation**;
# 2. **conditional means models**, which add predictors and ask how much of each part they
#    explain (**pseudo-R²**);
# 3. a **random intercepts and random slopes** model, in which the effect of SES differs from
#    school to school;
# 4. the three models side by side (**Models A, B, C**), and the assumptions behind them.
#
# Each model is also written in the notation of the course, level-1 and level-2 equations,
# with `m.equations()`.

# %%
import matplotlib.pyplot as plt
import numpy as np

import jaxmlm
from jaxmlm import plot

hsb = jaxmlm.load_example("Hsb82")
print(hsb.shape, hsb["school"].nunique(), "schools")
hsb.head()

# %% [markdown]
# Students are grouped in schools, and the schools differ. The mean math score of each school,
# sorted, shows how much: from about 4 to about 20 points, against an overall mean near 12.7.
# Part of that spread is sampling noise (a school mean from 20 students is imprecise), and the
# models below separate the two.

# %%
school_means = hsb.groupby("school", observed=True)["mAch"].agg(["mean", "size"])
fig, ax = plt.subplots(figsize=(7, 3))
ax.plot(np.sort(school_means["mean"].to_numpy()), ".", ms=4)
ax.axhline(hsb["mAch"].mean(), color="0.5", ls="--", lw=1, label="mean of all students")
ax.set_xlabel("schools, sorted by their mean")
ax.set_ylabel("school mean of mAch")
ax.legend()
plt.show()
print(school_means["size"].describe().round(1).to_dict())

# %% [markdown]
# ## 1. The unconditional means model
#
# The simplest multilevel model has no predictors. Student *i* in school *j* scores the school's
# mean plus a deviation from it; the school means scatter around a grand mean. In the course's
# notation (the note writes the school effect as η and the grand mean as β₀₀; jaxmlm writes
# Raudenbush & Bryk's u and γ₀₀, the same quantities):

# %%
m_a = jaxmlm.lmer("mAch ~ 1 + (1 | school)", hsb)
m_a.equations()

# %% [markdown]
# Substituting the level-2 equation into the level-1 equation gives the composite model: grand
# mean, plus school deviation, plus student deviation. The two random parts are independent,
# so the variance of a score is the sum τ₀₀ + σ²: between-school plus within-school variance.
# `equations(estimates=True)` shows the fitted numbers in place of the symbols.

# %%
print(m_a.summary())
m_a.equations(estimates=True, digits=3)

# %% [markdown]
# The grand mean is 12.64, the between-school variance τ̂₀₀ = 8.614 and the within-school
# (residual) variance σ̂² = 39.148.
#
# **The intraclass correlation** ρ is the share of the total variance that lies between
# schools, ρ = τ₀₀ / (τ₀₀ + σ²). It is also the correlation between the scores of two students
# of the same school. Here 18 % of the variation in math scores is between schools, the rest
# among students within a school. `m.icc()` computes the same ratio.

# %%
vc_a = m_a.varcorr.set_index("grp")["vcov"]
tau00, sigma2 = vc_a["school"], vc_a["Residual"]
icc = tau00 / (tau00 + sigma2)
print(f"tau00 = {tau00:.3f}, sigma2 = {sigma2:.3f}, ICC = {icc:.3f}")
assert abs(tau00 - 8.614) < 5e-4
assert abs(sigma2 - 39.148) < 5e-4
assert abs(icc - 0.180) < 5e-4
assert abs(m_a.icc().loc["school", "ICC"] - 0.180) < 5e-4
assert abs(m_a.fixef["(Intercept)"] - 12.64) < 5e-3 and abs(m_a.se["(Intercept)"] - 0.24) < 5e-3
m_a.icc()

# %% [markdown]
# The model's estimates of the school means are the conditional modes û₀ⱼ added to the grand
# mean. A caterpillar plot shows them sorted, with 95 % intervals: many schools are clearly
# above or below the grand mean, which is what a between-school variance of 8.6 means.

# %%
ax = plot.caterpillar(m_a)
ax.figure.set_size_inches(7, 3.2)
ax.set_title("School effects û₀ⱼ of the unconditional means model")
plt.show()

# %% [markdown]
# ## 2. Conditional means models
#
# Next we add a student-level (level-1) predictor, SES, to explain some of the within-school
# variation. The intercept still varies between schools, the slope of SES is the same in every
# school (it has no random effect, so its level-2 equation has no u):

# %%
m_b = jaxmlm.lmer("mAch ~ 1 + ses + (1 | school)", hsb)
m_b.equations()

# %%
print(m_b.summary())

# %% [markdown]
# The residual variance, the within-school variation left after accounting for SES, drops from
# 39.15 to 37.03. Its proportional reduction is a **pseudo-R²** at level 1:
# r² = (39.15 − 37.03) / 39.15 = 0.05. SES explains about 5 % of the within-school variance.
# The comparison is always made against the unconditional means model, the model that
# partitions the variance before anything is explained. `jaxmlm.pseudo_r2(base, model)`
# computes it for the residual and for each random intercept variance.
#
# (The note prints the school variance of this model as 4.76; jaxmlm's, like lme4's, is
# 4.768, so the note truncated it. We check it to within one unit of its last printed digit.)

# %%
sigma2_b = m_b.sigma**2
tau00_b = m_b.varcorr_matrices["school"].iloc[0, 0]
r2 = jaxmlm.pseudo_r2(m_a, m_b)
print(f"sigma2 = {sigma2_b:.2f}, tau00 = {tau00_b:.3f}")
print(r2.round(3).to_dict())
assert abs(sigma2_b - 37.03) < 5e-3
assert abs(tau00_b - 4.76) <= 0.01  # printed truncated
assert abs((39.15 - 37.03) / 39.15 - 0.05) < 5e-3  # the note's arithmetic on rounded values
assert abs(r2["Residual"] - 0.05) < 5e-3
assert abs(m_b.fixef["(Intercept)"] - 12.66) < 5e-3 and abs(m_b.se["(Intercept)"] - 0.19) < 5e-3
assert abs(m_b.fixef["ses"] - 2.39) < 5e-3 and abs(m_b.se["ses"] - 0.11) < 5e-3

# %% [markdown]
# SES also cut the **between-school** variance almost in half (8.61 → 4.77, a pseudo-R² of
# 0.45 for the school intercepts): schools differ in mean math partly because they differ in
# the SES of their students. In the fitted composite model, û₀ⱼ is the difference between
# school *j*'s predicted score and the overall prediction for a student with SES = 0, and the
# variance of those school effects is the variation of average math scores across schools at
# SES = 0.
#
# ### Level-2 predictors
#
# Predictors that describe the school itself — its mean SES, its sector — are **level-2
# predictors**: they are constant within a school and can only explain differences *between*
# schools. `equations()` reads this from the data: a column that never varies within a school is
# written with the subscript *j* only and enters the equation of the school intercept
# β₀ⱼ (Raudenbush & Bryk's "means as outcomes" model).

# %%
m_means = jaxmlm.lmer("mAch ~ meanses + sector + (1 | school)", hsb)
m_means.equations()

# %%
m_means.equations(estimates=True)

# %% [markdown]
# School mean SES and sector leave the residual variance where it was (they cannot explain
# differences among students of one school) but explain most of the between-school variance:

# %%
r2_means = jaxmlm.pseudo_r2(m_a, m_means)
print({k: round(v, 3) + 0.0 for k, v in r2_means.items()})  # + 0.0: no "-0.0"
assert abs(r2_means["Residual"]) < 0.01 and r2_means["school"] > 0.6

# %% [markdown]
# ## 3. Random intercepts and random slopes
#
# So far SES has the same effect in every school. Letting the slope vary too gives each school
# its own intercept *and* its own SES slope. The level-2 equation of the slope now has a random
# effect u₁ⱼ, and the two school effects have a 2 × 2 covariance matrix **T** (the note calls it
# **G**): the variances of the intercepts and of the slopes, and their covariance.

# %%
m_c = jaxmlm.lmer("mAch ~ 1 + ses + (1 + ses | school)", hsb)
m_c.equations()

# %%
print(m_c.summary())

# %% [markdown]
# The note prints lme4's summary of this model; jaxmlm reproduces its numbers. The REML
# criterion, fixed effects and t values agree to the printed digits. For the covariance matrix
# and the random effects the note prints 7 to 9 decimals, more than the data pin down: near this
# optimum the REML criterion is so flat that the variance components move in their 5th to 7th
# digit for criterion changes of 10⁻⁸. (lme4 1.1-31, run today, stops at an intercept variance
# of 4.82873 with a criterion 2 × 10⁻⁸ *higher* than jaxmlm's; the note's lme4 stopped at
# 4.8286364, jaxmlm at 4.8286367.) Those numbers are checked to 10⁻⁶.

# %%
vc_c = m_c.varcorr
G = m_c.varcorr_matrices["school"]
sd = np.sqrt(np.diag(G))
corr = G.iloc[0, 1] / (sd[0] * sd[1])
ct = m_c.coef_table()
print(G.round(7))
print(ct.round(4))
assert abs(m_c.objective - 46640.4) < 0.05
assert abs(G.iloc[0, 0] - 4.8286) < 5e-5 and abs(G.iloc[1, 1] - 0.4129) < 5e-5
assert abs(m_c.sigma**2 - 36.8302) < 5e-5
assert abs(sd[0] - 2.1974) < 5e-5 and abs(sd[1] - 0.6426) < 5e-5 and abs(m_c.sigma - 6.0688) < 5e-5
assert abs(corr - (-0.11)) < 5e-3
assert abs(m_c.fixef["(Intercept)"] - 12.6650) < 5e-5 and abs(m_c.se["(Intercept)"] - 0.1898) < 5e-5
assert abs(m_c.fixef["ses"] - 2.3938) < 5e-5 and abs(m_c.se["ses"] - 0.1181) < 5e-5
assert abs(ct.loc["(Intercept)", "t value"] - 66.71) < 5e-3 and abs(ct.loc["ses", "t value"] - 20.27) < 5e-3
assert m_c.nobs == 7185 and m_c.ngroups["school"] == 160
# VarCorr(m)$school and its attributes, printed by the note to 7 decimals (see above: 1e-6)
assert abs(G.iloc[0, 0] - 4.8286364) < 1e-6 and abs(G.iloc[1, 1] - 0.4129288) < 1e-6
assert abs(G.iloc[0, 1] - (-0.1542761)) < 1e-6
assert abs(sd[0] - 2.1974158) < 1e-6 and abs(sd[1] - 0.6425954) < 1e-6
assert abs(corr - (-0.1092569)) < 1e-6

# %% [markdown]
# **Reading the fixed effects.** The predicted score is 12.66 + 2.39 × SES: a student of average
# SES (SES = 0) in an average school is predicted to score 12.66, and one unit more SES goes with
# 2.39 more points, on average over schools.
#
# **Reading the variance components.** The residual variance fell to 36.83, a level-1 pseudo-R²
# of (39.15 − 36.83) / 39.15 = 0.06 against the unconditional means model. The intercept variance
# 4.83 is the spread of the schools' mean scores at SES = 0; the slope variance 0.41 (SD 0.64) is
# the spread of the SES effect across schools: a school one SD above average has a slope near
# 2.39 + 0.64 ≈ 3.0, one below, near 1.75. The covariance −0.15 (correlation −0.11) says that
# schools with a lower intercept tend to have a slightly steeper SES slope.

# %%
r2_c = jaxmlm.pseudo_r2(m_a, m_c)
assert abs((39.15 - 36.83) / 39.15 - 0.06) < 5e-3 and abs(r2_c["Residual"] - 0.06) < 5e-3
print(f"G = {np.round(G.to_numpy(), 2).tolist()}")
assert np.allclose(np.round(G.to_numpy(), 2), [[4.83, -0.15], [-0.15, 0.41]])
m_c.equations(estimates=True)

# %% [markdown]
# The note lists the first schools' random effects, `ranef(m)$school` (the school's deviation
# from the average intercept and from the average slope):

# %%
re_c = m_c.ranef["school"]
print(re_c.loc[["1224", "1288", "1296"]].to_string(float_format="%.9f"))
note_ranef = {"1224": (-1.604995891, 0.110271946), "1288": (0.408590120, 0.084117692),
              "1296": (-3.467719669, -0.040825210)}
for school, (u0, u1) in note_ranef.items():
    assert abs(re_c.loc[school, "(Intercept)"] - u0) < 1e-6 and abs(re_c.loc[school, "ses"] - u1) < 1e-6

# %% [markdown]
# (The random effects depend on the variance components, and like them they agree with the note
# to 10⁻⁶, not to all nine printed decimals.)
#
# Each school's fitted line is the fixed line plus its two random effects. The panels show six
# schools' students and their fitted lines: different heights (intercepts) and somewhat
# different steepness (slopes).

# %%
fig = plot.group_lines(m_c, x="ses", max_groups=6, ncols=3)
fig.set_size_inches(8, 4.5)
plt.show()

# %% [markdown]
# ## 4. Models A, B and C side by side
#
# The note collects the three models in one table: fixed effects with their standard errors,
# variance components, and goodness of fit. `jaxmlm.compare_models` makes it. For REML fits the
# fit rows show the REML criterion (the note's "Deviance" row), and AIC and BIC built on it.
# Models A and B have random intercepts only, so they also get the intraclass correlation.

# %%
table = jaxmlm.compare_models([m_a, m_b, m_c])
table

# %%
long = table.long.set_index(["row", "model"])["value"]
printed = {  # the note's table: (row, model) -> value as printed
    ("REML criterion", "Model A"): 47116.79, ("REML criterion", "Model B"): 46645.17,
    ("REML criterion", "Model C"): 46640.4,
    ("AIC", "Model A"): 47122.79, ("AIC", "Model B"): 46653.17, ("AIC", "Model C"): 46652.4,
    ("BIC", "Model A"): 47143.43, ("BIC", "Model B"): 46680.69, ("BIC", "Model C"): 46693.68,
    ("Residual: variance", "Model A"): 39.148, ("Residual: variance", "Model B"): 37.03,
    ("Residual: variance", "Model C"): 36.83,
    ("school: var((Intercept))", "Model A"): 8.61, ("school: var((Intercept))", "Model C"): 4.83,
    ("school: var(ses)", "Model C"): 0.41,
    ("(Intercept)", "Model A"): 12.64, ("(Intercept)", "Model B"): 12.66, ("(Intercept)", "Model C"): 12.67,
    ("ses", "Model B"): 2.39, ("ses", "Model C"): 2.39,
}
for key, value in printed.items():
    decimals = len(repr(value).split(".")[1])
    assert abs(long[key] - value) <= 0.5 * 10.0**-decimals, (key, long[key], value)
assert abs(long[("school: var((Intercept))", "Model B")] - 4.76) <= 0.01  # truncated in the note
se = table.long.set_index(["row", "model"])["se"]
for key, value in {("(Intercept)", "Model A"): 0.24, ("(Intercept)", "Model B"): 0.19, ("(Intercept)", "Model C"): 0.19,
                   ("ses", "Model B"): 0.11, ("ses", "Model C"): 0.12}.items():
    assert abs(se[key] - value) < 5e-3, key

# %% [markdown]
# Reading across: SES explains within-school variance (39.15 → 37.03) and, more strongly,
# between-school variance (8.61 → 4.77), and improves the fit by 472 points of REML criterion.
# The random slope lowers the criterion by another 4.8 for two more parameters (a variance and a
# covariance): AIC prefers Model C slightly, BIC, which charges more per parameter, prefers
# Model B. (A formal test of the random slope is `jaxmlm.anova(m_b, m_c)`, with REML fits refitted
# by ML; the note does not do it here.)
#
# ## 5. Cross-level interactions: the level-2 equations of a slope
#
# When the slope varies between schools one can ask which school properties explain it. A
# school-level predictor in the slope's level-2 equation is, in the composite form, an
# interaction between the student predictor and the school predictor: a **cross-level
# interaction**. Here with the classic Raudenbush & Bryk model: SES centred within schools
# (`cses`), with the school's mean SES and sector explaining both the intercept and the SES
# slope. `equations()` puts `meanses:cses` and `sector:cses` into the slope's equation because
# `meanses` and `sector` are constant within schools and `cses` is not.

# %%
m_x = jaxmlm.lmer("mAch ~ meanses * cses + sector * cses + (cses | school)", hsb)
eq_x = m_x.equations()
eq_x

# %%
print(eq_x)
assert "β₁ⱼ = γ₁₀ + γ₁₁ meansesⱼ + γ₁₂ sector[Catholic]ⱼ + u₁ⱼ" in eq_x.text
m_x.equations(estimates=True)

# %% [markdown]
# In Catholic schools the SES slope is about 1.6 points flatter than in public schools, and
# schools with a higher mean SES have steeper slopes: the school context shapes how much a
# student's SES matters.
#
# ## 6. Assumptions
#
# The model assumes that the level-1 errors are normal, εᵢⱼ ~ N(0, σ²), and that the school
# effects are normal too, u₀ⱼ ~ N(0, τ₀₀) and u₁ⱼ ~ N(0, τ₁₁). The note checks this with
# density estimates of the residuals and of each set of random effects, against a normal curve.
# jaxmlm's `ranef_density` draws the density of the conditional modes with the normal density
# the model assumes (the modes are shrunk towards zero, so they spread less than that curve),
# and `qq` a normal quantile plot.

# %%
fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
resid = m_c.resid
grid = np.linspace(resid.min(), resid.max(), 200)
from scipy import stats  # noqa: E402

axes[0].plot(grid, stats.gaussian_kde(resid)(grid), label="residuals (kernel density)")
axes[0].plot(grid, stats.norm.pdf(grid, scale=resid.std()), "--", label="normal, same SD")
axes[0].set_xlabel("residual")
axes[0].set_ylabel("density")
plot.ranef_density(m_c, term="(Intercept)", ax=axes[1])
plot.ranef_density(m_c, term="ses", ax=axes[2])
for ax in axes:
    ax.set_ylim(top=ax.get_ylim()[1] * 1.3)  # room for the legend above the curves
    ax.legend(fontsize="x-small", loc="upper left")
fig.tight_layout()
plt.show()

# %%
fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
plot.qq(m_c, ax=axes[0])
plot.qq(m_c, which="school", term="(Intercept)", ax=axes[1])
fig.tight_layout()
plt.show()

# %% [markdown]
# The residuals have lighter tails than a normal distribution on both sides (math scores are
# bounded: the test has a floor and a ceiling), a mild departure that matters little for the
# fixed effects with 7185 students. The school intercepts look close to normal. The slope modes
# are much narrower than the N(0, 0.64²) the model assumes for the slopes themselves: one school's
# SES slope is estimated from a few dozen students, so its mode is shrunk strongly towards the
# average slope, and the spread of the modes understates the spread of the slopes. With 160
# schools the random-effect distributions can only be judged roughly.
