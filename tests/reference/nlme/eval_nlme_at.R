# Evaluate nlme's own (REML / ML) log-likelihood at jaxmlm's variance parameters
# for sleepstudy  Reaction ~ Days, random = ~ Days | Subject,
# correlation = corAR1(form = ~ Days | Subject).
#
# Run from this directory:   Rscript eval_nlme_at.R
#
# Input:  nlme_at_jaxmlm_input.json  (jaxmlm's fixef, sigma, re_cov (absolute units),
#                                     Phi, logLik, method per case), sleepstudy.csv
# Output: nlme_at_jaxmlm_output.json
#
# How nlme's likelihood is evaluated: lme.formula is copied with its body cut right
# after `lmeSt <- Initialize(...)` (plus lme's own MEdecomp step for models without
# correlation/variance structures), so the returned lmeStruct (and grps) carry exactly
# the conLin, settings (REML / ML) and parametrisation that lme's optimiser sees.
# The parameters are set with `coef(lmeSt) <- pars` and the log-likelihood is taken
# from nlme:::MEestimate(lmeSt, grps), which is what lme itself calls after
# optimising and reports as logLik(fit). The optimiser's objective
# `-logLik(lmeSt, lmePars)` (nlme:::logLik.lmeStruct) omits a parameter-free
# constant, N' (log N' - 1 - log(2 pi)) / 2 with N' = n - p (REML) or n (ML); it is
# also reported (nlme_objective_*), and objective + constant = MEestimate's value.
# beta and sigma are profiled out inside nlme, so only the relative RE covariance
# D / sigma^2 and Phi enter. During fitting nlme's reStruct holds the relative *precision* matrix
# (sigma^2 D^-1, lme inverts it with solve() before returning), so the pdLogChol
# coefficients are those of (D / sigma^2)^-1; corAR1's coefficient is
# log((1 + Phi) / (1 - Phi)).
#
# jaxmlm's RE covariance is singular (correlation 1), which the log-Cholesky
# parametrisation cannot hold (and its inverse does not exist): nlme is evaluated
# at correlation 1 - eps (SDs kept) for several eps.
#
# Validation: the same path evaluated at nlme's own optimum (refit as in
# make_nlme_reference.R) must reproduce the fit's logLik (check_at_nlme_optimum_diff).
#
# Independent dense check without nlme: V = Z G Z' + sigma^2 R, block diagonal by
# Subject, R_ij = Phi^|Days_i - Days_j|, beta by GLS;
#   ML:   -2 l = log|V| + r'V^-1 r + n log(2 pi)
#   REML: -2 l = log|V| + log|X'V^-1 X| + r'V^-1 r + (n - p) log(2 pi)
# both "at the given sigma" and with sigma profiled (V = sigma^2 V0,
# sigma^2 = r'V0^-1 r / n (ML) or / (n - p) (REML)).

suppressPackageStartupMessages({
  library(nlme)
  library(jsonlite)
})

inp <- fromJSON("nlme_at_jaxmlm_input.json", simplifyVector = TRUE)
sleepstudy <- read.csv("sleepstudy.csv", stringsAsFactors = FALSE)
sleepstudy$Subject <- factor(sleepstudy$Subject)

# ---------------------------------------------------------------------------
# nlme: lmeStruct exactly as lme.formula sets it up before optimising
# ---------------------------------------------------------------------------

make_lme_struct <- function() {
  f <- nlme:::lme.formula
  b <- as.list(body(f))
  txt <- vapply(b, function(e) paste(deparse(e, width.cutoff = 500L), collapse = " "), "")
  i_init <- grep("^lmeSt <- Initialize\\(", txt)
  stopifnot(length(i_init) == 1L)
  newb <- c(b[seq_len(i_init)],
            quote(if (length(lmeSt) == 1) attr(lmeSt, "conLin") <- MEdecomp(attr(lmeSt, "conLin"))),
            quote(return(list(lmeSt = lmeSt, grps = grps))))
  body(f) <- as.call(newb)
  f
}
lme_struct <- make_lme_struct()

struct_for <- function(method) {
  lme_struct(Reaction ~ Days, random = ~ Days | Subject,
             correlation = corAR1(form = ~ Days | Subject),
             data = sleepstudy, method = method,
             control = lmeControl(opt = "optim"))
}

# Relative precision matrix (D / sigma^2)^-1 for SDs s (relative) and correlation r,
# computed analytically so that r close to 1 loses no accuracy.
rel_precision <- function(s, r, one_minus_r) {
  den <- one_minus_r * (1 + r)          # 1 - r^2
  Cinv <- matrix(c(1, -r, -r, 1), 2, 2) / den
  Cinv / outer(s, s)
}

# nlme's unconstrained parameter vector for relative D (via SDs + correlation) and Phi
nlme_pars <- function(st, s_rel, r, one_minus_r, Phi) {
  pd <- st$reStruct[[1]]
  P <- rel_precision(s_rel, r, one_minus_r)
  dimnames(P) <- list(Names(pd), Names(pd))
  matrix(pd) <- P
  p_re <- coef(pd, unconstrained = TRUE)
  p_cor <- log((1 + Phi) / (1 - Phi))
  pars <- c(p_re, p_cor)
  stopifnot(length(pars) == length(coef(st)))
  names(pars) <- names(coef(st))
  pars
}

# lme's reported logLik at pars (MEestimate), plus the optimiser's objective value,
# nlme's profiled sigma and beta
nlme_eval <- function(S, pars) {
  st <- S$lmeSt
  coef(st) <- pars
  est <- nlme:::MEestimate(st, S$grps)
  list(logLik = as.numeric(est$logLik),
       objective_logLik = as.numeric(nlme:::logLik.lmeStruct(S$lmeSt, pars)),
       sigma = est$sigma, beta = as.vector(est$beta))
}

# ---------------------------------------------------------------------------
# Dense check (no nlme)
# ---------------------------------------------------------------------------

blocks <- split(seq_len(nrow(sleepstudy)), sleepstudy$Subject)
Xall <- cbind(1, sleepstudy$Days)
yall <- sleepstudy$Reaction

# G absolute (or relative), s2 = sigma^2 (1 for relative V0)
dense_pieces <- function(G, s2, Phi) {
  logdetV <- 0
  XtVX <- matrix(0, 2, 2)
  XtVy <- c(0, 0)
  blk <- list()
  for (idx in blocks) {
    d <- sleepstudy$Days[idx]
    Z <- cbind(1, d)
    R <- Phi^abs(outer(d, d, "-"))
    V <- Z %*% G %*% t(Z) + s2 * R
    cV <- chol(V)
    logdetV <- logdetV + 2 * sum(log(diag(cV)))
    X <- Xall[idx, , drop = FALSE]
    y <- yall[idx]
    VX <- backsolve(cV, forwardsolve(t(cV), X))
    Vy <- backsolve(cV, forwardsolve(t(cV), y))
    XtVX <- XtVX + crossprod(X, VX)
    XtVy <- XtVy + crossprod(X, Vy)
    blk[[length(blk) + 1L]] <- list(cV = cV, X = X, y = y)
  }
  beta <- solve(XtVX, XtVy)
  rss <- 0
  for (b in blk) {
    r <- b$y - b$X %*% beta
    w <- forwardsolve(t(b$cV), r)
    rss <- rss + sum(w^2)
  }
  list(logdetV = logdetV, logdetXVX = as.numeric(determinant(XtVX)$modulus),
       rss = rss, beta = as.vector(beta))
}

n <- nrow(sleepstudy)
p <- ncol(Xall)

# at the given sigma (G and sigma in absolute units)
dense_at_sigma <- function(G, sigma, Phi, method) {
  a <- dense_pieces(G, sigma^2, Phi)
  if (method == "ML") {
    -0.5 * (a$logdetV + a$rss + n * log(2 * pi))
  } else {
    -0.5 * (a$logdetV + a$logdetXVX + a$rss + (n - p) * log(2 * pi))
  }
}

# sigma profiled; Grel = G / sigma^2
dense_profiled <- function(Grel, Phi, method) {
  a <- dense_pieces(Grel, 1, Phi)
  m <- if (method == "ML") n else n - p
  s2 <- a$rss / m
  ll <- if (method == "ML") {
    -0.5 * (n * log(2 * pi * s2) + a$logdetV + n)
  } else {
    -0.5 * ((n - p) * log(2 * pi * s2) + a$logdetV + a$logdetXVX + (n - p))
  }
  list(logLik = ll, sigma = sqrt(s2), beta = a$beta)
}

# ---------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------

eps_list <- c(1e-4, 1e-6, 1e-8, 1e-10)
case_names <- c(REML = "sleep_ar1_reml", ML = "sleep_ar1_ml")
out <- list()

for (method in names(case_names)) {
  cs <- case_names[[method]]
  jx <- inp[[cs]]
  stopifnot(identical(jx$method, method))

  # --- nlme's own fit, as in make_nlme_reference.R
  fit <- lme(Reaction ~ Days, random = ~ Days | Subject,
             correlation = corAR1(form = ~ Days | Subject),
             data = sleepstudy, method = method,
             control = lmeControl(opt = "optim"))
  ll_fit <- as.numeric(logLik(fit))
  ll_ref <- fromJSON(paste0(cs, ".json"))$logLik      # make_nlme_reference.R's value
  sig_fit <- fit$sigma
  Drel_fit <- as.matrix(fit$modelStruct$reStruct[[1]])    # D / sigma^2 (inverted back by lme)
  Phi_fit <- as.numeric(coef(fit$modelStruct$corStruct, unconstrained = FALSE))
  s_fit <- sqrt(diag(Drel_fit))
  r_fit <- Drel_fit[1, 2] / prod(s_fit)

  S <- struct_for(method)
  st <- S$lmeSt
  pars_fit <- nlme_pars(st, s_fit, r_fit, 1 - r_fit, Phi_fit)
  ev_fit <- nlme_eval(S, pars_fit)
  ll_check <- ev_fit$logLik
  Np <- n - (method == "REML") * p
  objective_const <- Np * (log(Np) - 1 - log(2 * pi)) / 2
  dense_fit_sig <- dense_at_sigma(Drel_fit * sig_fit^2, sig_fit, Phi_fit, method)
  dense_fit_prof <- dense_profiled(Drel_fit, Phi_fit, method)

  # --- jaxmlm's values
  G <- matrix(unlist(jx$re_cov), 2, 2, byrow = TRUE)
  sig <- jx$sigma
  Phi <- jx$Phi
  Grel <- G / sig^2
  s_rel <- sqrt(diag(Grel))
  r_jx <- Grel[1, 2] / prod(s_rel)

  pert <- lapply(eps_list, function(eps) {
    r <- 1 - eps
    pars <- nlme_pars(st, s_rel, r, eps, Phi)
    ev <- nlme_eval(S, pars)
    Gp <- diag(s_rel) %*% matrix(c(1, r, r, 1), 2, 2) %*% diag(s_rel)
    list(eps = eps, correlation = r, nlme_logLik = ev$logLik,
         nlme_objective_logLik = ev$objective_logLik,
         nlme_sigma = ev$sigma,
         nlme_fixef = as.list(setNames(ev$beta, names(jx$fixef))),
         dense_logLik_profiled = dense_profiled(Gp, Phi, method)$logLik)
  })
  ll_nlme_jx <- pert[[which(eps_list == 1e-8)]]$nlme_logLik
  ll_nlme_jx_1e6 <- pert[[which(eps_list == 1e-6)]]$nlme_logLik

  dense_sig <- dense_at_sigma(G, sig, Phi, method)
  dense_prof <- dense_profiled(Grel, Phi, method)

  out[[cs]] <- list(
    method = method,
    nlme_logLik_at_jaxmlm = ll_nlme_jx,
    nlme_logLik_at_jaxmlm_correlation = 1 - 1e-8,
    nlme_logLik_at_jaxmlm_cor_1m1e6 = ll_nlme_jx_1e6,
    nlme_logLik_at_jaxmlm_perturbed = pert,
    jaxmlm_logLik = jx$logLik,
    jaxmlm_correlation = r_jx,
    jaxmlm_rel_sd = as.list(setNames(s_rel, jx$re_names)),
    jaxmlm_Phi = Phi,
    dense_logLik_at_jaxmlm = dense_sig,
    dense_logLik_at_jaxmlm_profiled_sigma = dense_prof$logLik,
    dense_profiled_sigma_at_jaxmlm = dense_prof$sigma,
    dense_profiled_fixef_at_jaxmlm = as.list(setNames(dense_prof$beta, names(jx$fixef))),
    nlme_logLik_at_nlme_optimum = ll_fit,
    reference_json_logLik_diff = ll_fit - ll_ref,
    nlme_optimum = list(sigma = sig_fit, Phi = Phi_fit, correlation = r_fit,
                        re_cov = lapply(1:2, function(i) unname((Drel_fit * sig_fit^2)[i, ])),
                        fixef = as.list(fixef(fit))),
    check_at_nlme_optimum = ll_check,
    check_at_nlme_optimum_diff = ll_check - ll_fit,
    check_at_nlme_optimum_sigma_diff = ev_fit$sigma - sig_fit,
    nlme_objective_at_nlme_optimum = ev_fit$objective_logLik,
    nlme_objective_constant = objective_const,
    nlme_objective_plus_constant_minus_logLik = ev_fit$objective_logLik + objective_const - ll_fit,
    dense_at_nlme_optimum = dense_fit_sig,
    dense_at_nlme_optimum_diff = dense_fit_sig - ll_fit,
    dense_profiled_at_nlme_optimum = dense_fit_prof$logLik,
    dense_profiled_at_nlme_optimum_diff = dense_fit_prof$logLik - ll_fit,
    jaxmlm_minus_nlme_optimum = jx$logLik - ll_fit,
    nlme_at_jaxmlm_minus_nlme_optimum = ll_nlme_jx - ll_fit,
    evaluation = paste(
      "nlme: lme.formula cut after Initialize() gives the lmeStruct (and grps) lme optimises;",
      "coef(lmeSt) <- pars, then nlme:::MEestimate(lmeSt, grps)$logLik (what lme reports),",
      "pars = c(pdLogChol coef of the relative precision (D/sigma^2)^-1, log((1+Phi)/(1-Phi))),",
      "beta and sigma profiled by nlme. The optimiser's objective (nlme:::logLik.lmeStruct)",
      "is that minus the constant N'(log N' - 1 - log 2pi)/2 (nlme_objective_*).",
      "jaxmlm's D has correlation 1, so it is",
      "evaluated at correlation 1 - eps with the SDs kept; nlme_logLik_at_jaxmlm uses",
      "eps = 1e-8. dense: marginal Gaussian logLik from V = Z G Z' + sigma^2 R",
      "(R_ij = Phi^|Days_i - Days_j|), GLS beta, at jaxmlm's sigma (dense_logLik_at_jaxmlm)",
      "and with sigma profiled (..._profiled_sigma), at correlation 1 exactly.")
  )
  message(sprintf("[%s] nlme at jaxmlm (1-1e-8) = %.8f  jaxmlm = %.8f  nlme opt = %.8f  check diff = %.3g  dense = %.8f",
                  cs, ll_nlme_jx, jx$logLik, ll_fit, ll_check - ll_fit, dense_sig))
}

out$nlme_version <- as.character(packageVersion("nlme"))
out$R_version <- R.version.string

write_json(out, "nlme_at_jaxmlm_output.json", auto_unbox = TRUE, digits = NA,
           pretty = TRUE, null = "null")
