# make_glmer_profile.R -- profile-likelihood confidence intervals of glmer reference cases, from
# lme4's profile() and from a direct ("exact") profile of lme4's own deviance function.
#
# Makes, in the folder this script is run from (tests/reference/glmer):
#   profile_glmer.json   {"<case id>": {...}} for the cases in CASES below (fields: see "Output").
#
# Usage:  cd tests/reference/glmer && Rscript make_glmer_profile.R      (a few minutes; most of it
#         is lme4's profile() of contra_slope)
# Needs the case JSONs (<id>.json) and data/*.csv made by make_glmer_reference.R; it rewrites
# nothing else.
#
# Made with R 4.2.2 Patched (2022-11-10 r83330), lme4 1.1.31, minqa 1.2.5, Matrix 1.5.3,
# MASS 7.3.58.2, jsonlite 1.8.4.  JSON is written with jsonlite::write_json(digits = NA,
# auto_unbox = TRUE, pretty = TRUE, na = "null", null = "null"): 15 significant digits, NA and
# NULL as JSON null.  Deterministic (no random numbers).
#
# Method, per case:
#  1. Refit the case exactly as its <id>.json describes (data/<name>.csv read back with the
#     JSON's factor_levels as in eval_devfun.R; same formula, family, nAGQ, weights, offset
#     argument; glmer.nb for nb_glmer) and check that logLik equals the JSON's loglik to 1e-6
#     (a mismatch is recorded under "errors").
#  2. lme4's profile intervals:
#       lme4_confint_fine    = confint(profile(m, signames = FALSE, delta.cutoff = 1/32), level = 0.95)
#       lme4_confint_default = confint(m, method = "profile", oldNames = FALSE)   (delta.cutoff = 1/8)
#     Each as {rows, lower, upper}; an error is stored as {error = message} and under "errors";
#     warnings/messages of profile() are stored (unique, with counts) under "lme4_messages_*".
#     lme4 interpolates the profile (zeta as a spline of the parameter) between grid points,
#     and uses -2*logLik(m) as the base deviance.
#  3. "Exact" profile limits, without lme4's spline, for every fixed effect and for the SD of
#     every scalar random-effect term (x | g) with one column (SD = theta there, theta >= 0):
#       dd <- update(m, devFunOnly = TRUE)    # lme4's deviance function of c(theta, beta)
#                                             # (nAGQ >= 1; for nb_glmer it is glmer's devfun at
#                                             # the fixed NB shape getME(m, "glmer.nb.theta"),
#                                             # since m@call is glmer(..., negative.binomial(theta = .)))
#       x0 = c(getME(m, "theta"), fixef(m)),  D0 = dd(x0)   (D0 + 2*logLik(m) is stored).
#     For parameter j and value v: Dstar(v) = min over the other coordinates of dd(x, x[j] = v),
#     minimised with minqa::bobyqa (lower bounds getME(m, "lower") for theta -- 0 for diagonal
#     entries, -Inf otherwise -- and -Inf for beta; coordinates scaled by 0.25 for theta and by
#     the Wald SE for beta; rhobeg = 0.05 in those scaled units, rhoend = 1e-9, maxfun = 20000;
#     started at the solution of the nearest v already evaluated, the estimates at first;
#     optimize() if only one coordinate is free, plain evaluation if none).  The devfun is
#     re-evaluated at x0 before each parameter (its PIRLS starts from its last state).
#       zeta(v) = sign(v - vhat) * sqrt(max(Dstar(v) - D0, 0)).
#     Limits: roots of zeta(v) = -/+ qnorm(0.975), by uniroot(tol = 1e-10) on a bracket found by
#     stepping outward from the estimate (first step 2 scale units, then growing by 1.5x).
#     For an SD with estimate 0, or with zeta(0) > -qnorm(0.975), the lower limit is 0 (as in
#     lme4's confint).  Names follow lme4's signames = FALSE: "sd_(Intercept)|herd", and the
#     fixed-effect names of fixef(m).
#     Also D0_min: dd minimised over all coordinates from x0 (bobyqa as above); D0 - D0_min
#     shows how far lme4's estimates are from the devfun's minimum (only nb_glmer is
#     noticeably off, where lme4 warns about convergence).  If D0 - D0_min > 1e-6 the exact
#     limits are also computed against D0_min (key "exact_vs_D0_min"), and if |D0 + 2*logLik(m)|
#     > 1e-6 also against lme4's base -2*logLik(m) (key "exact_vs_minus2loglik"; nb_glmer only:
#     glmer.nb's logLik is not its devfun at the reported estimates).
#     zeta(0) is stored for every SD ("exact_zeta_at_0"; 0 where the estimate is 0).
#     Vector terms (e.g. contra_slope's (urban | district)) are not profiled exactly.
#
# Output, per case id:
#   id, formula, family_call, nAGQ, R_version, lme4_version, loglik (refit), loglik_json,
#   loglik_ok, theta, fixef, nb_theta (nb_glmer), minus2loglik, D0, D0_minus_minus2loglik
#   (= D0 + 2 logLik), D0_min, D0_minus_D0_min, lme4_confint_fine, lme4_confint_default
#   ({rows, lower, upper} or {error}), lme4_messages_fine, lme4_messages_default,
#   exact ({param: [lower, upper]}), exact_zeta_err ({param: [|zeta-target| at lower, at upper]},
#   null where the limit is the 0 boundary), exact_zeta_at_0 ({sd param: zeta(0)}),
#   exact_nfun (devfun evaluations per param), exact_vs_D0_min / exact_vs_D0_min_zeta_err and
#   exact_vs_minus2loglik / exact_vs_minus2loglik_zeta_err (if computed), exact_note, diff_fine_vs_exact ({param: [lower diff, upper diff]}, lme4 fine -
#   exact) and max_abs_diff_fine_vs_exact, seconds_profile_fine, seconds_profile_default,
#   seconds_exact, errors (null if none).
suppressPackageStartupMessages({
  library(lme4); library(jsonlite); library(MASS); library(minqa)
})

t_start <- proc.time()[["elapsed"]]
CASES <- c("cbpp_cbind", "cbpp_agq5", "contra_slope", "grouse_pois", "singular_bern",
           "pois_offset", "nb_glmer")
LEVEL <- 0.95
ZCRIT <- qnorm(1 - (1 - LEVEL) / 2)
THETA_SCALE <- 0.25

# ---------------------------------------------------------------------------------------------
# Helpers copied from eval_devfun.R / make_tight_reference.R / make_glmer_reference.R
# ---------------------------------------------------------------------------------------------
# Data of a case: factor columns (those in factor_levels) read as character and re-made with
# the recorded level order.
read_case_data <- function(ref) {
  lev <- ref$factor_levels
  hdr <- names(read.csv(ref$data, nrows = 1, check.names = FALSE))
  cc <- setNames(ifelse(hdr %in% names(lev), "character", NA), hdr)
  dat <- read.csv(ref$data, colClasses = cc, check.names = FALSE)
  for (v in names(lev)) {
    dat[[v]] <- factor(dat[[v]], levels = lev[[v]])
    stopifnot(!anyNA(dat[[v]]))
  }
  dat
}

# The lme4 call of a case, as lme4_call() in make_glmer_reference.R (`dat` is looked up where
# the call is evaluated: the global environment here).
case_call <- function(ref) {
  fml <- as.formula(ref$formula, env = globalenv())
  if (identical(ref$family_call, "glmer.nb")) return(bquote(glmer.nb(.(fml), data = dat)))
  cl <- bquote(glmer(.(fml), data = dat, family = .(str2lang(ref$family_call))))
  if (ref$nAGQ != 1) cl$nAGQ <- ref$nAGQ
  if (!is.null(ref$weights)) cl$weights <- as.name(ref$weights)
  if (isTRUE(ref$offset_argument)) cl$offset <- str2lang(ref$offset)
  cl
}

# Evaluate expr, collecting warnings and messages (muffled); errors are caught into $error.
collect <- function(expr) {
  msgs <- character(0)
  val <- tryCatch(withCallingHandlers(expr,
    warning = function(w) { msgs <<- c(msgs, paste("warning:", conditionMessage(w))); invokeRestart("muffleWarning") },
    message = function(m) { msgs <<- c(msgs, paste("message:", trimws(conditionMessage(m)))); invokeRestart("muffleMessage") }),
    error = function(e) e)
  if (inherits(val, "error")) return(list(value = NULL, error = conditionMessage(val), msgs = msgs))
  list(value = val, error = NULL, msgs = msgs)
}
# Unique messages with their counts ("(n times) msg"); NULL if none.
msg_summary <- function(msgs) {
  if (!length(msgs)) return(NULL)
  tab <- table(factor(msgs, levels = unique(msgs)))
  unname(ifelse(tab > 1, sprintf("(%d times) %s", as.integer(tab), names(tab)), names(tab)))
}
ci_table <- function(ci) {
  list(rows = rownames(ci), lower = unname(ci[, 1]), upper = unname(ci[, 2]))
}

# ---------------------------------------------------------------------------------------------
# Exact profile of lme4's devfun
# ---------------------------------------------------------------------------------------------
# dd: devfun of c(theta, beta); x0: estimates; lower: bounds; s: scales.
# Returns a function Dstar(j, v) -> list(value, x, nfun), with a per-j cache of solutions
# used for warm starts.
make_profiler <- function(dd, x0, lower, s) {
  cache <- list()   # per j: list of (v, x)
  nfun <- 0L
  D <- function(x) { nfun <<- nfun + 1L; as.numeric(dd(x)) }
  Dstar <- function(j, v) {
    key <- as.character(j)
    cj <- cache[[key]]
    start <- x0
    if (length(cj)) {
      vs <- vapply(cj, `[[`, 0, "v")
      start <- cj[[which.min(abs(vs - v))]]$x
    }
    free <- setdiff(seq_along(x0), j)
    x <- start; x[j] <- v
    if (length(free) == 0) {
      val <- D(x)
    } else {
      z0 <- (start[free] - x0[free]) / s[free]
      zl <- (lower[free] - x0[free]) / s[free]
      z0 <- pmax(z0, zl)
      f <- function(z) { xx <- x; xx[free] <- x0[free] + s[free] * z; D(xx) }
      if (length(free) == 1) {
        lo <- max(zl, z0 - 30); hi <- z0 + 30
        o <- optimize(f, c(lo, hi), tol = 1e-10)
        zb <- o$minimum; val <- o$objective
        if (f(z0) < val) { zb <- z0; val <- f(z0) }
      } else {
        o <- bobyqa(z0, f, lower = zl, upper = rep(Inf, length(free)),
                    control = list(rhobeg = 0.05, rhoend = 1e-9, maxfun = 20000, iprint = 0))
        zb <- o$par; val <- o$fval
      }
      x[free] <- x0[free] + s[free] * zb
    }
    cache[[key]] <<- c(cache[[key]], list(list(v = v, x = x)))
    list(value = val, x = x)
  }
  list(Dstar = Dstar, nfun = function() nfun, reset = function() { nfun <<- 0L })
}

# Lower/upper exact limits of parameter j against base deviance D0.
exact_limits <- function(prof, j, x0, s, D0, is_sd, dd) {
  vhat <- x0[j]
  invisible(dd(x0))   # reset the devfun's PIRLS state to the optimum
  zeta <- function(v) {
    d <- prof$Dstar(j, v)$value
    sign(v - vhat) * sqrt(max(d - D0, 0))
  }
  root <- function(side) {       # side = +1 upper, -1 lower
    target <- side * ZCRIT
    f <- function(v) zeta(v) - target
    a <- vhat; fa <- -target     # zeta(vhat) = 0
    h <- 2 * s[j]
    b <- vhat + side * h
    if (is_sd && side < 0) b <- max(b, 0)
    fb <- f(b)
    k <- 0
    while (side * fb < 0) {      # not yet past the target
      if (is_sd && side < 0 && b == 0) return(list(limit = 0, err = NULL, zeta0 = fb + target))
      k <- k + 1
      if (k > 60) stop("no bracket found")
      a <- b; fa <- fb
      h <- 1.5 * h
      b <- vhat + side * h
      if (is_sd && side < 0) b <- max(b, 0)
      fb <- f(b)
    }
    ur <- uniroot(f, lower = min(a, b), upper = max(a, b),
                  f.lower = if (a < b) fa else fb, f.upper = if (a < b) fb else fa,
                  tol = 1e-10, maxiter = 1000)
    list(limit = ur$root, err = abs(ur$f.root), zeta0 = if (is_sd && side < 0 && b == 0) fb + target else NULL)
  }
  if (is_sd && vhat == 0) {
    lo <- list(limit = 0, err = NULL, zeta0 = 0)
  } else lo <- root(-1)
  hi <- root(+1)
  z0 <- NULL
  if (is_sd) z0 <- if (!is.null(lo$zeta0)) lo$zeta0 else zeta(0)
  list(lower = lo$limit, upper = hi$limit, err = list(lo$err, hi$err), zeta0 = z0)
}

# All exact limits of a model against D0.
exact_profile <- function(m, dd, x0, D0, params) {
  lower <- c(getME(m, "lower"), rep(-Inf, length(fixef(m))))
  s <- c(rep(THETA_SCALE, length(getME(m, "theta"))), sqrt(diag(as.matrix(vcov(m)))))
  res <- list(); err <- list(); z0 <- list(); nf <- list()
  for (nm in names(params)) {
    prof <- make_profiler(dd, x0, lower, s)
    j <- params[[nm]]$j
    r <- exact_limits(prof, j, x0, s, D0, params[[nm]]$is_sd, dd)
    res[[nm]] <- c(r$lower, r$upper)
    err[[nm]] <- r$err
    if (params[[nm]]$is_sd) z0[[nm]] <- r$zeta0
    nf[[nm]] <- prof$nfun()
  }
  list(limits = res, err = err, zeta0 = z0, nfun = nf)
}

# Parameters profiled exactly: SDs of scalar terms (index into theta) and all fixed effects.
exact_params <- function(m) {
  cnms <- getME(m, "cnms")
  nth <- vapply(cnms, function(cn) length(cn) * (length(cn) + 1) / 2, 0)
  off <- cumsum(c(0, nth))
  p <- list()
  for (i in seq_along(cnms)) if (length(cnms[[i]]) == 1)
    p[[paste0("sd_", cnms[[i]], "|", names(cnms)[i])]] <- list(j = off[i] + 1, is_sd = TRUE)
  nt <- length(getME(m, "theta"))
  fe <- names(fixef(m))
  for (k in seq_along(fe)) p[[fe[k]]] <- list(j = nt + k, is_sd = FALSE)
  p
}

# ---------------------------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------------------------
out <- list()
rows <- list()
for (id in CASES) {
  ref <- fromJSON(paste0(id, ".json"), simplifyVector = TRUE)
  dat <- read_case_data(ref)            # global: lme4's update()/profile() re-evaluate m@call
  errors <- character(0)
  fit <- collect(eval(case_call(ref)))
  if (!is.null(fit$error)) stop(id, ": refit failed: ", fit$error)
  m <- fit$value
  ll <- as.numeric(logLik(m))
  ll_ok <- abs(ll - ref$loglik) <= 1e-6
  if (!ll_ok) errors <- c(errors, sprintf("refit logLik %.10f differs from JSON loglik %.10f", ll, ref$loglik))
  is_nb <- identical(ref$family_call, "glmer.nb")

  # lme4's profile intervals.
  t0 <- proc.time()[["elapsed"]]
  fine <- collect(confint(profile(m, signames = FALSE, delta.cutoff = 1/32), level = LEVEL))
  t_fine <- proc.time()[["elapsed"]] - t0
  t0 <- proc.time()[["elapsed"]]
  dflt <- collect(confint(m, method = "profile", oldNames = FALSE, level = LEVEL))
  t_dflt <- proc.time()[["elapsed"]] - t0
  if (!is.null(fine$error)) errors <- c(errors, paste("lme4 profile (fine):", fine$error))
  if (!is.null(dflt$error)) errors <- c(errors, paste("lme4 confint (default):", dflt$error))
  fine_tab <- if (is.null(fine$error)) ci_table(fine$value) else list(error = fine$error)
  dflt_tab <- if (is.null(dflt$error)) ci_table(dflt$value) else list(error = dflt$error)

  # Exact profile.
  t0 <- proc.time()[["elapsed"]]
  x0 <- c(getME(m, "theta"), fixef(m))
  ex <- NULL; ex2 <- NULL; ex3 <- NULL; D0 <- NA_real_; D0min <- NA_real_; note <- NULL
  exr <- tryCatch({
    dd <- update(m, devFunOnly = TRUE)
    D0 <- as.numeric(dd(x0))
    # minimum of the devfun over all coordinates, from x0
    lower_all <- c(getME(m, "lower"), rep(-Inf, length(fixef(m))))
    s_all <- c(rep(THETA_SCALE, length(getME(m, "theta"))), sqrt(diag(as.matrix(vcov(m)))))
    fz <- function(z) as.numeric(dd(x0 + s_all * z))
    om <- bobyqa(rep(0, length(x0)), fz, lower = (lower_all - x0) / s_all,
                 control = list(rhobeg = 0.05, rhoend = 1e-9, maxfun = 20000, iprint = 0))
    D0min <- min(om$fval, D0)
    params <- exact_params(m)
    ex <- exact_profile(m, dd, x0, D0, params)
    if (D0 - D0min > 1e-6) ex2 <- exact_profile(m, dd, x0, D0min, params)
    if (abs(D0 + 2 * ll) > 1e-6) ex3 <- exact_profile(m, dd, x0, -2 * ll, params)
    TRUE
  }, error = function(e) conditionMessage(e))
  t_exact <- proc.time()[["elapsed"]] - t0
  if (!isTRUE(exr)) errors <- c(errors, paste("exact profile:", exr))
  nonscalar <- names(getME(m, "cnms"))[lengths(getME(m, "cnms")) > 1]
  if (length(nonscalar)) note <- paste0("random-effect parameters of the non-scalar term(s) of ",
    paste(nonscalar, collapse = ", "), " (sd/cor of a vector term) are not profiled exactly; ",
    "only the fixed effects and SDs of scalar terms are.")
  if (is_nb) note <- paste("glmer.nb: exact profile of glmer's devfun at the fixed NB shape",
                           "getME(m, 'glmer.nb.theta') (the shape is not profiled); lme4's profile()",
                           "of the glmer.nb object likewise holds the shape fixed.")

  # lme4 fine vs exact.
  dif <- NULL; maxdif <- NA_real_
  if (!is.null(ex) && is.null(fine$error)) {
    ci <- fine$value
    dif <- list()
    for (nm in names(ex$limits)) if (nm %in% rownames(ci))
      dif[[nm]] <- unname(ci[nm, ] - ex$limits[[nm]])
    maxdif <- max(abs(unlist(dif)), na.rm = TRUE)
  }

  out[[id]] <- list(
    id = id,
    formula = ref$formula,
    family_call = ref$family_call,
    nAGQ = unname(m@devcomp$dims[["nAGQ"]]),
    R_version = R.version.string,
    lme4_version = as.character(packageVersion("lme4")),
    minqa_version = as.character(packageVersion("minqa")),
    loglik = ll,
    loglik_json = ref$loglik,
    loglik_ok = ll_ok,
    theta = as.list(getME(m, "theta")),
    fixef = as.list(fixef(m)),
    nb_theta = if (is_nb) getME(m, "glmer.nb.theta") else NULL,
    minus2loglik = -2 * ll,
    D0 = D0,
    D0_minus_minus2loglik = D0 + 2 * ll,
    D0_min = D0min,
    D0_minus_D0_min = D0 - D0min,
    lme4_confint_fine = fine_tab,
    lme4_confint_default = dflt_tab,
    lme4_messages_fine = msg_summary(fine$msgs),
    lme4_messages_default = msg_summary(dflt$msgs),
    exact = if (!is.null(ex)) ex$limits else NULL,
    exact_zeta_err = if (!is.null(ex)) ex$err else NULL,
    exact_zeta_at_0 = if (!is.null(ex) && length(ex$zeta0)) ex$zeta0 else NULL,
    exact_nfun = if (!is.null(ex)) ex$nfun else NULL,
    exact_vs_D0_min = if (!is.null(ex2)) ex2$limits else NULL,
    exact_vs_D0_min_zeta_err = if (!is.null(ex2)) ex2$err else NULL,
    exact_vs_minus2loglik = if (!is.null(ex3)) ex3$limits else NULL,
    exact_vs_minus2loglik_zeta_err = if (!is.null(ex3)) ex3$err else NULL,
    exact_note = note,
    diff_fine_vs_exact = dif,
    max_abs_diff_fine_vs_exact = maxdif,
    seconds_profile_fine = t_fine,
    seconds_profile_default = t_dflt,
    seconds_exact = t_exact,
    errors = if (length(errors)) errors else NULL
  )
  cat(sprintf("%-14s logLik ok %s  D0+2ll %.3g  D0-D0min %.3g  max|fine-exact| %.3g  (%.1f + %.1f + %.1f s)%s\n",
              id, ll_ok, D0 + 2 * ll, D0 - D0min, maxdif, t_fine, t_dflt, t_exact,
              if (length(errors)) paste("  ERRORS:", paste(errors, collapse = " | ")) else ""))
}

write_json(out, "profile_glmer.json", digits = NA, auto_unbox = TRUE, pretty = TRUE,
           na = "null", null = "null")
cat(sprintf("total %.1f s\n", proc.time()[["elapsed"]] - t_start))
