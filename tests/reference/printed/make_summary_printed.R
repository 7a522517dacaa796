# How lmerTest prints summary(), ranova() and anova() of whole fits, for tests/test_present.py. Run from the repository root:
#   Rscript tests/reference/printed/make_summary_printed.R
# Data: the package's CSVs (jaxmlm/data) with levels.json's level orders, bound to a variable named
# as the data set so that the "Data:" line names it; lme4 run to tight tolerances so that its
# estimates agree with jaxmlm's to far more than the printed digits. R 4.2.2, lme4 1.1-31,
# lmerTest 3.1-3.
suppressMessages({library(lmerTest); library(jsonlite)})
dat <- function(name) {
  d <- read.csv(file.path("jaxmlm/data", paste0(name, ".csv")))
  lev <- fromJSON("jaxmlm/data/levels.json")[[name]]
  for (col in names(lev)) d[[col]] <- factor(as.character(d[[col]]), levels = lev[[col]])
  d
}
classroom <- dat("classroom")
classroom$schoolid <- factor(classroom$schoolid); classroom$classid <- factor(classroom$classid)
for (name in c("sleepstudy", "Dyestuff", "Dyestuff2", "Penicillin", "Pastes", "nlschools", "Hsb82"))
  assign(name, dat(name))
cases <- list(
  list(id = "sleepstudy_ri", formula = "Reaction ~ Days + (1 | Subject)", data = "sleepstudy", REML = TRUE),
  list(id = "sleepstudy_rs", formula = "Reaction ~ Days + (Days | Subject)", data = "sleepstudy", REML = TRUE),
  list(id = "sleepstudy_rs_ml", formula = "Reaction ~ Days + (Days | Subject)", data = "sleepstudy", REML = FALSE),
  list(id = "sleepstudy_uncorr", formula = "Reaction ~ Days + (Days || Subject)", data = "sleepstudy", REML = TRUE),
  list(id = "dyestuff", formula = "Yield ~ 1 + (1 | Batch)", data = "Dyestuff", REML = TRUE),
  list(id = "dyestuff2_singular", formula = "Yield ~ 1 + (1 | Batch)", data = "Dyestuff2", REML = TRUE),
  list(id = "penicillin_crossed", formula = "diameter ~ 1 + (1 | plate) + (1 | sample)", data = "Penicillin", REML = TRUE),
  list(id = "pastes_nested", formula = "strength ~ 1 + (1 | batch/cask)", data = "Pastes", REML = TRUE),
  list(id = "nlschools_ri", formula = "lang ~ IQ + GS + SES + COMB + (1 | class)", data = "nlschools", REML = TRUE),
  list(id = "nlschools_slope_only", formula = "lang ~ IQ + GS + SES + COMB + (IQ - 1 | class)", data = "nlschools", REML = TRUE),
  list(id = "nlschools_ri_ml", formula = "lang ~ IQ + GS + SES + COMB + (1 | class)", data = "nlschools", REML = FALSE),
  list(id = "hsb_null", formula = "mAch ~ 1 + (1 | school)", data = "Hsb82", REML = FALSE),
  list(id = "hsb_ses", formula = "mAch ~ ses + (1 | school)", data = "Hsb82", REML = FALSE),
  list(id = "hsb_ses_slope", formula = "mAch ~ ses + (ses | school)", data = "Hsb82", REML = TRUE),
  list(id = "penicillin_reversed", formula = "diameter ~ 1 + (1 | sample) + (1 | plate)", data = "Penicillin", REML = TRUE),
  list(id = "pastes_no_intercept", formula = "strength ~ 0 + (1 | batch/cask)", data = "Pastes", REML = TRUE),
  list(id = "classroom_nested", formula = "mathgain ~ mathkind + sex + minority + ses + (1 | schoolid/classid)", data = "classroom", REML = TRUE))
ctrl <- lmerControl(optimizer = "nloptwrap",
                    optCtrl = list(xtol_abs = 1e-14, ftol_abs = 1e-15, xtol_rel = 1e-14, ftol_rel = 1e-15, maxeval = 1e5))
out <- list()
for (cs in cases) {
  m <- eval(parse(text = sprintf("lmer(%s, data = %s, REML = %s, control = ctrl)", cs$formula, cs$data, cs$REML)))
  s <- capture.output(print(summary(m)))
  # lmerTest's ranova() and anova() (type III, Satterthwaite) of the same fit, as printed
  r <- capture.output(print(ranova(m)))
  a <- if (length(fixef(m)) > 1) capture.output(print(anova(m))) else character(0)
  out[[cs$id]] <- list(formula = cs$formula, data = cs$data, REML = cs$REML, lines = sub(" +$", "", s),
                       ranova = sub(" +$", "", r), anova = sub(" +$", "", a))
}
# R's abbreviate(), which labels the columns (minlength 6) and rows (11) of the correlation block
nm <- c("(Intercept)", "mathkind", "minority", "standLRT", "schgendgirls", "schgendmixed", "Days:Treatment",
        "I(x^2)", "sexF", "age yrs", "abcdefgh", "abcdefgi", "aeiouaeiou", "COMB1:IQ", "log(Days + 1)", "poly(x, 2)1")
out[["abbreviate"]] <- list(names = nm, minlength6 = unname(abbreviate(nm, 6)), minlength11 = unname(abbreviate(nm, 11)))
writeLines(toJSON(out, auto_unbox = TRUE, pretty = TRUE), "tests/reference/printed/summary_printed.json")
