# lme4 reference predictions for jaxmlm's predict() (tests/test_predict.py).
#
# For a few models (most are reference cases of ../lme4 and ../extra, refitted here with the
# same data and formula; one extra model has transformed predictors) this script builds small
# newdata frames by hand -- known levels, new levels, new combinations of nested levels, NA
# values, a categorical fixed effect -- and records what lme4's predict.merMod returns for
# re.form = NULL (all random effects), NA (none) and partial formulas, with and without
# allow.new.levels. Where lme4 stops with an error, the message is recorded instead.
#
# Usage (from the repository root):
#   Rscript tests/reference/predict/make_predict_reference.R tests/reference
# writes tests/reference/predict/predict_reference.json. Deterministic: no random numbers.
suppressPackageStartupMessages({library(lme4); library(jsonlite)})
args <- commandArgs(TRUE)
refdir <- if (length(args) >= 1) args[1] else "tests/reference"
synth <- function(name) read.csv(file.path(refdir, "data", "synthetic", name), stringsAsFactors = TRUE)

models <- list(
  sleepstudy_rs = list(case = "sleepstudy_rs", data = "sleepstudy", REML = TRUE,
                       formula = "Reaction ~ Days + (Days | Subject)"),
  sleepstudy_uncorr = list(case = "sleepstudy_uncorr", data = "sleepstudy", REML = TRUE,
                           formula = "Reaction ~ Days + (Days || Subject)"),
  penicillin_crossed = list(case = "penicillin_crossed", data = "Penicillin", REML = TRUE,
                            formula = "diameter ~ 1 + (1 | plate) + (1 | sample)"),
  pastes_nested = list(case = "pastes_nested", data = "Pastes", REML = TRUE,
                       formula = "strength ~ 1 + (1 | batch/cask)"),
  nested_slash = list(case = "nested_slash", data = "synthetic/nested_schools.csv", REML = TRUE,
                      formula = "y ~ x + (1 | school/class)"),
  factors_na = list(case = "factors_na", data = "synthetic/factors_na.csv", REML = TRUE,
                    formula = "y ~ f3 * f2 + x + (1 | g)"),
  # Not a reference case: transformed predictors, one of them stateful (scale() keeps the
  # fit's centre and scale for new data: lme4 stores them in the terms' predvars).
  factors_transforms = list(case = NULL, data = "synthetic/factors_na.csv", REML = TRUE,
                            formula = "y ~ f3 + f2 + scale(x) + I(x^2) + log(x + 3) + (1 | g)")
)

get_data <- function(name) {
  if (startsWith(name, "synthetic/")) synth(sub("^synthetic/", "", name))
  else get(name, envir = asNamespace("lme4"))
}

fits <- lapply(models, function(md) lmer(as.formula(md$formula), data = get_data(md$data), REML = md$REML))

# ---- newdata frames (columns as plain vectors: strings for factors, NA for missing) ----
newdata <- list(
  sleep = data.frame(
    Subject = c("308", "308", "309", "372", "999", "999", "330", "331"),
    Days    = c(0,      2.5,   9,     12,    3,     NA,    NA,    -1),
    stringsAsFactors = FALSE),
  sleep_known = data.frame(Subject = c("308", "309", "372", "330"), Days = c(0, 4.5, 9, 12),
                           stringsAsFactors = FALSE),
  penicillin = data.frame(plate = c("a", "b", "x", "x", "w"), sample = c("A", "F", "A", "Z", "C"),
                          stringsAsFactors = FALSE),
  # batch B / cask d: a cask label lme4 never saw, so cask:batch "d:B" is new but batch B is
  # known; batch K is new altogether; A/a and J/c are known combinations.
  pastes = data.frame(batch = c("A", "B", "K", "J", "C"), cask = c("a", "d", "a", "c", "b"),
                      stringsAsFactors = FALSE),
  # S2 has classes c1..c3 only: class:school "c4:S2" is a new combination of known levels.
  schools = data.frame(school = c("S1", "S2", "S2", "S9", "S8"), class = c("c4", "c4", "c1", "c1", "c2"),
                       x = c(0.5, -1, 0, 2, NA), stringsAsFactors = FALSE),
  schools_known = data.frame(school = c("S1", "S3", "S8"), class = c("c4", "c1", "c2"),
                             x = c(0.5, -1, 1.5), stringsAsFactors = FALSE),
  factors = data.frame(
    f3 = c("low", "mid", "high", "high", "low", "mid", "high"),
    f2 = c("no", "yes", "yes", "no", "yes", "no", "yes"),
    x  = c(0.1, -1.5, 2.2, NA, 0.8, -4, 0),
    g  = c(101, 130, 115, 120, 131, 102, 999),
    stringsAsFactors = FALSE),
  sleep_na_group = data.frame(Subject = c("308", NA, "372"), Days = c(1, 2, 3), stringsAsFactors = FALSE),
  # a fixed-effect level lme4 never saw ("none" for f3): lme4 stops
  factors_newfixed = data.frame(f3 = c("low", "none"), f2 = c("no", "yes"), x = c(0.1, 0.2), g = c(101, 102),
                                stringsAsFactors = FALSE)
)

scen <- list()
add <- function(id, model, nd, re_form = NULL, allow = FALSE) {
  m <- fits[[model]]
  rf <- if (is.null(re_form)) NULL else if (identical(re_form, "NA")) NA else as.formula(re_form)
  d <- if (is.null(nd)) NULL else newdata[[nd]]
  res <- tryCatch(
    withCallingHandlers(
      {p <- predict(m, newdata = d, re.form = rf, allow.new.levels = allow); list(prediction = unname(p))},
      warning = function(w) invokeRestart("muffleWarning")),  # log(-1) in newdata: NaN, as wanted
    error = function(e) list(error = conditionMessage(e)))
  scen[[length(scen) + 1]] <<- c(list(id = id, model = model, newdata = nd, re_form = re_form,
                                      allow_new_levels = allow), res)
}

# sleepstudy, correlated intercept and slope
add("sleep_fitted", "sleepstudy_rs", NULL)
add("sleep_fit_rows_pop", "sleepstudy_rs", NULL, "NA")
add("sleep_fit_rows_intercept", "sleepstudy_rs", NULL, "~(1 | Subject)")
add("sleep_fit_rows_slope", "sleepstudy_rs", NULL, "~(0 + Days | Subject)")
add("sleep_known", "sleepstudy_rs", "sleep_known")
add("sleep_new_error", "sleepstudy_rs", "sleep")
add("sleep_new_allowed", "sleepstudy_rs", "sleep", NULL, TRUE)
add("sleep_pop", "sleepstudy_rs", "sleep", "NA")
add("sleep_pop_tilde0", "sleepstudy_rs", "sleep", "~0")
add("sleep_intercept", "sleepstudy_rs", "sleep", "~(1 | Subject)", TRUE)
add("sleep_slope", "sleepstudy_rs", "sleep", "~(0 + Days | Subject)", TRUE)
add("sleep_same_term", "sleepstudy_rs", "sleep", "~(Days | Subject)", TRUE)
add("sleep_na_group_error", "sleepstudy_rs", "sleep_na_group")
add("sleep_na_group_allowed", "sleepstudy_rs", "sleep_na_group", NULL, TRUE)
add("sleep_unknown_group", "sleepstudy_rs", "sleep", "~(1 | Days)", TRUE)
# sleepstudy, uncorrelated: (Days || Subject) is two terms on one factor
add("uncorr_intercept", "sleepstudy_uncorr", "sleep", "~(1 | Subject)", TRUE)
add("uncorr_both_as_one", "sleepstudy_uncorr", "sleep", "~(Days | Subject)", TRUE)
add("uncorr_fit_rows_slope", "sleepstudy_uncorr", NULL, "~(0 + Days | Subject)")
# crossed
add("penicillin_all", "penicillin_crossed", "penicillin", NULL, TRUE)
add("penicillin_plate", "penicillin_crossed", "penicillin", "~(1 | plate)", TRUE)
add("penicillin_sample", "penicillin_crossed", "penicillin", "~(1 | sample)", TRUE)
add("penicillin_pop", "penicillin_crossed", "penicillin", "NA")
add("penicillin_new_error", "penicillin_crossed", "penicillin")
add("penicillin_fit_rows_plate", "penicillin_crossed", NULL, "~(1 | plate)")
# nested, cask:batch
add("pastes_all", "pastes_nested", "pastes", NULL, TRUE)
add("pastes_batch", "pastes_nested", "pastes", "~(1 | batch)", TRUE)
add("pastes_cask_batch", "pastes_nested", "pastes", "~(1 | cask:batch)", TRUE)
add("pastes_slash", "pastes_nested", "pastes", "~(1 | batch/cask)", TRUE)
add("pastes_pop", "pastes_nested", "pastes", "NA")
add("pastes_new_error", "pastes_nested", "pastes")
add("pastes_fit_rows_batch", "pastes_nested", NULL, "~(1 | batch)")
# nested, class:school, with a new combination of known levels
add("schools_all", "nested_slash", "schools", NULL, TRUE)
add("schools_school", "nested_slash", "schools", "~(1 | school)", TRUE)
add("schools_class", "nested_slash", "schools", "~(1 | class:school)", TRUE)
add("schools_new_error", "nested_slash", "schools")
add("schools_known", "nested_slash", "schools_known")
# categorical fixed effects with interaction, integer group ids, NA in x
add("factors_all", "factors_na", "factors", NULL, TRUE)
add("factors_pop", "factors_na", "factors", "NA")
add("factors_new_fixed_level", "factors_na", "factors_newfixed", "NA")
# transformed predictors: scale(x), I(x^2), log(x + 3) (x = -4 gives log(-1) = NaN)
add("transforms_all", "factors_transforms", "factors", NULL, TRUE)
add("transforms_pop", "factors_transforms", "factors", "NA")
add("transforms_fit_rows", "factors_transforms", NULL)

# ---- the original data of factors_na as newdata: predictions for every row, NA where x is NA
full <- list(
  model = "factors_na",
  prediction = unname(predict(fits$factors_na, newdata = synth("factors_na.csv"))),
  prediction_pop = unname(predict(fits$factors_na, newdata = synth("factors_na.csv"), re.form = NA))
)

# Estimates of the model that is not a reference case, for a parity check of the fit itself.
tm <- fits$factors_transforms
transforms_fit <- list(
  fixef = as.list(fixef(tm)), se = as.list(sqrt(diag(as.matrix(vcov(tm))))),
  sigma = sigma(tm), theta = unname(getME(tm, "theta")), nobs = nobs(tm),
  deviance_or_reml = unname(REMLcrit(tm)),
  scale_center = attr(scale(synth("factors_na.csv")$x), "scaled:center"),
  scale_scale = attr(scale(synth("factors_na.csv")$x), "scaled:scale")
)

out <- list(
  R_version = R.version.string,
  lme4_version = as.character(packageVersion("lme4")),
  models = lapply(models, function(md) md[c("case", "data", "REML", "formula")]),
  sigma = lapply(fits, sigma),
  newdata = newdata,
  scenarios = scen,
  full_data = full,
  transforms_fit = transforms_fit
)
path <- file.path(refdir, "predict", "predict_reference.json")
writeLines(toJSON(out, digits = NA, auto_unbox = TRUE, pretty = TRUE, dataframe = "columns", na = "null", null = "null"), path)
cat("wrote", path, "with", length(scen), "scenarios\n")
