# make_tight_reference.R -- refit every glmer reference case with a tight PIRLS tolerance.
#
# lme4's default PIRLS tolerance (glmerControl(tolPwrss = 1e-7)) stops the inner PIRLS loop
# early enough that the Laplace/AGQ deviance it optimises and reports (-2*logLik) is off by up
# to ~5e-3, and the finite-difference Hessian of that deviance (which gives vcov, hence the SEs)
# is slightly noisy.  This script refits each case exactly as make_glmer_reference.R does --
# same data (data/<name>.csv read back with the JSON's factor_levels, as in eval_devfun.R),
# same formula / family / nAGQ / weights / offset / glmer.nb -- but with
#   control = glmerControl(tolPwrss = 1e-13)
# (for glmer.nb: glmer.nb(..., control = glmerControl(tolPwrss = 1e-13)), which glmer.nb passes
# to its initial Poisson fit, to every NB refit and to the final object).  If a tight fit fails
# with an error, the error is recorded and the case is refitted with tolPwrss = 1e-10.
#
# Writes tight.json: {"<id>": {...}} for every <id>.json here (files starting with "devfun" and
# tight.json itself are skipped).  Fields per case are listed in README.md ("tight.json").
#
# Usage:  cd tests/reference/glmer && Rscript make_tight_reference.R
# Needs the case JSONs and data/*.csv made by make_glmer_reference.R (it does not rewrite them).
suppressPackageStartupMessages({library(lme4); library(jsonlite); library(MASS)})

TIGHT <- 1e-13
FALLBACK <- 1e-10
t_start <- proc.time()[["elapsed"]]

# Data of a case, as in eval_devfun.R: factor columns (those in factor_levels) read as
# character and re-made with the recorded level order.
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

# The lme4 call of a case, as lme4_call() in make_glmer_reference.R, plus the control.
tight_call <- function(ref, tol) {
  fml <- as.formula(ref$formula, env = globalenv())
  ctrl <- bquote(glmerControl(tolPwrss = .(tol)))
  if (identical(ref$family_call, "glmer.nb"))
    return(bquote(glmer.nb(.(fml), data = dat, control = .(ctrl))))
  cl <- bquote(glmer(.(fml), data = dat, family = .(str2lang(ref$family_call))))
  if (ref$nAGQ != 1) cl$nAGQ <- ref$nAGQ
  if (!is.null(ref$weights)) cl$weights <- as.name(ref$weights)
  if (isTRUE(ref$offset_argument)) cl$offset <- str2lang(ref$offset)
  cl$control <- ctrl
  cl
}

# Evaluate expr, collecting warnings and messages (muffled), as in make_glmer_reference.R.
collect <- function(expr) {
  msgs <- character(0)
  val <- withCallingHandlers(expr,
    warning = function(w) { msgs <<- c(msgs, paste("warning:", conditionMessage(w))); invokeRestart("muffleWarning") },
    message = function(m) { msgs <<- c(msgs, paste("message:", trimws(conditionMessage(m)))); invokeRestart("muffleMessage") })
  list(value = val, msgs = msgs)
}
named <- function(x) as.list(x)

files <- sort(list.files(".", pattern = "\\.json$"))
files <- files[!startsWith(files, "devfun") & files != "tight.json"]
out <- list()
rows <- list()
for (f in files) {
  ref <- fromJSON(f, simplifyVector = TRUE)
  id <- ref$id
  stopifnot(identical(paste0(id, ".json"), f))
  dat <- read_case_data(ref)

  errors <- character(0)
  fit <- NULL
  for (tol in c(TIGHT, FALLBACK)) {
    cl <- tight_call(ref, tol)
    t0 <- proc.time()[["elapsed"]]
    fit <- tryCatch(collect(eval(cl)), error = function(e) e)
    secs <- proc.time()[["elapsed"]] - t0
    if (!inherits(fit, "error")) break
    errors <- c(errors, sprintf("tolPwrss = %g: %s", tol, conditionMessage(fit)))
    fit <- NULL
  }
  if (is.null(fit)) {
    out[[id]] <- list(id = id, tolPwrss = NULL, errors = errors)
    cat(sprintf("%-16s FAILED: %s\n", id, paste(errors, collapse = " | ")))
    next
  }
  m <- fit$value
  used_tol <- m@devcomp$cmp[["tolPwrss"]]          # the tolerance the final object was made with
  stopifnot(isTRUE(all.equal(used_tol, tol)), nobs(m) == ref$nobs,
            identical(names(fixef(m)), ref$beta_names),
            identical(names(getME(m, "theta")), ref$theta_names))
  V <- as.matrix(vcov(m))
  nagq <- unname(m@devcomp$dims[["nAGQ"]])
  out[[id]] <- list(
    id = id,
    tolPwrss = tol,
    errors = if (length(errors)) errors else NULL,
    call = paste(deparse(cl, width.cutoff = 500L), collapse = " "),
    nAGQ = nagq,
    optimizer = m@optinfo$optimizer,
    fixef = named(fixef(m)),
    se = named(sqrt(diag(V))),
    vcov_beta = unname(V),
    theta = named(getME(m, "theta")),
    loglik = as.numeric(logLik(m)),
    deviance = deviance(m),
    nb_theta = if (identical(ref$family_call, "glmer.nb")) getME(m, "glmer.nb.theta") else NULL,
    singular = isSingular(m),
    conv_messages = m@optinfo$conv$lme4$messages,
    lme4_messages = fit$msgs,
    lme4_seconds = round(secs, 3),
    default_loglik = ref$loglik,
    default_se = ref$se
  )
  se_t <- sqrt(diag(V)); se_d <- unlist(ref$se)[names(se_t)]
  rows[[id]] <- data.frame(id = id, tol = tol, loglik = out[[id]]$loglik,
    dloglik = out[[id]]$loglik - ref$loglik, max_rel_se = max(abs(se_t / se_d - 1)),
    singular = out[[id]]$singular, msgs = length(fit$msgs), secs = round(secs, 2))
  cat(sprintf("%-16s tol %g  logLik %.8f (default %.8f, diff %+.3e)  max rel SE diff %.2e  %s\n",
              id, tol, out[[id]]$loglik, ref$loglik, out[[id]]$loglik - ref$loglik,
              max(abs(se_t / se_d - 1)), paste(c(errors, fit$msgs), collapse = " | ")))
}

write_json(out, "tight.json", digits = NA, auto_unbox = TRUE, pretty = TRUE, null = "null", na = "null")
print(do.call(rbind, rows), row.names = FALSE)
cat(sprintf("%d cases, total %.1f s\n", length(out), proc.time()[["elapsed"]] - t_start))
