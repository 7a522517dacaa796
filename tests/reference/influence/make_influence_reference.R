# Reference numbers for jaxmlm's influence diagnostics (tests/test_influence.py).
# Run from this folder:  Rscript make_influence_reference.R   → influence_reference.json
#
# For each case: the full lme4 fit, then one refit per deleted group (or row) on the data
# without it (lme4's update(model, data = ...), as influence.ME's exclude.influence does with
# delete = TRUE), and the statistics computed here from those refits:
#   Cook's distance, full-fit vcov V:     (b - b_j)' V^-1 (b - b_j) / p
#   Cook's distance, deleted-fit vcov V_j: (b - b_j)' V_j^-1 (b - b_j) / p
#     (influence.ME 0.9-9's cooks.distance.estex uses the deleted fit's vcov, alt.vcov)
#   DFBETAS: (b - b_j) / se_j, se_j the deleted fit's standard errors (dfbetas.estex).
# Data are the CSV files shipped in jaxmlm/data (the same rows jaxmlm fits).
# Checked once against influence.ME 0.9-9's own code (influence(m, group = "Subject") with its
# cooks.distance.estex and dfbetas.estex on sleepstudy): its Cook's distances are the
# deleted-vcov ones here (0.1007759, 0.1878135, 0.1261200 for subjects 308-310), its DFBETAS these.
# The differences b - b_j are small next to b, so every fit is polished to a gradient of
# the criterion near 1e-9: BOBYQA with tight tolerances (nloptwrap), then Newton steps on lme4's
# own deviance function with numDeriv's Richardson gradient and Hessian (kept while they shrink
# the gradient without raising the criterion; components at a bound held there), and the merMod made at the polished
# theta by lme4's modular mkMerMod. (BOBYQA alone left gradients near 1e-4 on the Exam refits:
# DFBETAS near 1e-4 then lost their 1e-5 relative agreement.)
suppressMessages({
  library(lme4)
  library(jsonlite)
  library(numDeriv)
})

data_dir <- file.path("..", "..", "..", "jaxmlm", "data")
level_orders <- fromJSON(file.path(data_dir, "levels.json"))

# Factor levels in jaxmlm's order (jaxmlm/data/levels.json, the R packages' own), so that the
# fixed-effects contrasts (e.g. Hsb82's sectorCatholic) are the same columns.
dat <- function(name, factors) {
  d <- read.csv(file.path(data_dir, paste0(name, ".csv")), stringsAsFactors = TRUE)
  for (f in factors) d[[f]] <- factor(d[[f]])
  for (f in names(level_orders[[name]])) d[[f]] <- factor(as.character(d[[f]]), levels = level_orders[[name]][[f]])
  d
}

ctrl <- lmerControl(optimizer = "nloptwrap", calc.derivs = FALSE,
                    optCtrl = list(algorithm = "NLOPT_LN_BOBYQA", xtol_abs = 1e-13, ftol_abs = 1e-15,
                                   xtol_rel = 1e-13, ftol_rel = 1e-15, maxeval = 100000))

fit <- function(formula, data, REML) {
  lmod <- lFormula(formula, data, REML = REML, control = ctrl)
  devfun <- do.call(mkLmerDevfun, lmod)
  opt <- optimizeLmer(devfun, optimizer = "nloptwrap", control = ctrl$optCtrl)
  th <- opt$par
  f <- devfun(th)
  free <- !(lmod$reTrms$lower == 0 & th == 0)
  # Richardson steps from 1 % of each component: smaller ones drown in the criterion's rounding
  ma <- list(d = 0.01, r = 6)
  dev <- function(t) { u <- th; u[free] <- t; devfun(u) }
  g <- grad(dev, th[free], method.args = ma)
  for (it in 1:8) {
    if (max(abs(g)) < 1e-10) break
    H <- hessian(dev, th[free], method.args = ma)
    trial <- th
    trial[free] <- th[free] - solve(H, g)
    ft <- devfun(trial)
    gt <- grad(function(t) { u <- trial; u[free] <- t; devfun(u) }, trial[free], method.args = ma)
    # near the optimum a step changes f by less than its rounding (~1e-12): judge it by the gradient
    if (!is.finite(ft) || ft > f + 1e-9 || max(abs(gt)) >= max(abs(g))) break
    th <- trial
    f <- ft
    g <- gt
  }
  opt$par <- th
  opt$fval <- devfun(th)  # leaves devfun's environment at th for mkMerMod
  mkMerMod(environment(devfun), opt, lmod$reTrms, fr = lmod$fr)
}

case <- function(name, formula, data, group, REML = TRUE) {
  m <- fit(formula, data, REML)
  b <- fixef(m)
  V <- as.matrix(vcov(m))
  p <- length(b)
  if (is.null(group)) {
    labels <- as.character(seq_len(nrow(data)))
    subsets <- lapply(seq_len(nrow(data)), function(i) data[-i, , drop = FALSE])
  } else {
    labels <- levels(droplevels(data[[group]]))
    subsets <- lapply(labels, function(l) droplevels(data[data[[group]] != l, , drop = FALSE]))
  }
  t0 <- proc.time()[[3]]
  refits <- lapply(subsets, function(d) fit(formula, d, REML))
  secs <- proc.time()[[3]] - t0
  bj <- t(sapply(refits, fixef))
  if (p == 1) bj <- t(bj)
  sej <- t(sapply(refits, function(r) sqrt(diag(as.matrix(vcov(r))))))
  if (p == 1) sej <- t(sej)
  D <- sweep(-bj, 2, b, "+")  # b - b_j, one row per deletion
  cook_full <- rowSums((D %*% solve(V)) * D) / p
  cook_del <- sapply(seq_along(refits), function(j) {
    Vj <- as.matrix(vcov(refits[[j]]))
    drop(t(D[j, ]) %*% solve(Vj) %*% D[j, ]) / p
  })
  list(
    name = name, formula = deparse(formula), group = if (is.null(group)) NA else group, REML = REML,
    fixef_names = names(b), fixef = unname(b), vcov = unname(V), theta = unname(getME(m, "theta")),
    labels = labels, fixef_deleted = unname(bj), se_deleted = unname(sej),
    theta_deleted = unname(t(sapply(refits, function(r) getME(r, "theta")))),
    cooks_distance = unname(cook_full), cooks_distance_deleted_vcov = unname(cook_del),
    dfbetas = unname(D / sej), seconds = secs
  )
}

sl <- dat("sleepstudy", "Subject")
exam <- dat("Exam", c("school", "student"))
hsb <- dat("Hsb82", "school")
pen <- dat("Penicillin", c("plate", "sample"))

cases <- list(
  case("sleepstudy_slopes", Reaction ~ Days + (Days | Subject), sl, "Subject"),
  case("exam_intercept", normexam ~ standLRT + (1 | school), exam, "school"),
  case("exam_slopes", normexam ~ standLRT + (standLRT | school), exam, "school"),
  case("hsb82_level2_ML", mAch ~ ses + sector + (1 | school), hsb, "school", REML = FALSE),
  case("penicillin_crossed_sample", diameter ~ 1 + (1 | plate) + (1 | sample), pen, "sample"),
  case("sleepstudy_rows", Reaction ~ Days + (Days | Subject), sl, NULL)
)

out <- list(R = R.version.string, lme4 = as.character(packageVersion("lme4")), cases = cases)
writeLines(toJSON(out, digits = NA, auto_unbox = TRUE, pretty = TRUE), "influence_reference.json")
