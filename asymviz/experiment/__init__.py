"""The thesis experiment: every strategy against dropout, tuned on some seeds and tested on others,
with verdicts that could come out either way, the width sweep of claim 3 and the meProp anchor.

    python -m asymviz experiment --preset quick        # minutes on 2 cores, then a report

    from asymviz import experiment as ex
    spec = ex.preset("standard")                       # or ExperimentSpec(datasets=[...], ...)
    exp_id = ex.launch(spec, runner, owner="ana")      # stage 1 queued at once; advance() queues stage 2
    ex.progress(runner.store, exp_id)                  # {"done": 37, "total": 598, "eta_s": 212.0, ...}
    a = ex.analyze(runner.store, exp_id)               # runs, selection, confirmation, verdicts, speed, anchor
    ex.write_report(runner.store, exp_id, "out/")      # Markdown, standalone HTML, CSV, JSON

The thesis claims that asymmetric training, compared with symmetric training with dropout,
(1) reduces overfitting, (2) reaches better accuracy and (3) reduces backprop time.

Modules: `spec` (the grid, its arms, settings and cells; presets), `schedule` (launch, the two
stages, stop, progress, the width sweep, the dashboard's Advancer), `stats` (t intervals, margins,
the four verdicts, Holm), `results` (runs and tables from the store, the verdicts of every claim),
`report` (Markdown, HTML, CSV, JSON) and `provenance` (commit, versions, the stale-report check).
"""

from asymviz.experiment.provenance import REGENERATE, check_report, commit_info
from asymviz.experiment.report import markdown_table, render_report, report_markdown, write_report
from asymviz.experiment.results import (RUN_COLUMNS, analyze, collect, curves, selection_table, step_medians,
                                        summarize)
from asymviz.experiment.schedule import (ACTIVE, DONE, Advancer, ExperimentNotFound, advance, cell_runs, decisions,
                                         experiment_state, launch, list_experiments, load_spec, measure_speed,
                                         prepare_data, progress, speed_due, stop)
from asymviz.experiment.spec import (ANCHOR_SEED0, CONFIRMATION_SEED0, FIELDS, MAX_CELLS, MEPROP, MEPROP_PUBLISHED,
                                     estimate, estimate_text,
                                     PRESETS, SELECTION_SEED0, SPARSE, STRATEGIES, Arm, Cell, ExperimentSpec, Group,
                                     Setting, experiment_id, preset)
from asymviz.experiment.stats import compare, holm, judge_family, mean_ci

__all__ = [name for name in dir() if not name.startswith("_")]
