# make_glmer_reference.R -- R reference fits for jaxmlm's glmer (GLMM) implementation.
#
# Makes, in the folder this script is run from (tests/reference/glmer):
#   data/*.csv       every data set used, exactly as fitted (write.csv(row.names = FALSE);
#                    factors written as their labels).  The fits below are made on the data
#                    *read back* from these CSVs (factor columns read as character and turned
#                    back into factors with R's original level order, recorded in each JSON
#                    under "factor_levels"), so CSV + factor_levels reproduce the fitted data
#                    bit for bit.
#   <id>.json        one lme4::glmer (or glmer.nb) fit per case, plus a glmmTMB fit of the
#                    same model (key "glmmTMB"); fields are listed in README.md.
#   devfun_selftest_input.json / devfun_selftest_output.json
#                    eval_devfun.R run on lme4's own estimates (a check of eval_devfun.R).
#
# Usage:  cd tests/reference/glmer && Rscript make_glmer_reference.R     (about 1-2 minutes)
#
# Made with R 4.2.2 Patched (2022-11-10 r83330), lme4 1.1.31, glmmTMB 1.1.5, TMB 1.9.2,
# Matrix 1.5.3, mlmRev 1.0.8, MASS 7.3.58.2, jsonlite 1.8.4 (Debian r-cran-* packages).
# JSON is written with jsonlite::write_json(digits = NA, auto_unbox = TRUE, pretty = TRUE,
# na = "null", null = "null"): 15 significant digits, NA and NULL as JSON null.
suppressPackageStartupMessages({
  library(lme4); library(glmmTMB); library(mlmRev); library(jsonlite); library(MASS)
})

t_start <- proc.time()[["elapsed"]]
datadir <- "data"
dir.create(datadir, showWarnings = FALSE)

# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------
# Write df to data/<name>.csv and read it back; factor columns are read as character and
# re-made with the original level order (read.csv would sort them alphabetically).
write_and_read <- function(df, name) {
  path <- file.path(datadir, paste0(name, ".csv"))
  write.csv(df, path, row.names = FALSE)
  isf <- vapply(df, is.factor, TRUE)
  back <- read.csv(path, colClasses = ifelse(isf, "character", NA), check.names = FALSE)
  for (v in names(df)[isf]) {
    back[[v]] <- factor(back[[v]], levels = levels(df[[v]]))
    stopifnot(!anyNA(back[[v]]), identical(as.character(back[[v]]), as.character(df[[v]])))
  }
  stopifnot(identical(names(back), names(df)), nrow(back) == nrow(df))
  for (v in names(df)[!isf]) stopifnot(isTRUE(all.equal(as.numeric(back[[v]]), as.numeric(df[[v]]))))
  back
}
factor_levels <- function(df) lapply(df[vapply(df, is.factor, TRUE)], levels)

datasets <- list()
data_seed <- list()

# lme4's cbpp, plus an observation-level factor and the proportion of incident cases.
cb <- cbpp
cb$obs <- factor(seq_len(nrow(cb)))
cb$prop <- cb$incidence / cb$size
datasets$cbpp <- write_and_read(cb, "cbpp")

# mlmRev's Contraception, as is, plus use01 = 1 if use == "Y".
ct <- Contraception
ct$use01 <- as.integer(ct$use == "Y")
datasets$contraception <- write_and_read(ct, "contraception")

# lme4's grouseticks, as is.
datasets$grouseticks <- write_and_read(grouseticks, "grouseticks")

# lme4's VerbAgg, only the columns used.
datasets$verbagg <- write_and_read(VerbAgg[, c("r2", "Anger", "Gender", "btype", "situ", "id", "item")],
                                   "verbagg")

# (a) pois_offset: 40 groups x 12 rows; counts ~ Poisson(expo * exp(0.3 + 0.5 x + b_g)), b_g ~ N(0, 0.6^2).
set.seed(20230101)
G <- 40; n <- 12
po <- data.frame(g = factor(sprintf("g%02d", rep(seq_len(G), each = n))),
                 x = round(rnorm(G * n), 3),
                 expo = round(runif(G * n, 0.5, 5), 2))
b <- rnorm(G, 0, 0.6)
po$count <- rpois(G * n, po$expo * exp(0.3 + 0.5 * po$x + b[as.integer(po$g)]))
datasets$pois_offset <- write_and_read(po, "pois_offset")
data_seed$pois_offset <- 20230101

# (b) crossed_bern: 60 subjects x 20 items, every subject sees every item once; condition
# cond = -0.5/0.5 counterbalanced ((subject + item) even -> -0.5).  Subject intercept sd 1,
# subject slope sd 0.5, correlation 0.3; item intercept sd 0.7; eta = 0.2 + 0.8 cond + REs.
set.seed(20230202)
S <- 60; I <- 20
cr <- expand.grid(item = seq_len(I), subj = seq_len(S))
cr$cond <- ifelse((cr$subj + cr$item) %% 2 == 0, -0.5, 0.5)
Sig <- matrix(c(1, 0.3 * 1 * 0.5, 0.3 * 1 * 0.5, 0.25), 2)
us <- MASS::mvrnorm(S, c(0, 0), Sig)
wi <- rnorm(I, 0, 0.7)
eta <- 0.2 + 0.8 * cr$cond + us[cr$subj, 1] + us[cr$subj, 2] * cr$cond + wi[cr$item]
cr$y <- rbinom(S * I, 1, plogis(eta))
cr <- data.frame(subj = factor(sprintf("s%02d", cr$subj)), item = factor(sprintf("i%02d", cr$item)),
                 cond = cr$cond, y = cr$y)
datasets$crossed_bern <- write_and_read(cr, "crossed_bern")
data_seed$crossed_bern <- 20230202

# (c) nb_counts: 30 groups x 15 rows; count ~ NB(mu = exp(0.5 + 0.4 x + b_g), size = 2), b_g ~ N(0, 0.5^2).
set.seed(20230303)
G <- 30; n <- 15
nb <- data.frame(g = factor(sprintf("g%02d", rep(seq_len(G), each = n))), x = round(rnorm(G * n), 3))
b <- rnorm(G, 0, 0.5)
nb$count <- rnbinom(G * n, size = 2, mu = exp(0.5 + 0.4 * nb$x + b[as.integer(nb$g)]))
datasets$nb_counts <- write_and_read(nb, "nb_counts")
data_seed$nb_counts <- 20230303

# (d) singular_bern: 20 groups x 10 rows, y ~ Bernoulli(plogis(-0.3 + 0.6 x)), NO group effect.
# Seeds 1, 2, ... are tried until glmer(y ~ x + (1 | g), binomial) on the written-and-read data
# is singular with theta exactly 0.
for (seed in 1:500) {
  set.seed(seed)
  sg <- data.frame(g = factor(sprintf("g%02d", rep(1:20, each = 10))), x = round(rnorm(200), 3))
  sg$y <- rbinom(200, 1, plogis(-0.3 + 0.6 * sg$x))
  sgb <- write_and_read(sg, "singular_bern")
  ms <- suppressMessages(suppressWarnings(glmer(y ~ x + (1 | g), data = sgb, family = binomial)))
  if (isSingular(ms) && all(getME(ms, "theta") == 0)) break
}
stopifnot(isSingular(ms), all(getME(ms, "theta") == 0))
datasets$singular_bern <- sgb
data_seed$singular_bern <- seed
cat("singular_bern: seed", seed, "\n")

# ---------------------------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------------------------
# family: an R expression (as text) passed to glmer's family argument; nb = TRUE -> glmer.nb.
# weights: column name passed as glmer(weights = <col>); offset_arg: passed as glmer(offset = <expr>).
# tmb = FALSE: no glmmTMB fit (nAGQ variants and nAGQ = 0).
cbf <- "cbind(incidence, size - incidence) ~ period + (1 | herd)"
cases <- list(
  list(id = "cbpp_cbind", data = "cbpp", formula = cbf, family = "binomial"),
  list(id = "cbpp_prop", data = "cbpp", formula = "prop ~ period + (1 | herd)", family = "binomial",
       weights = "size"),
  list(id = "cbpp_obs", data = "cbpp", formula = "cbind(incidence, size - incidence) ~ period + (1 | herd) + (1 | obs)",
       family = "binomial"),
  list(id = "cbpp_agq5", data = "cbpp", formula = cbf, family = "binomial", nAGQ = 5, tmb = FALSE),
  list(id = "cbpp_agq9", data = "cbpp", formula = cbf, family = "binomial", nAGQ = 9, tmb = FALSE),
  list(id = "cbpp_agq25", data = "cbpp", formula = cbf, family = "binomial", nAGQ = 25, tmb = FALSE),
  list(id = "cbpp_nagq0", data = "cbpp", formula = cbf, family = "binomial", nAGQ = 0, tmb = FALSE),
  list(id = "contra_logit", data = "contraception",
       formula = "use ~ age + I(age^2) + urban + livch + (1 | district)", family = "binomial"),
  list(id = "contra_slope", data = "contraception",
       formula = "use ~ age + urban + (urban | district)", family = "binomial"),
  list(id = "contra_probit", data = "contraception",
       formula = "use ~ age + urban + livch + (1 | district)", family = "binomial(link = \"probit\")"),
  list(id = "contra_cloglog", data = "contraception",
       formula = "use ~ age + urban + livch + (1 | district)", family = "binomial(link = \"cloglog\")"),
  list(id = "contra_nested", data = "contraception",
       formula = "use ~ age + urban + (1 | district/livch)", family = "binomial"),
  list(id = "contra_nagq0", data = "contraception",
       formula = "use ~ age + I(age^2) + urban + livch + (1 | district)", family = "binomial",
       nAGQ = 0, tmb = FALSE),
  list(id = "verbagg_crossed", data = "verbagg",
       formula = "r2 ~ Anger + Gender + btype + situ + (1 | id) + (1 | item)", family = "binomial"),
  list(id = "crossed_bern", data = "crossed_bern", formula = "y ~ cond + (cond | subj) + (1 | item)",
       family = "binomial"),
  list(id = "pois_offset", data = "pois_offset", formula = "count ~ x + offset(log(expo)) + (1 | g)",
       family = "poisson", offset = "log(expo)"),
  list(id = "pois_offset_arg", data = "pois_offset", formula = "count ~ x + (1 | g)",
       family = "poisson", offset = "log(expo)", offset_arg = TRUE),
  list(id = "grouse_pois", data = "grouseticks",
       formula = "TICKS ~ YEAR + cHEIGHT + (1 | BROOD) + (1 | LOCATION)", family = "poisson"),
  list(id = "grouse_agq0", data = "grouseticks",
       formula = "TICKS ~ YEAR + cHEIGHT + (1 | BROOD) + (1 | LOCATION)", family = "poisson",
       nAGQ = 0, tmb = FALSE),
  list(id = "nb_glmer", data = "nb_counts", formula = "count ~ x + (1 | g)", family = "nbinom", nb = TRUE),
  list(id = "singular_bern", data = "singular_bern", formula = "y ~ x + (1 | g)", family = "binomial")
)

# Build the (unevaluated) lme4 call for a case; `dat` is looked up where it is evaluated.
lme4_call <- function(cs) {
  fml <- as.formula(cs$formula, env = globalenv())
  if (isTRUE(cs$nb)) return(bquote(glmer.nb(.(fml), data = dat)))
  cl <- bquote(glmer(.(fml), data = dat, family = .(str2lang(cs$family))))
  nagq <- if (is.null(cs$nAGQ)) 1 else cs$nAGQ
  if (nagq != 1) cl$nAGQ <- nagq
  if (!is.null(cs$weights)) cl$weights <- as.name(cs$weights)
  if (isTRUE(cs$offset_arg)) cl$offset <- str2lang(cs$offset)
  cl
}
tmb_call <- function(cs) {
  fml <- as.formula(cs$formula, env = globalenv())
  fam <- if (isTRUE(cs$nb)) quote(nbinom2) else str2lang(cs$family)
  cl <- bquote(glmmTMB(.(fml), data = dat, family = .(fam)))
  if (!is.null(cs$weights)) cl$weights <- as.name(cs$weights)
  if (isTRUE(cs$offset_arg)) cl$offset <- str2lang(cs$offset)
  cl
}

# Evaluate expr, collecting warnings and messages (muffled) into a character vector.
collect <- function(expr) {
  msgs <- character(0)
  val <- withCallingHandlers(expr,
    warning = function(w) { msgs <<- c(msgs, paste("warning:", conditionMessage(w))); invokeRestart("muffleWarning") },
    message = function(m) { msgs <<- c(msgs, paste("message:", trimws(conditionMessage(m)))); invokeRestart("muffleMessage") })
  list(value = val, msgs = msgs)
}

`%||%` <- function(a, b) if (is.null(a)) b else a
named <- function(x) as.list(x)                # named vector -> JSON object
re_frame <- function(re) {                     # ranef data frame -> level + one column per term
  data.frame(level = rownames(re), as.data.frame(re), check.names = FALSE, row.names = NULL)
}

# glmmTMB's random-effect covariances on lme4's theta scale (per term of getME(m, "cnms"):
# the lower triangle, column by column, of the Cholesky factor of the covariance matrix),
# named with lme4's theta names; NULL if the terms do not match.
tmb_theta <- function(mt, m) {
  vc <- VarCorr(mt)$cond
  cnms <- getME(m, "cnms")
  th <- tryCatch(unlist(lapply(seq_along(cnms), function(i) {
    S <- vc[[names(cnms)[i]]][cnms[[i]], cnms[[i]], drop = FALSE]
    L <- if (nrow(S) == 1) sqrt(S) else t(chol(S))
    L[lower.tri(L, diag = TRUE)]
  })), error = function(e) NULL)
  if (is.null(th) || length(th) != length(getME(m, "theta"))) return(NULL)
  named(setNames(th, names(getME(m, "theta"))))
}

# For nAGQ > 1, lme4's logLik is the adaptive-quadrature log-likelihood MINUS the saturated
# log-likelihood (its AGQ deviance is built from deviance residuals), unlike nAGQ = 1 / 0.
# loglik_saturated: sum of the family's log density at mu = y (with lme4's n / prior weights).
loglik_saturated <- function(m) {
  r <- m@resp
  -0.5 * family(m)$aic(r$y, r$n, r$y, r$weights, 0)
}
# Exact marginal log-likelihood at lme4's estimates by integrate() per level, for a model with
# one scalar random intercept (the cbpp AGQ cases).
loglik_exact_scalar <- function(m) {
  r <- m@resp; fam <- family(m)
  eta0 <- drop(getME(m, "X") %*% fixef(m)) + r$offset
  th <- getME(m, "theta"); f <- getME(m, "flist")[[1]]
  sum(vapply(split(seq_along(f), f), function(i) {
    g <- function(u) vapply(u, function(uu)
      exp(-0.5 * fam$aic(r$y[i], r$n[i], fam$linkinv(eta0[i] + th * uu), r$weights[i], 0)) * dnorm(uu), 0)
    log(integrate(g, -Inf, Inf, rel.tol = 1e-12)$value)
  }, 0))
}

write_case <- function(x, id) {
  write_json(x, paste0(id, ".json"), digits = NA, auto_unbox = TRUE, pretty = TRUE,
             na = "null", null = "null")
}

selftest <- list()
tmbtest <- list()
summary_rows <- list()
for (cs in cases) {
  dat <- datasets[[cs$data]]
  cl <- lme4_call(cs)
  t0 <- proc.time()[["elapsed"]]
  fit <- collect(eval(cl))
  secs <- proc.time()[["elapsed"]] - t0
  m <- fit$value
  nagq <- unname(m@devcomp$dims[["nAGQ"]])

  re <- ranef(m, condVar = TRUE)
  ranef_out <- lapply(re, re_frame)
  condsd_out <- lapply(re, function(r) {
    pv <- attr(r, "postVar")
    sds <- t(apply(pv, 3, function(a) sqrt(diag(as.matrix(a)))))
    if (dim(pv)[1] == 1) sds <- t(sds)
    colnames(sds) <- colnames(r)
    data.frame(level = rownames(r), sds, check.names = FALSE, row.names = NULL)
  })
  vc <- as.data.frame(VarCorr(m))
  V <- as.matrix(vcov(m))
  nd <- head(dat, 5)
  pl <- collect(predict(m, newdata = nd, type = "link"))
  pr <- collect(predict(m, newdata = nd, type = "response"))

  tmb <- NULL
  tmb_msgs <- NULL
  if (!isFALSE(cs$tmb)) {
    tt <- tryCatch(collect(eval(tmb_call(cs))), error = function(e) e)
    if (inherits(tt, "error")) {
      tmb_msgs <- paste("error:", conditionMessage(tt))
    } else {
      mt <- tt$value
      tmb <- list(loglik = as.numeric(logLik(mt)), fixef = named(fixef(mt)$cond),
                  messages = tt$msgs,
                  convergence = mt$fit$convergence,
                  pdHess = mt$sdr$pdHess)
      if (isTRUE(cs$nb)) tmb$nb_theta <- sigma(mt)
      tmb$theta <- tmb_theta(mt, m)
      tmb$varcorr_sd <- lapply(VarCorr(mt)$cond, function(S) named(attr(S, "stddev")))
      if (!is.finite(tmb$loglik)) { tmb_msgs <- "non-finite logLik"; tmb <- NULL }
    }
  }

  fam <- family(m)
  out <- list(
    id = cs$id,
    formula = cs$formula,
    family = fam$family,
    link = fam$link,
    family_call = if (isTRUE(cs$nb)) "glmer.nb" else cs$family,
    call = paste(deparse(m@call, width.cutoff = 500L), collapse = " "),
    nAGQ = nagq,
    data = paste0("data/", cs$data, ".csv"),
    data_seed = data_seed[[cs$data]],
    weights = cs$weights,
    offset = cs$offset,
    offset_argument = isTRUE(cs$offset_arg),
    lme4_version = as.character(packageVersion("lme4")),
    glmmTMB_version = as.character(packageVersion("glmmTMB")),
    R_version = R.version.string,
    optimizer = m@optinfo$optimizer,
    nobs = nobs(m),
    ngroups = named(ngrps(m)),
    beta_names = names(fixef(m)),
    fixef = named(fixef(m)),
    se = named(sqrt(diag(V))),
    vcov_beta = unname(V),
    theta_names = names(getME(m, "theta")),
    theta = named(getME(m, "theta")),
    varcorr = vc,
    loglik = as.numeric(logLik(m)),
    loglik_saturated = if (nagq > 1) loglik_saturated(m) else NULL,
    loglik_exact_at_lme4 = if (nagq > 1) loglik_exact_scalar(m) else NULL,
    loglik_df = attr(logLik(m), "df"),
    deviance = deviance(m),
    AIC = AIC(m),
    BIC = BIC(m),
    df_resid = df.residual(m),
    singular = isSingular(m),
    conv_messages = m@optinfo$conv$lme4$messages,
    lme4_messages = fit$msgs,
    lme4_seconds = secs,
    fitted = unname(fitted(m)),
    resid_deviance = unname(residuals(m, type = "deviance")),
    resid_pearson = unname(residuals(m, type = "pearson")),
    resid_response = unname(residuals(m, type = "response")),
    resid_working = unname(residuals(m, type = "working")),
    ranef = ranef_out,
    condsd = condsd_out,
    predict_link = unname(pl$value),
    predict_response = unname(pr$value),
    predict_messages = unique(c(pl$msgs, pr$msgs)),
    summary = paste(capture.output(print(summary(m))), collapse = "\n"),
    nb_theta = if (isTRUE(cs$nb)) getME(m, "glmer.nb.theta") else NULL,
    factor_levels = factor_levels(dat),
    glmmTMB = tmb,
    glmmTMB_note = tmb_msgs %||% (if (isFALSE(cs$tmb)) "skipped (nAGQ != 1 variant)" else NULL)
  )
  write_case(out, cs$id)
  selftest[[cs$id]] <- list(theta = unname(getME(m, "theta")), beta = unname(fixef(m)))
  if (!is.null(tmb$theta))
    tmbtest[[cs$id]] <- list(theta = unname(unlist(tmb$theta)), beta = unname(unlist(tmb$fixef)))
  summary_rows[[cs$id]] <- data.frame(id = cs$id, loglik = out$loglik,
    tmb_loglik = if (is.null(tmb)) NA else tmb$loglik, singular = out$singular,
    conv = length(out$conv_messages), msgs = length(fit$msgs), secs = round(secs, 2))
  cat(sprintf("%-16s logLik %.6f  glmmTMB %s  singular %s  %s\n", cs$id, out$loglik,
              if (is.null(tmb)) "-" else sprintf("%.6f", tmb$loglik), out$singular,
              if (length(fit$msgs)) paste(fit$msgs, collapse = " | ") else ""))
}

# Self-test of eval_devfun.R at lme4's own estimates.
write_json(selftest, "devfun_selftest_input.json", digits = NA, pretty = TRUE)
rc <- system2("Rscript", c("eval_devfun.R", "devfun_selftest_input.json", "devfun_selftest_output.json"),
              stdout = FALSE)
stopifnot(rc == 0)
# lme4's devfun at glmmTMB's estimates (NB: at lme4's NB shape, not glmmTMB's).
write_json(tmbtest, "devfun_glmmTMB_input.json", digits = NA, pretty = TRUE)
rc <- system2("Rscript", c("eval_devfun.R", "devfun_glmmTMB_input.json", "devfun_glmmTMB_output.json"),
              stdout = FALSE)
stopifnot(rc == 0)

print(do.call(rbind, summary_rows), row.names = FALSE)
cat(sprintf("total %.1f s\n", proc.time()[["elapsed"]] - t_start))
