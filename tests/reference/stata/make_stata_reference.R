# Reference numbers for m.summary(style = "stata") (tests/test_stata.py): every number of Stata's
# `mixed` output, computed here from lme4 fits and Stata's formulas, independently of jaxmlm.
# Run from the repository root:  Rscript tests/reference/stata/make_stata_reference.R
# (R 4.2.2, lme4 1.1-31, numDeriv 2016.8-1.1, jsonlite; data: the package's CSVs.)
#
# Stata's formulas (Stata 13 [ME] mixed, Methods and formulas), as computed below:
#  * fixed effects: z = b / se, P>|z| = 2 Phi(-|z|), CI b -/+ qnorm(0.975) se (se from vcov(m));
#  * Wald chi2(k) = b' V^-1 b over the k non-intercept coefficients, Prob > chi2 = P(chi2_k > W);
#  * variance parameters: eta = (log SD of each random effect, atanh of each correlation,
#    log sigma); Cov(eta) = 2 H^-1, H the Hessian of -2 log L (ML or REML, as fitted; beta at its
#    GLS estimate) in eta, taken numerically (numDeriv::hessian) of a log-likelihood written here
#    from the marginal covariance V_i = sum_t Z_ti G_t Z_ti' + sigma^2 I of each outermost group
#    (not lme4's code); SEs by the delta method: se(sd) = sd se(log sd), se(var) = 2 var se(log sd),
#    se(corr) = (1 - r^2) se(atanh r), se(cov) from the gradient of r sd_i sd_j in eta; CIs
#    exp(log sd -/+ z se), squared for variances, tanh(atanh r -/+ z se), cov -/+ z se (natural scale);
#  * LR test vs. linear regression: LR = 2 (logLik(m) - logLik(lm)) (both REML for REML fits);
#    one variance parameter: chibar2(01), p = P(chi2_1 > LR) / 2; k > 1: chi2(k), p = P(chi2_k > LR).
suppressPackageStartupMessages({library(lme4); library(numDeriv); library(jsonlite)})

read_example <- function(name) {
  d <- read.csv(file.path("jaxmlm/data", paste0(name, ".csv")), stringsAsFactors = FALSE)
  lev <- fromJSON("jaxmlm/data/levels.json")[[name]]
  for (col in names(lev)) d[[col]] <- factor(as.character(d[[col]]), levels = lev[[col]])
  d
}

exam <- read_example("Exam")
exam$lrt_c <- exam$standLRT - ave(exam$standLRT, exam$school)   # the note's lrt_groupc
sleep <- read_example("sleepstudy")
# growth-like design (the note's children: up to 4 visits, unbalanced): 4 of the days, every
# 7th of those rows (in file order) left out, a linear spline with a knot at day 2
sleep <- sleep[sleep$Days %in% c(0, 2, 4, 9), ]
sleep <- sleep[seq_len(nrow(sleep)) %% 7 != 0, ]
sleep$Days_sp <- pmax(sleep$Days - 2, 0)
classroom <- read_example("classroom")

cases <- list(
  list(name = "exam_slope_ml", data = "exam", formula = "normexam ~ standLRT + (standLRT | school)", REML = FALSE),
  list(name = "exam_slope_reml", data = "exam", formula = "normexam ~ standLRT + (standLRT | school)", REML = TRUE),
  list(name = "exam_note_reml", data = "exam", formula = "normexam ~ lrt_c + (lrt_c | school)", REML = TRUE),
  list(name = "exam_note_int_reml", data = "exam", formula = "normexam ~ lrt_c + (1 | school)", REML = TRUE),
  list(name = "exam_int_ml", data = "exam", formula = "normexam ~ standLRT + (1 | school)", REML = FALSE),
  list(name = "exam_diag_ml", data = "exam", formula = "normexam ~ standLRT + (standLRT || school)", REML = FALSE),
  list(name = "growth_ml", data = "sleep", formula = "Reaction ~ Days + Days_sp + (1 | Subject)", REML = FALSE),
  list(name = "classroom_nested_ml", data = "classroom", formula = "mathkind ~ ses + (1 | schoolid/classid)",
       REML = FALSE)
)
datasets <- list(exam = exam, sleep = sleep, classroom = classroom)

# -2 log-likelihood (ML) or -2 restricted log-likelihood (REML) at eta, from the marginal model
minus2ll <- function(eta, terms, X, y, outer, REML) {
  pos <- 0; G <- list()
  for (tm in terms) {
    k <- ncol(tm$Z)
    sd <- exp(eta[pos + seq_len(k)]); pos <- pos + k
    R <- diag(k)
    if (tm$corr && k > 1) {
      for (j in 1:(k - 1)) for (i in (j + 1):k) { pos <- pos + 1; R[i, j] <- R[j, i] <- tanh(eta[pos]) }
    }
    G[[length(G) + 1]] <- diag(sd, k) %*% R %*% diag(sd, k)
  }
  s2 <- exp(2 * eta[pos + 1])
  p <- ncol(X); XVX <- matrix(0, p, p); XVy <- numeric(p); ldV <- 0; blocks <- list()
  for (rows in split(seq_along(y), outer)) {
    V <- diag(s2, length(rows))
    for (t in seq_along(terms)) {
      Zt <- terms[[t]]$Z[rows, , drop = FALSE]; g <- terms[[t]]$g[rows]
      V <- V + (Zt %*% G[[t]] %*% t(Zt)) * outer(g, g, "==")
    }
    C <- chol(V); ldV <- ldV + 2 * sum(log(diag(C)))
    Xi <- backsolve(C, X[rows, , drop = FALSE], transpose = TRUE)
    yi <- backsolve(C, y[rows], transpose = TRUE)
    XVX <- XVX + crossprod(Xi); XVy <- XVy + crossprod(Xi, yi)
    blocks[[length(blocks) + 1]] <- list(Xi = Xi, yi = yi)
  }
  beta <- solve(XVX, XVy)
  rss <- sum(vapply(blocks, function(b) sum((b$yi - b$Xi %*% beta)^2), 0))
  n <- length(y)
  if (REML) ldV + rss + determinant(XVX)$modulus + (n - p) * log(2 * pi)
  else ldV + rss + n * log(2 * pi)
}

row <- function(grp, kind, var1, var2, est, se, lo, hi)
  list(grp = grp, kind = kind, var1 = var1, var2 = var2, estimate = est, se = se, lower = lo, upper = hi)

z975 <- qnorm(0.975)
out <- list()
for (cs in cases) {
  d <- datasets[[cs$data]]
  m <- lmer(as.formula(cs$formula), d, REML = cs$REML,
            control = lmerControl(optimizer = "bobyqa", optCtrl = list(rhobeg = 2e-3, rhoend = 1e-12, maxfun = 1e5)))
  fr <- model.frame(m); y <- model.response(fr); X <- getME(m, "X")
  b <- fixef(m); V <- as.matrix(vcov(m)); se <- sqrt(diag(V)); zz <- b / se
  k <- which(names(b) != "(Intercept)")
  wald <- as.numeric(t(b[k]) %*% solve(V[k, k, drop = FALSE], b[k]))
  # random-effects terms, from the fit's own term list (lme4's order); eta at the estimates
  vc <- VarCorr(m); cnms <- getME(m, "cnms"); flist <- getME(m, "flist")
  # Ztlist: one n-column matrix per random-effect column (levels x n), terms in cnms order
  Ztl <- getME(m, "Ztlist"); terms <- list(); eta <- c(); zpos <- 0
  for (t in seq_along(cnms)) {
    grp <- names(cnms)[t]; cols <- cnms[[t]]
    g <- flist[[grp]]
    kk <- length(cols); Z <- matrix(0, length(y), kk)
    for (j in seq_len(kk)) Z[, j] <- colSums(as.matrix(Ztl[[zpos + j]]))
    zpos <- zpos + kk
    S <- vc[[t]]; sdv <- sqrt(diag(S)); R <- cov2cor(S)
    terms[[t]] <- list(grp = grp, cols = cols, Z = Z, g = as.integer(g), corr = kk > 1)
    eta <- c(eta, log(sdv))
    if (kk > 1) for (j in 1:(kk - 1)) for (i in (j + 1):kk) eta <- c(eta, atanh(R[i, j]))
  }
  eta <- c(eta, log(sigma(m)))
  outer_f <- flist[[names(flist)[length(flist)]]]   # the factor with fewest levels (outermost)
  f <- function(e) minus2ll(e, terms, X, y, outer_f, cs$REML)
  stopifnot(abs(f(eta) - (-2 * as.numeric(logLik(m)))) < 1e-6)   # our likelihood is lme4's
  H <- hessian(f, eta)
  Ceta <- 2 * solve(H)
  # SDs, variances, correlations, covariances with delta-method SEs
  rows <- list(); pos <- 0
  for (tm in terms) {
    kk <- length(tm$cols); idx <- pos + seq_len(kk); sdv <- exp(eta[idx]); sel <- sqrt(diag(Ceta)[idx])
    for (j in seq_len(kk)) {
      lo <- sdv[j] * exp(-z975 * sel[j]); hi <- sdv[j] * exp(z975 * sel[j])
      rows[[length(rows) + 1]] <- row(tm$grp, "sd", tm$cols[j], NA, sdv[j], sdv[j] * sel[j], lo, hi)
      rows[[length(rows) + 1]] <- row(tm$grp, "var", tm$cols[j], NA, sdv[j]^2, 2 * sdv[j]^2 * sel[j], lo^2, hi^2)
    }
    pos <- pos + kk
    if (kk > 1) for (j in 1:(kk - 1)) for (i in (j + 1):kk) {
      pos <- pos + 1; r <- tanh(eta[pos]); ser <- sqrt(Ceta[pos, pos])
      rows[[length(rows) + 1]] <- row(tm$grp, "corr", tm$cols[j], tm$cols[i], r, (1 - r^2) * ser,
                                      tanh(eta[pos] - z975 * ser), tanh(eta[pos] + z975 * ser))
      cv <- r * sdv[i] * sdv[j]
      gr <- numeric(length(eta)); gr[idx[i]] <- cv; gr[idx[j]] <- cv; gr[pos] <- (1 - r^2) * sdv[i] * sdv[j]
      sec <- sqrt(as.numeric(t(gr) %*% Ceta %*% gr))
      rows[[length(rows) + 1]] <- row(tm$grp, "cov", tm$cols[j], tm$cols[i], cv, sec, cv - z975 * sec, cv + z975 * sec)
    }
  }
  ls <- length(eta); s <- sigma(m); ses <- sqrt(Ceta[ls, ls])
  rows[[length(rows) + 1]] <- row("Residual", "sd", NA, NA, s, s * ses, s * exp(-z975 * ses), s * exp(z975 * ses))
  rows[[length(rows) + 1]] <- row("Residual", "var", NA, NA, s^2, 2 * s^2 * ses, (s * exp(-z975 * ses))^2,
                                  (s * exp(z975 * ses))^2)
  # LR test vs. linear regression
  ols <- lm(as.formula(paste(deparse(nobars(as.formula(cs$formula))), collapse = "")), d)
  lr <- 2 * (as.numeric(logLik(m)) - as.numeric(logLik(ols, REML = cs$REML)))
  npar <- length(getME(m, "theta"))
  p_lr <- if (npar == 1) 0.5 * pchisq(lr, 1, lower.tail = FALSE) else pchisq(lr, npar, lower.tail = FALSE)
  groups <- lapply(names(flist), function(g) {
    n_g <- as.vector(table(flist[[g]]))
    list(group = g, ngroups = length(n_g), min = min(n_g), avg = mean(n_g), max = max(n_g))
  })
  out[[cs$name]] <- list(
    formula = cs$formula, data = cs$data, REML = cs$REML, nobs = nobs(m), loglik = as.numeric(logLik(m)),
    groups = groups,
    fixef = list(names = names(b), estimate = unname(b), se = unname(se), z = unname(zz),
                 p = unname(2 * pnorm(-abs(zz))), lower = unname(b - z975 * se), upper = unname(b + z975 * se)),
    wald = list(statistic = wald, df = length(k), p = pchisq(wald, length(k), lower.tail = FALSE)),
    random = rows,
    lr_test = list(statistic = lr, df = npar, p = p_lr, kind = if (npar == 1) "chibar2(01)" else sprintf("chi2(%d)", npar)),
    eta = eta, eta_cov = Ceta
  )
  cat(cs$name, ": logLik", format(logLik(m), digits = 10), " Wald", format(wald, digits = 8), " LR", format(lr, digits = 8), "\n")
}
write_json(out, "tests/reference/stata/stata_reference.json", digits = NA, auto_unbox = TRUE, pretty = TRUE,
           na = "null")
cat("versions: lme4", as.character(packageVersion("lme4")), " numDeriv", as.character(packageVersion("numDeriv")), "\n")
