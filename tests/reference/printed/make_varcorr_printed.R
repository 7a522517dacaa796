# How lme4's summary prints the random-effects block (VarCorr, number of obs and groups), for
# tests/test_present.py. Run from the repository root:
#   Rscript tests/reference/printed/make_varcorr_printed.R
# Data: the package's CSVs (jaxmlm/data) with levels.json's level orders; lme4 run to tight
# tolerances so that its estimates agree with jaxmlm's to far more than the 4 printed digits.
suppressMessages({library(lme4); library(jsonlite)})
dat <- function(name) {
  d <- read.csv(file.path("jaxmlm/data", paste0(name, ".csv")))
  lev <- fromJSON("jaxmlm/data/levels.json")[[name]]
  for (col in names(lev)) d[[col]] <- factor(as.character(d[[col]]), levels = lev[[col]])
  d
}
cls <- dat("classroom"); cls$schoolid <- factor(cls$schoolid); cls$classid <- factor(cls$classid)
sleep <- dat("sleepstudy"); sleep$R100 <- sleep$Reaction * 100
frames <- list(classroom = cls, sleepstudy = sleep, Penicillin = dat("Penicillin"), Dyestuff = dat("Dyestuff"),
               Pastes = dat("Pastes"))
cases <- list(
  list(id = "classroom_nested", formula = "mathgain ~ mathkind + (1 | schoolid/classid)", data = "classroom"),
  list(id = "sleep_slope", formula = "Reaction ~ Days + (Days | Subject)", data = "sleepstudy"),
  list(id = "sleep_large", formula = "R100 ~ Days + (Days | Subject)", data = "sleepstudy"),
  list(id = "sleep_uncorr", formula = "Reaction ~ Days + (Days || Subject)", data = "sleepstudy"),
  list(id = "penicillin", formula = "diameter ~ 1 + (1 | plate) + (1 | sample)", data = "Penicillin"),
  list(id = "dyestuff", formula = "Yield ~ 1 + (1 | Batch)", data = "Dyestuff"),
  list(id = "pastes", formula = "strength ~ 1 + (1 | batch/cask)", data = "Pastes"))
ctrl <- lmerControl(optimizer = "nloptwrap",
                    optCtrl = list(xtol_abs = 1e-14, ftol_abs = 1e-15, xtol_rel = 1e-14, ftol_rel = 1e-15, maxeval = 1e5))
out <- list()
for (cs in cases) {
  m <- lmer(as.formula(cs$formula), frames[[cs$data]], control = ctrl)
  s <- capture.output(print(summary(m)))
  block <- s[grep("^Random effects:", s):(grep("^Fixed effects:", s) - 1)]
  out[[cs$id]] <- list(formula = cs$formula, data = cs$data, lines = sub(" +$", "", block[nzchar(block)]))
}
writeLines(toJSON(out, auto_unbox = TRUE, pretty = TRUE), "tests/reference/printed/varcorr_printed.json")
