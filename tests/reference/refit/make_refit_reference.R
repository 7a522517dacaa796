# Reference numbers for jaxmlm's simulation / refit tests (tests/test_refit.py).
# Run from this folder:  Rscript make_refit_reference.R   → refit_reference.json
# R 4.2.2, lme4 1.1-31, pbkrtest 0.5.2, boot 1.3-28.1. Monte-Carlo quantities (PB p-values,
# bootstrap intervals) are compared with loose tolerances; LRT statistics and names exactly.
suppressMessages({
  library(lme4)
  library(pbkrtest)
  library(jsonlite)
})

s <- sleepstudy
s$Days2 <- s$Days^2

pb_case <- function(large, small, data, nsim, seed) {
  ml <- lmer(large, data)  # REML fits: PBmodcomp refits both by ML
  ms <- lmer(small, data)
  set.seed(seed)  # PBmodcomp's own seed argument is not passed on to its simulations
  t0 <- proc.time()[[3]]
  pb <- PBmodcomp(ml, ms, nsim = nsim, seed = seed)
  list(
    large = deparse(large), small = deparse(small), REML = TRUE, nsim = nsim, seed = seed,
    stat = pb$test["LRT", "stat"], df = pb$test["LRT", "df"], p_chisq = pb$test["LRT", "p.value"],
    p_pb = pb$test["PBtest", "p.value"], npos = unname(pb$samples["npos"]), n_extreme = pb$n.extreme,
    seconds = proc.time()[[3]] - t0
  )
}

boot_case <- function(formula, data, nsim, seed, REML = TRUE) {
  m <- lmer(formula, data, REML = REML)
  set.seed(seed)
  t0 <- proc.time()[[3]]
  ci <- suppressMessages(confint(m, method = "boot", nsim = nsim, boot.type = "perc", oldNames = FALSE))
  list(formula = deparse(formula), REML = REML, nsim = nsim, seed = seed, names = rownames(ci),
       lower = unname(ci[, 1]), upper = unname(ci[, 2]), seconds = proc.time()[[3]] - t0)
}

names_of <- function(formula, data) {
  m <- lmer(formula, data)
  c(lme4:::profnames(m, FALSE, TRUE), names(fixef(m)))
}

out <- list(
  versions = list(R = R.version.string, lme4 = as.character(packageVersion("lme4")),
                  pbkrtest = as.character(packageVersion("pbkrtest")), boot = as.character(packageVersion("boot"))),
  pb = list(
    sleepstudy_days2 = pb_case(Reaction ~ Days + Days2 + (Days | Subject), Reaction ~ Days + (Days | Subject), s, 2000, 102)
  ),
  boot = list(
    sleepstudy_rs = boot_case(Reaction ~ Days + (Days | Subject), s, 1000, 103)
  ),
  confint_names = list(
    sleepstudy_rs = names_of(Reaction ~ Days + (Days | Subject), s),
    sleepstudy_uncorr = names_of(Reaction ~ Days + (Days || Subject), s),
    pastes_nested = names_of(strength ~ 1 + (1 | batch/cask), Pastes),
    penicillin_crossed = names_of(diameter ~ 1 + (1 | plate) + (1 | sample), Penicillin)
  )
)
writeLines(toJSON(out, auto_unbox = TRUE, digits = NA, pretty = TRUE), "refit_reference.json")
