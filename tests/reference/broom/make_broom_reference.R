# broom.mixed's tidy / glance / augment of lmerTest fits, for tests/test_tidy.py, and lme4's lmList.
# Run from the repository root:  Rscript tests/reference/broom/make_broom_reference.R
# Data: the package's own CSVs (jaxmlm/data), with the factor level orders of levels.json.
# The optimizer runs to tight tolerances, so that lme4's optimum is the criterion's minimum to
# ~1e-9 and the tables can be compared at 1e-6 (its defaults stop ~1e-5 away in θ).
suppressMessages({library(lmerTest); library(broom.mixed); library(jsonlite)})

dat <- function(name) {
  d <- read.csv(file.path("jaxmlm/data", paste0(name, ".csv")))
  lev <- fromJSON("jaxmlm/data/levels.json")[[name]]
  for (col in names(lev)) d[[col]] <- factor(as.character(d[[col]]), levels = lev[[col]])
  d
}
sleep <- dat("sleepstudy"); pen <- dat("Penicillin"); pas <- dat("Pastes"); cls <- dat("classroom")
cls$schoolid <- factor(cls$schoolid); cls$classid <- factor(cls$classid)

cases <- list(
  list(id = "sleep_reml", formula = "Reaction ~ Days + (Days | Subject)", data = "sleepstudy", REML = TRUE),
  list(id = "sleep_ml", formula = "Reaction ~ Days + (Days | Subject)", data = "sleepstudy", REML = FALSE),
  list(id = "sleep_uncorr", formula = "Reaction ~ Days + (Days || Subject)", data = "sleepstudy", REML = TRUE),
  list(id = "penicillin_crossed", formula = "diameter ~ 1 + (1 | plate) + (1 | sample)", data = "Penicillin", REML = TRUE),
  list(id = "pastes_nested", formula = "strength ~ 1 + (1 | batch/cask)", data = "Pastes", REML = TRUE),
  list(id = "classroom_ml", formula = "mathgain ~ mathkind + sex + (1 | schoolid/classid)", data = "classroom", REML = FALSE)
)
frames <- list(sleepstudy = sleep, Penicillin = pen, Pastes = pas, classroom = cls)

col <- function(df) lapply(as.list(df), function(v) if (is.factor(v)) as.character(v) else v)
out <- list(versions = list(R = R.version.string, lme4 = as.character(packageVersion("lme4")),
                            lmerTest = as.character(packageVersion("lmerTest")),
                            broom.mixed = as.character(packageVersion("broom.mixed"))))
for (cs in cases) {
  d <- frames[[cs$data]]
  ctrl <- lmerControl(optimizer = "nloptwrap",
                      optCtrl = list(xtol_abs = 1e-14, ftol_abs = 1e-15, xtol_rel = 1e-14, ftol_rel = 1e-15, maxeval = 1e5))
  m <- lmer(as.formula(cs$formula), data = d, REML = cs$REML, control = ctrl)
  aug <- as.data.frame(augment(m))
  aug <- aug[, grep("^\\.", names(aug))]
  out[[cs$id]] <- list(
    formula = cs$formula, data = cs$data, REML = cs$REML,
    tidy = col(as.data.frame(tidy(m, conf.int = TRUE))),
    tidy_ran_vals = col(as.data.frame(tidy(m, effects = "ran_vals"))),
    glance = col(as.data.frame(glance(m))),
    augment = col(aug),
    augment_rows = as.integer(rownames(aug)))
}
# lme4's lmList (per-group OLS coefficients), for tests/test_lmlist.py: NA where a group cannot estimate one
ll <- function(f, d) { cf <- coef(lmList(as.formula(f), d)); list(formula = f, levels = rownames(cf), coef = col(cf)) }
sw <- sleep; i <- seq_len(nrow(sw)); sw$off <- 0.3 * sw$Days + sin(i); sw$w <- 1 + (i %% 3) / 2
cf <- coef(lmList(Reaction ~ Days + offset(off) | Subject, sw, weights = w))
out$lmlist <- list(sleep = c(ll("Reaction ~ Days | Subject", sleep), data = "sleepstudy"),
                   sleep_offset_weights = list(formula = "Reaction ~ Days + offset(off) | Subject", data = "sleepstudy",
                                               levels = rownames(cf), coef = col(cf)),
                   classroom = c(ll("mathgain ~ mathkind + sex | classid", cls), data = "classroom"))
writeLines(toJSON(out, digits = NA, na = "null", auto_unbox = TRUE, pretty = FALSE),
           "tests/reference/broom/broom_reference.json")
