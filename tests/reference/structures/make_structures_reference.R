# glmmTMB reference fits for jaxmlm's structured covariance terms (us, diag, cs, ar1), Gaussian.
#
# Simulates panel.csv (fixed seed), reads it back, fits the cases below with glmmTMB and writes
# structures_reference.json. For the us and diag cases the same model is also fitted with
# lme4::lmer ((1 + x | g) and (1 + x || g)) as a cross-check.
#
# glmmTMB 1.1.5 parametrisation (theta = m$fit$par[names == "theta"], per term in order;
# betad = log(sigma^2)):
#   us(n):   n log-SDs, then n(n-1)/2 parameters of TMB's UNSTRUCTURED_CORR; for n = 2 the
#            correlation is t / sqrt(1 + t^2).
#   diag(n): n log-SDs.
#   cs(n):   n log-SDs (heterogeneous variances!) then one t; rho = plogis(t) * (1 + a) - a with
#            a = 1 / (n - 1), so rho lies in (-1/(n-1), 1).
#   ar1(n):  one log-SD (homogeneous variance) then one t; rho = t / sqrt(1 + t^2);
#            corr(i, j) = rho^|i - j| over the factor levels in order (unit spacing).
# The script checks these maps against VarCorr and records the check.
#
# Usage (from tests/reference/structures):  Rscript make_structures_reference.R
suppressPackageStartupMessages({library(glmmTMB); library(lme4); library(jsonlite)})

## ---------------------------------------------------------------- data
set.seed(20240201)
G <- 40; Tn <- 5; R <- 2; rho <- 0.6; sd_ar <- 1.2
Sig <- sd_ar^2 * rho^abs(outer(1:Tn, 1:Tn, "-"))
U <- matrix(rnorm(G * Tn), G, Tn) %*% chol(Sig)            # AR(1) effect per (g, time)
slope <- rnorm(G, 0, 0.5)                                  # random slope of x per g
V <- matrix(rnorm(G * 4, 0, 0.5), G, 4)                    # extra effect per (g, f)
wf <- c(a = -0.8, b = 0.3, c = 1.0, d = -0.4)              # effect of f (crossed with g)
pn <- expand.grid(rep = 1:R, tnum = 1:Tn, gi = 1:G)[, c("gi", "tnum", "rep")]
pn$g <- sprintf("g%02d", pn$gi)
pn$time <- paste0("t", pn$tnum)
pn$x <- round(rnorm(nrow(pn)), 4)
pn$f <- sample(c("a", "b", "c", "d"), nrow(pn), replace = TRUE)
fi <- match(pn$f, c("a", "b", "c", "d"))
pn$y <- 2 + 0.8 * pn$x + U[cbind(pn$gi, pn$tnum)] + slope[pn$gi] * pn$x + V[cbind(pn$gi, fi)] +
  wf[fi] + rnorm(nrow(pn), 0, 0.7)
pn <- pn[, c("g", "time", "tnum", "rep", "x", "f", "y")]
write.csv(pn, "panel.csv", row.names = FALSE)
panel <- read.csv("panel.csv", stringsAsFactors = TRUE)    # factors: g g01..g40, time t1..t5, f a..d

## ---------------------------------------------------------------- cases
cases <- list(
  us_reml = list(formula = y ~ x + us(1 + x | g), REML = TRUE, lme4 = y ~ x + (1 + x | g)),
  us_ml = list(formula = y ~ x + us(1 + x | g), REML = FALSE, lme4 = y ~ x + (1 + x | g)),
  diag_ml = list(formula = y ~ x + diag(1 + x | g), REML = FALSE, lme4 = y ~ x + (1 + x || g)),
  diag_reml = list(formula = y ~ x + diag(1 + x | g), REML = TRUE, lme4 = y ~ x + (1 + x || g)),
  cs_time_reml = list(formula = y ~ x + cs(0 + time | g), REML = TRUE),
  cs_time_ml = list(formula = y ~ x + cs(0 + time | g), REML = FALSE),
  cs_f_ml = list(formula = y ~ x + cs(0 + f | g), REML = FALSE),
  ar1_time_ml = list(formula = y ~ x + ar1(0 + time | g), REML = FALSE),
  ar1_time_reml = list(formula = y ~ x + ar1(0 + time | g), REML = TRUE),
  ar1_time_plus_f_ml = list(formula = y ~ x + ar1(0 + time | g) + (1 | f), REML = FALSE)
)

capture <- function(expr) {
  msgs <- character(0)
  val <- withCallingHandlers(
    tryCatch(expr, error = function(e) structure(list(msg = conditionMessage(e)), class = "fit_error")),
    warning = function(w) { msgs <<- c(msgs, paste("warning:", conditionMessage(w))); invokeRestart("muffleWarning") },
    message = function(m) { msgs <<- c(msgs, paste("message:", trimws(conditionMessage(m)))); invokeRestart("muffleMessage") })
  list(value = val, msgs = msgs)
}
# I(): vectors stay JSON arrays even when of length 1 (auto_unbox only unboxes plain scalars)
rows_of <- function(M) lapply(seq_len(nrow(M)), function(i) I(unname(as.numeric(M[i, ]))))

# covariance matrix implied by glmmTMB's theta block for one term (see header)
implied <- function(struct, th, n) {
  if (struct == "us") {
    stopifnot(n <= 2)
    sd <- exp(th[1:n]); C <- diag(n)
    if (n == 2) C[1, 2] <- C[2, 1] <- th[3] / sqrt(1 + th[3]^2)
  } else if (struct == "diag") {
    sd <- exp(th[1:n]); C <- diag(n)
  } else if (struct == "cs") {
    sd <- exp(th[1:n]); a <- 1 / (n - 1); r <- plogis(th[n + 1]) * (1 + a) - a
    C <- matrix(r, n, n); diag(C) <- 1
  } else if (struct == "ar1") {
    sd <- rep(exp(th[1]), n); r <- th[2] / sqrt(1 + th[2]^2)
    C <- r^abs(outer(1:n, 1:n, "-"))
  } else stop("unknown structure ", struct)
  diag(sd, n) %*% C %*% diag(sd, n)
}
npar <- function(struct, n) switch(struct, us = n + n * (n - 1) / 2, diag = n, cs = n + 1, ar1 = 2)

record <- function(name, cs) {
  cat("==", name, "\n")
  f <- capture(glmmTMB(cs$formula, data = panel, REML = cs$REML))
  out <- list(formula = paste(deparse(cs$formula), collapse = " "), REML = cs$REML,
              data_csv = "panel.csv", messages = I(f$msgs))
  if (inherits(f$value, "fit_error")) { out$error <- f$value$msg; return(out) }
  m <- f$value
  out$nobs <- nobs(m)
  out$loglik <- as.numeric(logLik(m))
  out$loglik_df <- attr(logLik(m), "df")
  out$objective <- m$fit$objective
  out$convergence <- m$fit$convergence
  out$optimizer_message <- m$fit$message
  out$pdHess <- m$sdr$pdHess
  out$fixef <- as.list(fixef(m)$cond)
  out$vcov <- rows_of(vcov(m)$cond)
  out$vcov_names <- colnames(vcov(m)$cond)
  out$sigma <- sigma(m)
  out$par <- I(unname(m$fit$par)); out$par_names <- names(m$fit$par)
  th <- unname(m$fit$par[names(m$fit$par) == "theta"])
  vc <- VarCorr(m)$cond
  codes <- m$modelInfo$reStruc$condReStruc
  pos <- 0; terms <- list()
  for (i in seq_along(vc)) {
    M <- vc[[i]]; n <- nrow(M)
    struct <- names(glmmTMB:::.valid_covstruct)[match(codes[[i]]$blockCode, glmmTMB:::.valid_covstruct)]
    k <- npar(struct, n); thi <- th[pos + seq_len(k)]; pos <- pos + k
    imp <- implied(struct, thi, n)
    tm <- list(term = names(codes)[i], group = names(vc)[i], structure = struct,
               names = I(colnames(M)), cov = rows_of(M),
               stddev = I(unname(attr(M, "stddev"))), correlation = rows_of(attr(M, "correlation")),
               theta = I(thi), implied_cov_maxdiff = max(abs(imp - unclass(M)[1:n, 1:n])))
    if (struct %in% c("cs", "ar1")) {
      tm$rho <- attr(M, "correlation")[1, 2]
      tm$rho_param <- thi[k]
      tm$rho_map <- if (struct == "cs") "rho = plogis(t) * (1 + 1/(n-1)) - 1/(n-1)" else "rho = t / sqrt(1 + t^2)"
    }
    terms[[i]] <- tm
  }
  stopifnot(pos == length(th))
  out$re_terms <- terms
  if (!is.null(cs$lme4)) {
    l <- capture(lmer(cs$lme4, data = panel, REML = cs$REML,
                      control = lmerControl(optimizer = "bobyqa", optCtrl = list(rhoend = 1e-10, maxfun = 1e5))))
    ml <- l$value
    out$lme4_formula <- paste(deparse(cs$lme4), collapse = " ")
    out$lme4_loglik <- as.numeric(logLik(ml))
    out$lme4_sigma <- sigma(ml)
    out$lme4_fixef <- as.list(fixef(ml))
    out$lme4_varcorr <- lapply(as.list(as.data.frame(VarCorr(ml))), function(v) if (is.factor(v)) as.character(v) else v)
    out$lme4_messages <- I(l$msgs)
    out$lme4_loglik_diff <- out$loglik - out$lme4_loglik
  }
  out
}

res <- list()
for (nm in names(cases)) res[[nm]] <- record(nm, cases[[nm]])
res$meta <- list(R = R.version.string, glmmTMB = as.character(packageVersion("glmmTMB")),
                 TMB = as.character(packageVersion("TMB")), lme4 = as.character(packageVersion("lme4")),
                 jsonlite = as.character(packageVersion("jsonlite")),
                 simulation = list(groups = G, times = Tn, replicates = R, ar1_rho = rho, ar1_sd = sd_ar,
                                   slope_sd = 0.5, g_by_f_sd = 0.5, f_effects = as.list(wf), resid_sd = 0.7,
                                   intercept = 2, x_effect = 0.8))
writeLines(toJSON(res, digits = NA, auto_unbox = TRUE, na = "null", pretty = TRUE), "structures_reference.json")
cat("wrote structures_reference.json\n")
