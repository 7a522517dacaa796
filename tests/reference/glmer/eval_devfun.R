# eval_devfun.R -- evaluate lme4's own deviance function of a reference case at given parameters.
#
# Usage (from tests/reference/glmer):
#   Rscript eval_devfun.R INPUT.json [OUTPUT.json]
# INPUT.json:  {"<case id>": {"theta": [...], "beta": [...]}, ...}
#   theta in the order of the case JSON's theta_names (getME(m, "theta")), beta in the order of
#   beta_names (fixef(m)); each may also be an object keyed by those names.
# Output (printed, and written to OUTPUT.json if given):
#   {"<id>": {"devfun_at_given": ., "devfun_at_lme4": ., "minus2loglik_lme4": .,
#             "devfun_tight_at_given": ., "devfun_tight_at_lme4": .}, ...}
#   devfun_at_lme4 is the same devfun at the case JSON's theta / fixef; minus2loglik_lme4 is
#   -2 * the JSON's loglik.  The *_tight_* values use the same call with
#   control = glmerControl(tolPwrss = 1e-13) (lme4's default is 1e-7); null if that fails.
#   (1e-10 is not enough on e.g. contra_logit: still 1.2e-4 above the exact Laplace value.)
#
# IMPORTANT: with lme4's default tolPwrss = 1e-7 the inner PIRLS loop stops early enough that
# the default devfun is NOT the exact Laplace deviance: on cbpp it is 5.6e-4 above it
# (184.053133 vs 184.052572 at lme4's estimates; with tolPwrss = 1e-13, or computing the
# Laplace approximation by hand per herd, or with glmmTMB's objective at the same parameters,
# one gets 184.052572).  So compare an exact-Laplace objective with the *_tight_* values; the
# default-tolerance values are what lme4 optimised and reports as -2*logLik.
#
# The case is rebuilt from <id>.json (formula, family_call, nAGQ, data CSV + factor_levels,
# weights, offset) and its deviance function is made by evaluating lme4's call with
# devFunOnly = TRUE -- this is exactly what update(m, devFunOnly = TRUE) does (update re-evaluates
# m@call with that argument added), without refitting m first.
#   nAGQ >= 1: devfun(c(theta, beta)).
#   nAGQ == 0: devfun(theta); beta is not an argument (PIRLS optimises it jointly with the
#              random effects), so "beta" of the input is ignored.
#   glmer.nb:  the NB shape is held at the case's nb_theta (glmer.nb's final fit is
#              glmer(..., family = MASS::negative.binomial(theta = nb_theta)), see the JSON's
#              "call"); devfun(c(theta, beta)) at that shape.  The shape is NOT a parameter.
# A fresh devfun is made for each evaluation: lme4's PIRLS starts from the devfun's stored state,
# so the value can otherwise depend (at the PIRLS tolerance) on earlier calls.
#
# What the value is (checked on every case by make_glmer_reference.R at lme4's own estimates,
# see devfun_selftest_output.json):
#   nAGQ = 1 (Laplace): devfun(c(theta, beta)) == -2 * logLik(m) (identical to 1e-10) for all
#     cases but nb_glmer.  The value is resp$aic() + log|L|^2 + ||u||^2, where aic() is the
#     family's aic(), i.e. -2 * the FULL log density:
#       binomial: -2 * sum(dbinom(log = TRUE)) INCLUDING log choose(n, y); cbind(s, n - s) and
#         prop with weights = n give the same value (cbpp_cbind and cbpp_prop: 184.0531327791);
#       poisson: -2 * sum(dpois(log = TRUE)) incl. -log(y!);
#       negative.binomial (MASS): the full NB log density at the fixed shape.
#     An offset only enters the linear predictor: pois_offset (offset() in the formula) and
#     pois_offset_arg (glmer's offset argument) have identical devfun and logLik; no log(expo)
#     term is added to or dropped from the likelihood.  glmmTMB uses the same full densities.
#   nb_glmer: devfun at lme4's (theta, beta) with the NB shape at nb_theta is 3.3e-4 BELOW
#     -2*logLik(m) (1697.90742 vs 1697.90775): glmer.nb's object carries the deviance of its
#     own last PIRLS state (that fit also has a convergence warning).
#   nAGQ > 1 (cbpp_agq5/9/25): devfun == -2*logLik(m), but on a different scale from nAGQ = 1:
#     lme4's AGQ deviance is built from deviance residuals, so logLik(m) = (AGQ log-likelihood)
#     - (saturated log-likelihood).  For cbpp, -2 * saturated loglik = 83.9567075379, and
#     loglik + loglik_saturated (both in the case JSON) is the full-scale AGQ log-likelihood
#     (cbpp_agq25: equal to the integrate() value loglik_exact_at_lme4 to 1e-10).
#   nAGQ = 0: devfun(theta) == -2*logLik(m): the Laplace deviance at theta, with beta taken at
#     the joint PIRLS mode of (beta, u) (so beta is not an argument).
suppressPackageStartupMessages({library(lme4); library(jsonlite); library(MASS)})

args <- commandArgs(TRUE)
if (length(args) < 1) stop("usage: Rscript eval_devfun.R INPUT.json [OUTPUT.json]")
inp <- fromJSON(args[1], simplifyVector = TRUE)

# Case JSONs live next to this script.
file_arg <- grep("^--file=", commandArgs(FALSE), value = TRUE)
here <- if (length(file_arg)) dirname(normalizePath(sub("^--file=", "", file_arg[1]))) else "."

read_case_data <- function(ref) {
  lev <- ref$factor_levels
  cc <- NA
  path <- file.path(here, ref$data)
  hdr <- names(read.csv(path, nrows = 1, check.names = FALSE))
  cc <- setNames(ifelse(hdr %in% names(lev), "character", NA), hdr)
  dat <- read.csv(path, colClasses = cc, check.names = FALSE)
  for (v in names(lev)) dat[[v]] <- factor(dat[[v]], levels = lev[[v]])
  dat
}

devfun_call <- function(ref, tolPwrss = NULL) {
  fml <- as.formula(ref$formula, env = globalenv())
  fam <- if (identical(ref$family_call, "glmer.nb"))
    bquote(MASS::negative.binomial(theta = .(ref$nb_theta))) else str2lang(ref$family_call)
  cl <- bquote(glmer(.(fml), data = dat, family = .(fam), nAGQ = .(ref$nAGQ), devFunOnly = TRUE))
  if (!is.null(ref$weights)) cl$weights <- as.name(ref$weights)
  if (isTRUE(ref$offset_argument)) cl$offset <- str2lang(ref$offset)
  if (!is.null(tolPwrss)) cl$control <- bquote(glmerControl(tolPwrss = .(tolPwrss)))
  cl
}

pars <- function(ref, theta, beta) {
  theta <- unlist(theta); beta <- unlist(beta)
  if (!is.null(names(theta))) theta <- theta[ref$theta_names]
  if (!is.null(names(beta))) beta <- beta[ref$beta_names]
  stopifnot(length(theta) == length(ref$theta_names))
  if (ref$nAGQ == 0) return(unname(theta))
  stopifnot(length(beta) == length(ref$beta_names))
  unname(c(theta, beta))
}

TIGHT <- 1e-13   # tolPwrss of the "tight" devfun (lme4's default is 1e-7)
res <- list()
for (id in names(inp)) {
  ref <- fromJSON(file.path(here, paste0(id, ".json")), simplifyVector = TRUE)
  dat <- read_case_data(ref)
  eval_at <- function(p, tol = NULL) {
    cl <- devfun_call(ref, tol)
    tryCatch({
      df <- suppressMessages(eval(cl))
      as.numeric(df(p))
    }, error = function(e) NA_real_)
  }
  given <- pars(ref, inp[[id]]$theta, inp[[id]]$beta)
  lme4p <- pars(ref, ref$theta, ref$fixef)
  res[[id]] <- list(devfun_at_given = eval_at(given), devfun_at_lme4 = eval_at(lme4p),
                    minus2loglik_lme4 = -2 * ref$loglik,
                    devfun_tight_at_given = eval_at(given, TIGHT),
                    devfun_tight_at_lme4 = eval_at(lme4p, TIGHT))
  with(res[[id]], cat(sprintf("%-16s given %.10f  lme4 %.10f  -2logLik %.10f | tight: given %.10f  lme4 %.10f\n",
              id, devfun_at_given, devfun_at_lme4, minus2loglik_lme4, devfun_tight_at_given,
              devfun_tight_at_lme4), file = stderr()))
}
js <- toJSON(res, digits = NA, auto_unbox = TRUE, pretty = TRUE)
cat(js, "\n")
if (length(args) >= 2) writeLines(js, args[2])
