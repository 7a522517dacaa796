# Reference numbers for jaxmlm's model comparison and summary statistics
# (tests/test_compare.py, tests/test_confint.py): lme4's anova() on merMod objects,
# Stata-style LR tests against OLS, ICCs, Nakagawa R², Raudenbush-Bryk pseudo-R² and
# confint() at a non-default level.
#
# Usage (from tests/reference/compare):  Rscript make_compare_reference.R compare.json
#
# R 4.2.2, lme4 1.1-31, lmerTest 3.1-3, mlmRev 1.0-8. The packages `performance` and
# `MuMIn` are not installed, so the ICC and R² values are computed by hand from VarCorr():
#   varF  = var(X beta)                         (n - 1 denominator, as MuMIn / insight)
#   varR_t = mean(diag(Z_t Sigma_t Z_t'))        per random-effects term t
#            (Johnson 2014; = Sigma_t for a random intercept)
#   varE  = sigma^2
#   R2_marginal = varF / (varF + sum varR + varE), R2_conditional = (varF + sum varR) / (...)
#   (Nakagawa & Schielzeth 2013; Nakagawa, Johnson & Schielzeth 2017, eqs. for Gaussian LMMs)
#   ICC_t = varR_t / (sum varR + varE); nested cumulative ICC (Stata's estat icc) sums the
#   variances of a level and every level it is nested in.
suppressPackageStartupMessages({library(lme4); library(lmerTest); library(jsonlite); library(mlmRev)})
args <- commandArgs(TRUE)
outfile <- if (length(args)) args[1] else "compare.json"

tab <- function(a) {
  # an anova / data.frame as a list of rows: {"_row": name, col: value, ...}; NA -> null
  df <- as.data.frame(a, check.names = FALSE)
  lapply(seq_len(nrow(df)), function(i) c(list("_row" = rownames(df)[i]), as.list(df[i, , drop = FALSE])))
}

data(Hsb82, package = "mlmRev")
data(sleepstudy, package = "lme4"); data(Pastes, package = "lme4"); data(Penicillin, package = "lme4")
data(Dyestuff, package = "lme4")

out <- list()

## ---- anova(): Hsb82 null vs ses (ML), the same from REML fits (refit), and refit = FALSE
hsb_null <- lme4::lmer(mAch ~ 1 + (1 | school), Hsb82, REML = FALSE)
hsb_ses  <- lme4::lmer(mAch ~ ses + (1 | school), Hsb82, REML = FALSE)
hsb_null_reml <- lme4::lmer(mAch ~ 1 + (1 | school), Hsb82)
hsb_ses_reml  <- lme4::lmer(mAch ~ ses + (1 | school), Hsb82)
out$anova_hsb_ml <- tab(anova(hsb_null, hsb_ses))
out$anova_hsb_reml_refit <- tab(suppressMessages(anova(hsb_null_reml, hsb_ses_reml)))
out$anova_hsb_reml_norefit <- tab(anova(hsb_null_reml, hsb_ses_reml, refit = FALSE))

## ---- anova() of three sleepstudy REML fits given out of order (rows sorted by npar)
fm0 <- lme4::lmer(Reaction ~ 1 + (1 | Subject), sleepstudy)
fm1 <- lme4::lmer(Reaction ~ Days + (1 | Subject), sleepstudy)
fm2 <- lme4::lmer(Reaction ~ Days + (Days | Subject), sleepstudy)
out$anova_sleep3 <- tab(suppressMessages(anova(fm2, fm0, fm1)))

## ---- hand-computed variance decomposition
term_mm <- function(m) {
  # the model matrix of every random-effects term, in VarCorr order
  fr <- model.frame(m)
  lapply(findbars(formula(m)), identity) -> bars
  reT <- mkReTrms(bars, fr)
  stopifnot(identical(unname(reT$cnms), unname(m@cnms)))
  # Ztlist: one sparse Zt per term (levels x n); Z_t rows with the term's columns come from
  # the term's own model matrix, rebuilt here from its left-hand side
  lapply(seq_along(reT$cnms), function(i) {
    b <- reT$Ztlist[[i]]
    k <- length(reT$cnms[[i]])
    Zt <- as.matrix(b)
    # collapse levels: column j of the term's model matrix = sum over levels of rows j, j+k, ...
    nl <- nrow(Zt) / k
    sapply(seq_len(k), function(j) colSums(Zt[(0:(nl - 1)) * k + j, , drop = FALSE]))
  })
}
decomp <- function(m) {
  vc <- VarCorr(m)
  mms <- term_mm(m)
  varR <- sapply(seq_along(vc), function(i) {
    Z <- matrix(mms[[i]], ncol = ncol(vc[[i]]))
    S <- as.matrix(vc[[i]])
    mean(rowSums((Z %*% S) * Z))
  })
  names(varR) <- names(vc)
  varF <- var(as.vector(getME(m, "X") %*% fixef(m)))
  varE <- sigma(m)^2
  tot <- sum(varR) + varE
  list(varF = varF, varR = as.list(varR), varE = varE,
       icc = as.list(varR / tot),
       icc_adjusted = sum(varR) / tot,
       R2_marginal = varF / (varF + sum(varR) + varE),
       R2_conditional = (varF + sum(varR)) / (varF + sum(varR) + varE))
}
sleep_ri <- fm1
sleep_rs <- fm2
pastes <- lme4::lmer(strength ~ 1 + (1 | batch/cask), Pastes)
penicillin <- lme4::lmer(diameter ~ 1 + (1 | plate) + (1 | sample), Penicillin)
hsb_slope <- lme4::lmer(mAch ~ ses + (ses | school), Hsb82)
out$decomp <- list(sleepstudy_ri = decomp(sleep_ri), sleepstudy_rs = decomp(sleep_rs),
                   pastes_nested = decomp(pastes), penicillin_crossed = decomp(penicillin),
                   hsb_ses = decomp(hsb_ses), hsb_ses_slope = decomp(hsb_slope))
# Stata-style cumulative ICC for Pastes: cask within batch shares batch and cask:batch
vp <- as.data.frame(VarCorr(pastes))
v_b <- vp$vcov[vp$grp == "batch"]; v_cb <- vp$vcov[vp$grp == "cask:batch"]; v_e <- sigma(pastes)^2
out$pastes_icc_cumulative <- list(batch = v_b / (v_b + v_cb + v_e), "cask:batch" = (v_b + v_cb) / (v_b + v_cb + v_e))

## ---- Raudenbush & Bryk proportional reduction in variance: Hsb82 null -> ses (ML)
vn <- as.data.frame(VarCorr(hsb_null)); vs <- as.data.frame(VarCorr(hsb_ses))
out$pseudo_r2_hsb <- list(
  Residual = (vn$vcov[vn$grp == "Residual"] - vs$vcov[vs$grp == "Residual"]) / vn$vcov[vn$grp == "Residual"],
  school = (vn$vcov[vn$grp == "school"] - vs$vcov[vs$grp == "school"]) / vn$vcov[vn$grp == "school"])

## ---- LR test vs. linear regression (Stata's mixed): LR = 2 (logLik(lmer) - logLik(lm));
## one variance component: chibar2(01), p = P(chi2_1 > LR) / 2; more: chi2(k), conservative.
lrt <- function(m, lmf, k) {
  reml <- isREML(m)
  lr <- 2 * (as.numeric(logLik(m)) - as.numeric(logLik(lmf, REML = reml)))
  list(chi2 = lr, df = k, p_value = if (k == 1) 0.5 * pchisq(lr, 1, lower.tail = FALSE) else pchisq(lr, k, lower.tail = FALSE),
       loglik_ols = as.numeric(logLik(lmf, REML = reml)))
}
out$lrt_vs_ols <- list(
  hsb_ses = lrt(hsb_ses, lm(mAch ~ ses, Hsb82), 1),
  sleepstudy_ri = lrt(sleep_ri, lm(Reaction ~ Days, sleepstudy), 1),
  dyestuff_ml = lrt(lme4::lmer(Yield ~ 1 + (1 | Batch), Dyestuff, REML = FALSE), lm(Yield ~ 1, Dyestuff), 1),
  sleepstudy_rs = lrt(sleep_rs, lm(Reaction ~ Days, sleepstudy), 3))

## ---- confint() at level 0.90 (profile and Wald), sleepstudy random slopes, REML
ci <- confint(sleep_rs, level = 0.9, oldNames = FALSE, quiet = TRUE)
out$confint_sleep_rs_90 <- list(columns = colnames(ci), profile = tab(ci),
  wald = tab(confint(sleep_rs, level = 0.9, method = "Wald", oldNames = FALSE)))

## ---- lmerTest::ranova for left-hand sides the reference cases lack: an interaction
## (only x:z is in drop.scope), a factor with and without intercept, '||' of two slopes
slopes3 <- read.csv("../data/synthetic/slopes3.csv", stringsAsFactors = TRUE)
fna <- read.csv("../data/synthetic/factors_na.csv", stringsAsFactors = TRUE)
out$ranova_extra <- lapply(list(
    list(formula = "y ~ x + z + (x * z | g)", data = "synthetic/slopes3.csv"),
    list(formula = "y ~ x + (f2 | g)", data = "synthetic/factors_na.csv"),
    list(formula = "y ~ x + (0 + f2 | g)", data = "synthetic/factors_na.csv"),
    list(formula = "y ~ x + z + (x + z || g)", data = "synthetic/slopes3.csv")), function(s) {
  d <- if (grepl("slopes3", s$data)) slopes3 else fna
  m <- suppressMessages(lmerTest::lmer(as.formula(s$formula), d))
  c(s, list(table = tab(lmerTest::ranova(m))))
})

## ---- exact profile limits where lme4's spline interpolation is off ------------------------
## lme4's confint(profile) interpolates zeta through a coarse grid of profile points with a
## spline; for the flat / strongly curved profiles below that misses zeta = +-1.96 by up to
## ~0.36 of the interval's width. Here the profile is evaluated directly: lme4's own
## devfun2 (ML deviance in the sd/cor/sigma parameters), the parameter fixed, the others
## minimized by bobyqa from many starts (the MLE, the previous solution, a grid of values
## for every correlation, random perturbations; the profile can be multimodal in the
## correlations), keeping the lowest deviance; uniroot then finds zeta(v) = +-qnorm(0.975).
## zeta_at_lme4 shows how far lme4's reported limit is from the level. The limits listed
## are those where jaxmlm's profile and lme4's confint differ by 9e-4 of the width or more;
## at each of them lme4's limit is off the level by more than 4e-3 in zeta.
## (This section takes about 10 minutes on 2 cores.)
exact_limit <- function(id, fm, pname, side, lme4_value, nrand = 3) {
  set.seed(42)
  dd <- lme4:::devfun2(fm, useSc = TRUE, signames = FALSE)
  opt <- attr(dd, "optimum"); base <- attr(dd, "basedev")
  np <- length(environment(dd)$pp$theta) + 1
  w <- match(pname, names(opt))
  lw <- pmax(c(fm@lower, 0), -1); upr <- ifelse(c(fm@lower, 0) == 0, Inf, 1)
  lo <- lw[-w]; up <- upr[-w]
  iscor <- which(lo == -1)
  last <- opt[1:np][-w]
  zeta <- function(v) {
    f <- function(x) { p <- numeric(np); p[w] <- v; p[-w] <- x
                       r <- tryCatch(dd(p), error = function(e) Inf); if (is.finite(r)) r else 1e10 }
    starts <- list(opt[1:np][-w], last)
    for (ci in iscor) for (g in c(-0.95, -0.5, 0, 0.5, 0.95)) { s <- opt[1:np][-w]; s[ci] <- g; starts[[length(starts) + 1]] <- s }
    for (k in seq_len(nrand)) starts[[length(starts) + 1]] <-
      pmin(pmax(opt[1:np][-w] * exp(rnorm(np - 1, 0, 0.3)), lo + 1e-3), pmin(up - 1e-3, 1e6))
    best <- list(fval = Inf)
    for (s in starts) {
      s <- pmin(pmax(s, lo + 1e-6), pmin(up - 1e-6, 1e6))
      r <- tryCatch(minqa::bobyqa(s, f, lower = lo, upper = up, control = list(rhoend = 1e-9, maxfun = 1e5)),
                    error = function(e) list(fval = Inf))
      if (r$fval < best$fval) best <- r
    }
    last <<- best$par
    sign(v - opt[w]) * sqrt(max(best$fval - base, 0))
  }
  z <- qnorm(0.975) * if (side == "lower") -1 else 1
  est <- unname(opt[w])
  far <- if (side == "lower") max(lw[w] + 1e-6, est - 3 * abs(est - lme4_value) - 1e-3) else
    min(upr[w] - 1e-6, est + 3 * abs(est - lme4_value) + 1e-3)
  root <- uniroot(function(v) zeta(v) - z, sort(c(est, far)), tol = 1e-9)$root
  list(case = id, param = pname, side = side, lme4 = lme4_value, zeta_at_lme4 = zeta(lme4_value),
       exact = root, zeta_at_exact = zeta(root))
}
crossed <- read.csv("../data/synthetic/crossed_slopes.csv", stringsAsFactors = TRUE)
fm_item <- lme4::lmer(y ~ x + (1 | subj) + (1 + x | item), crossed)
fm_noint <- lme4::lmer(Reaction ~ 0 + Days + (Days | Subject), sleepstudy)
fm_s3 <- lme4::lmer(y ~ x + z + (1 + x + z | g), slopes3)
exact <- list()
for (spec in list(list("hsb_ses_slope", hsb_slope, list(c("sd_ses|school", "lower"), c("cor_ses.(Intercept)|school", "upper"))),
                  list("crossed_item_slope", fm_item, list(c("cor_x.(Intercept)|item", "lower"),
                       c("cor_x.(Intercept)|item", "upper"), c("sd_x|item", "lower"))),
                  list("sleepstudy_nointercept", fm_noint, list(c("cor_Days.(Intercept)|Subject", "lower"),
                       c("cor_Days.(Intercept)|Subject", "upper"), c("sd_Days|Subject", "lower"))),
                  list("slopes3_corr", fm_s3, list(c("cor_z.x|g", "lower"), c("cor_z.x|g", "upper"), c("cor_z.(Intercept)|g", "lower"))))) {
  ci <- confint(spec[[2]], oldNames = FALSE, quiet = TRUE)
  for (ps in spec[[3]]) {
    lv <- ci[ps[1], if (ps[2] == "lower") 1 else 2]
    r <- exact_limit(spec[[1]], spec[[2]], ps[1], ps[2], lv)
    exact[[length(exact) + 1]] <- r
    cat(spec[[1]], ps[1], ps[2], "lme4", lv, "zeta there", r$zeta_at_lme4, "exact", r$exact, "zeta", r$zeta_at_exact, "\n")
  }
}
out$profile_exact <- exact

out$versions <- list(R = R.version.string, lme4 = as.character(packageVersion("lme4")),
                     lmerTest = as.character(packageVersion("lmerTest")))
writeLines(toJSON(out, digits = NA, auto_unbox = TRUE, pretty = TRUE, na = "null"), outfile)
cat("wrote", outfile, "\n")
