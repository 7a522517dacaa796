# Reference equations for tests/test_equations.py, written by R's equatiomatic (extract_eq) for lme4 fits.
#
# equatiomatic 0.4.9 is no longer on CRAN; it was installed from its GitHub sources
# (github.com/datalorax/equatiomatic, commit 225bdf5: DESCRIPTION, NAMESPACE and R/ only) with
#   R CMD INSTALL -l <lib> equatiomatic
# and this script run as
#   R_LIBS=<lib> Rscript make_equatiomatic.R   (from this folder)
# with lme4 1.1-31, mlmRev 1.0-8 (Hsb82), jsonlite; classroom is jaxmlm/data/classroom.csv.
# It writes equatiomatic.json: {name: {formula, data, latex}}.
suppressMessages({library(lme4); library(mlmRev); library(equatiomatic); library(jsonlite)})
classroom <- read.csv("../../../jaxmlm/data/classroom.csv")
data_sets <- list(Hsb82 = Hsb82, classroom = classroom)
models <- list(
  intercept = c("mAch ~ 1 + (1 | school)", "Hsb82"),
  slope = c("mAch ~ ses + (ses | school)", "Hsb82"),
  cross_level = c("mAch ~ meanses * cses + sector + (cses | school)", "Hsb82"),
  categorical = c("mAch ~ sx + sector + (1 | school)", "Hsb82"),
  three_level = c("mathgain ~ mathkind + ses + (1 | schoolid/classid)", "classroom"),
  three_level_predictors = c("mathgain ~ ses * housepov + yearstea + (1 | schoolid/classid)", "classroom")
)
out <- list()
for (name in names(models)) {
  f <- models[[name]][1]
  d <- data_sets[[models[[name]][2]]]
  m <- lmer(as.formula(f), data = d)
  out[[name]] <- list(formula = f, data = models[[name]][2], latex = as.character(extract_eq(m)))
}
writeLines(toJSON(out, auto_unbox = TRUE, pretty = TRUE), "equatiomatic.json")
