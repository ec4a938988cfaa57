"""The report of an experiment: a provenance header, the verdicts in words and tables, the
selection and confirmation stages, the width sweep and the meProp anchor; as Markdown, a
standalone HTML page with figures, CSV tables (runs.csv: one row per run) and JSON.

    a = analyze(store, exp_id)
    files = render_report(store, exp_id)           # {"report.md": text, "runs.csv": text, ...}
    write_report(store, exp_id, "results/standard", results="RESULTS.md")
"""

from __future__ import annotations

import html
import json
import math
import os
import time
from pathlib import Path
from typing import Iterable

import pandas as pd

from asymviz.experiment import provenance
from asymviz.experiment.results import FAMILIES, analyze
from asymviz.experiment.spec import MEPROP, MEPROP_PUBLISHED
from asymviz.experiment.stats import ALPHA, LEVEL

METRIC_WORDS = {"gap": "train - test gap", "test_acc": "test accuracy", "backward ms": "backward time",
                "step ms": "training-step time"}


# ------------------------------------------------------------------------------- formatting


def num(x, spec: str = ".3f") -> str:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return "-"
    return "-" if not math.isfinite(x) else format(x, spec)


def interval(mean, lo, hi, spec: str = ".3f") -> str:
    """'0.912 [0.905, 0.919]', or the mean alone without an interval."""
    try:
        ok = math.isfinite(float(lo)) and math.isfinite(float(hi))
    except (TypeError, ValueError):
        ok = False
    return f"{num(mean, spec)} [{num(lo, spec)}, {num(hi, spec)}]" if ok else num(mean, spec)


def pvalue(p) -> str:
    try:
        p = float(p)
    except (TypeError, ValueError):
        return "-"
    if not math.isfinite(p):
        return "-"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def duration(seconds) -> str:
    try:
        s = int(round(float(seconds)))
    except (TypeError, ValueError):
        return "-"
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h} h {m:02d} min" if h else f"{m} min {s:02d} s" if m else f"{s} s"


def _group(row) -> str:
    return f"{row['dataset']}, {row['hidden']}, {row['budget']}"


# ---------------------------------------------------------------------------------- tables


def shown_verdicts(v: pd.DataFrame, family: str) -> pd.DataFrame:
    """The verdicts of one family, for people: Δ with its interval beside every verdict."""
    part = v[v["family"] == family] if len(v) else v
    if family in ("3", "3 step"):
        return pd.DataFrame({
            "strategy": part.get("strategy", []), "width": [num(w, ".0f") for w in part.get("width", [])],
            "sparsity": [num(s, "g") for s in part.get("sparsity", [])],
            "speedup [95 % CI]": [interval(m, lo, hi, ".2f") + "x" for m, lo, hi in
                                 zip(part.get("speedup", []), part.get("speedup_lo", []), part.get("speedup_hi", []))],
            "margin": [f"±{(math.exp(m) - 1) * 100:.0f} %" for m in part["margin"]],
            "verdict": part["verdict"], "p (Holm)": [pvalue(p) for p in part["p_holm"]], "repeats": part["n"],
        })
    return pd.DataFrame({
        "dataset": part["dataset"], "hidden": part["hidden"], "budget": part["budget"], "arm": part["arm"],
        "vs": part["baseline"], "metric": [METRIC_WORDS.get(m, m) for m in part["metric"]],
        "arm mean": [num(x, ".4f") for x in part["mean"]], "baseline mean": [num(x, ".4f") for x in part["baseline_mean"]],
        "Δ [95 % CI]": [interval(d, lo, hi, "+.4f") for d, lo, hi in zip(part["diff"], part["lo"], part["hi"])],
        "margin": [f"±{num(m, '.4f')}" for m in part["margin"]],
        "verdict": part["verdict"], "p (Holm)": [pvalue(p) for p in part["p_holm"]],
        "effect d_z": [num(e, "+.2f") for e in part["effect"]], "seeds": part["n"],
        "note": part["note"].fillna(""),
    })


def shown_selection(sel: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "dataset": sel["dataset"], "hidden": sel["hidden"], "budget": sel["budget"], "arm": sel["arm"],
        "setting": sel["setting"],
        "selection metric (mean val acc)": [("only candidate" if only else num(m, ".4f"))
                                            for m, only in zip(sel["metric"], sel["only"])],
        "per seed": sel["seeds"], "seeds": sel["n"],
        "chosen": ["✓" if c else ("" if d else "…") for c, d in zip(sel["chosen"], sel["decided"])],
    })


def shown_confirmation(conf: pd.DataFrame) -> pd.DataFrame:
    if not len(conf):
        return pd.DataFrame()
    return pd.DataFrame({
        "dataset": conf["dataset"], "hidden": conf["hidden"], "budget": conf["budget"], "arm": conf["arm"],
        "chosen setting": conf["setting"], "seeds": conf["n"],
        "test acc": [interval(m, lo, hi, ".4f") for m, lo, hi in zip(conf["test_acc"], conf["test_acc_lo"],
                                                                     conf["test_acc_hi"])],
        "train - test gap": [interval(m, lo, hi, ".4f") for m, lo, hi in zip(conf["gap"], conf["gap_lo"],
                                                                             conf["gap_hi"])],
        "test loss": [interval(m, lo, hi, ".3f") for m, lo, hi in zip(conf["test_loss"], conf["test_loss_lo"],
                                                                      conf["test_loss_hi"])],
        "val acc": [num(x, ".4f") for x in conf["selection_metric"]],
        "epochs": [num(x, ".1f") for x in conf["epochs"]],
        "hit the cap": conf["hit_cap"],
        "backward ms": [num(x, ".3f") for x in conf["backward_ms"]],
        "failed": conf["n_failed"],
    })


def shown_speed(speed: pd.DataFrame) -> pd.DataFrame:
    if not len(speed):
        return pd.DataFrame()
    return pd.DataFrame({
        "strategy": speed["strategy"], "width": speed["width"], "sparsity": [num(s, "g") for s in speed["sparsity"]],
        "keep": speed["keep"], "path": speed["path"],
        "dense bwd ms": [num(x, ".2f") for x in speed["dense_backward_ms"]],
        "sparse bwd ms": [num(x, ".2f") for x in speed["sparse_backward_ms"]],
        "backward speedup": [interval(m, lo, hi, ".2f") + "x" for m, lo, hi in
                             zip(speed["backward_speedup"], speed["backward_lo"], speed["backward_hi"])],
        "ideal": [num(x, ".1f") + "x" for x in speed["ideal"]],
        "backward": speed["backward_verdict"],
        "step speedup": [interval(m, lo, hi, ".2f") + "x" for m, lo, hi in
                         zip(speed["step_speedup"], speed["step_lo"], speed["step_hi"])],
        "step": speed["step_verdict"],
    })


def shown_anchor(anchor: pd.DataFrame) -> pd.DataFrame:
    if not len(anchor):
        return pd.DataFrame()
    return pd.DataFrame({
        "arm": anchor["arm"], "seeds": anchor["n"],
        "test acc (ours)": [interval(m, lo, hi, ".4f") for m, lo, hi in
                            zip(anchor["test_acc"], anchor["test_acc_lo"], anchor["test_acc_hi"])],
        "test acc (meProp paper)": [num(x, ".4f") for x in anchor["published_test_acc"]],
        "backward speedup (ours)": [interval(m, lo, hi, ".2f") + "x" if math.isfinite(m) else "-" for m, lo, hi in
                                    zip(anchor["backward_speedup"], anchor["backward_speedup_lo"],
                                        anchor["backward_speedup_hi"])],
        "backprop speedup (paper)": [num(x, ".1f") + "x" if math.isfinite(x) else "-"
                                     for x in anchor["published_speedup"]],
        "path": anchor["path"].fillna("-"),
    })


def markdown_table(df: pd.DataFrame) -> str:
    """A GitHub Markdown table of a frame of strings and numbers."""
    if not len(df.columns):
        return "(nothing yet)"

    def cell(x) -> str:
        return str(x).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(c) for c in df.columns) + " |", "|" + "|".join("---" for _ in df.columns) + "|"]
    lines += ["| " + " | ".join(cell(x) for x in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------- words


def _count(part: pd.DataFrame) -> str:
    counts = part["verdict"].value_counts()
    found = [f"{counts[v]} {v}" for v in ("better", "equivalent", "worse", "inconclusive") if v in counts]
    return ", ".join(found) + f" (of {len(part)} comparison{'s' * (len(part) != 1)})"


def _sentence(row) -> str:
    """'neuron is worse than dropout on mnist1d, 256,256, equal: gap 0.21 against 0.09, Δ +0.12
    [+0.10, +0.14], beyond the margin ±0.009 (Holm p < 0.001).'"""
    verdict = row["verdict"]
    what = {"better": "better than", "worse": "worse than", "equivalent": "equivalent to",
            "inconclusive": "inconclusive against"}[verdict]
    metric = METRIC_WORDS.get(row["metric"], row["metric"])
    text = (f"{row['arm']} is {what} {row['baseline']} on {_group(row)}: {metric} {num(row['mean'], '.4f')} against "
            f"{num(row['baseline_mean'], '.4f')}, Δ {interval(row['diff'], row['lo'], row['hi'], '+.4f')}")
    if verdict in ("better", "worse"):
        text += f", beyond the margin ±{num(row['margin'], '.4f')}"
    elif verdict == "equivalent":
        text += f", within the margin ±{num(row['margin'], '.4f')}"
    else:
        text += f" (margin ±{num(row['margin'], '.4f')})"
    if row.get("note"):
        text += f"; {row['note']}"
    return text + (f" (Holm p {pvalue(row['p_holm'])})." if math.isfinite(row["p_holm"]) else ".")


def words(a: dict) -> list[str]:
    """What came out, in sentences (Markdown bullets), whichever way it came out."""
    v, spec = a["verdicts"], a["spec"]
    out = []
    for family, intro in (("1", "train - test accuracy gap of the tested model, lower is better"),
                          ("2", "test accuracy, higher is better")):
        part = v[v["family"] == family] if len(v) else v
        out.append(f"- **Claim {FAMILIES[family]}** ({intro}; each thesis strategy's chosen setting against "
                   f"dropout's, on {spec.confirmation_seeds} confirmation seeds): "
                   + (_count(part) + "." if len(part) else "no comparison yet."))
        out += [f"  - {_sentence(r)}" for _, r in part.iterrows()]
    curves = a["curves"]
    if spec.speed_widths:
        if not len(curves):
            out.append("- **Claim 3. reduces backprop time**: the width sweep has not been measured yet.")
        else:
            out.append(f"- **Claim 3. reduces backprop time** (width sweep, {spec.speed_depth} hidden layers, batch "
                       f"{spec.speed_batch}, dense and sparse steps interleaved; better = faster by more than "
                       f"{spec.margin_time:.0%}):")
            speed = a["speed"]
            for _, c in curves.iterrows():
                rows = speed[(speed["strategy"] == c["strategy"]) & (speed["sparsity"] == c["sparsity"])]
                ratios = ", ".join(f"{num(r.backward_speedup, '.2f')}x at {r.width}" for r in rows.itertuples())
                steps = ", ".join(f"{num(r.step_speedup, '.2f')}x at {r.width}" for r in rows.itertuples())
                head = (f"pays from width {c['backward_from']} up" if c["backward_from"] is not None
                        else "does not pay at any width of the sweep")
                step = (f"the whole step from width {c['step_from']} up" if c["step_from"] is not None
                        else "the whole step at no width of the sweep")
                out.append(f"  - {c['strategy']} at sparsity {c['sparsity']:g}: the sparse backward {head}, "
                           f"{step} (backward {ratios}; step {steps}).")
    part = v[v["family"] == "ablation"] if len(v) else v
    if len(part):
        out.append("- **Ablations** (each against its base arm, test accuracy): " + _count(part) + ".")
        out += [f"  - {_sentence(r)}" for _, r in part.iterrows()]
    if spec.meprop:
        anchor = a["anchor"]
        out.append(f"- **meProp anchor** (MNIST 784-500-500-10, {spec.meprop_epochs} epochs, "
                   f"{spec.meprop_seeds} seeds): published {MEPROP_PUBLISHED['symmetric_test_acc']:.2%} -> "
                   f"{MEPROP_PUBLISHED['top80_test_acc']:.2%} at top-80 with backprop "
                   f"{MEPROP_PUBLISHED['backprop_speedup']}x faster on CPU.")
        for _, r in anchor.iterrows():
            speed = (f", backward {interval(r['backward_speedup'], r['backward_speedup_lo'], r['backward_speedup_hi'], '.2f')}x"
                     f" against dense" if math.isfinite(r["backward_speedup"]) else "")
            out.append(f"  - {r['arm']}: test accuracy {interval(r['test_acc'], r['test_acc_lo'], r['test_acc_hi'], '.4f')}"
                       f"{speed}.")
        part = v[v["family"] == "anchor"] if len(v) else v
        out += [f"  - {_sentence(r)}" for _, r in part.iterrows()]
    return out


RULES = f"""\
**How to read the verdicts.** Every claim compares paired runs (same seed, so the same initialization
and data order) on the confirmation seeds only: selection chose each arm's setting (sparsity, dropout p,
learning rate) on other seeds, by validation accuracy. Δ is the mean paired difference, arm minus
baseline, with its {LEVEL:.0%} t interval. Each claim states a practical margin: claim 1 10 % of dropout's
gap (at least 0.005), claim 2 half a point of accuracy, claim 3 10 % of the time (on the log scale).
*better*: better by more than the margin (one-sided t-test of Δ against the margin); *worse*: worse by
more than the margin; *equivalent*: within ±margin (two one-sided tests); *inconclusive*: none of these
shown, more seeds would narrow the interval. Each test runs at one-sided level {ALPHA} (without
correction: the {LEVEL:.0%} interval wholly beyond +margin, beyond -margin, or inside ±margin); the
p-value of each comparison's verdict is Holm-corrected within its family (all comparisons of one claim),
and a verdict stands only if the corrected p stays below {ALPHA}. Effect d_z is Δ over the standard
deviation of the paired differences. When all paired differences are equal the t-test is undefined and
the comparison is inconclusive."""


# ------------------------------------------------------------------------------------ report


def header(a: dict, head: dict) -> list[str]:
    """The provenance table."""
    p = a["progress"]
    speed = a["speed_raw"] or {}
    wall = p["elapsed_s"] + float(speed.get("wall_s") or 0.0)
    versions = head.get("versions") or provenance.versions()
    rows = [("Commit", provenance.commit_text(trained_commit(a["state"].get("code") or [],
                                                             head.get("commit") or provenance.commit_info()))),
            ("Packages", ", ".join(f"{k} {v}" for k, v in versions.items())),
            ("Machine", head.get("machine") or provenance.machine_line()),
            ("Wall time", f"{duration(wall)}: training {duration(p['elapsed_s'])} (first run started to last run "
                          f"ended)" + (f", width sweep {duration(speed['wall_s'])} on {speed.get('threads')} thread(s)"
                                       if speed.get("wall_s") else "")),
            ("Runs", f"{p['done']} of {p['total']} done" + (f", {p['failed']} failed or stopped" if p["failed"] else "")
             + ("" if p["complete"] else f", {p['running'] + p['queued'] + p['pending'] + p['waiting']} still to run")),
            ("Generated", time.strftime("%Y-%m-%d %H:%M %Z", time.localtime(head.get("generated_at", time.time()))))]
    if head.get("command"):
        rows.append(("Command", f"`{head['command']}`"))
    if head.get("links"):
        rows.append(("Raw data", ", ".join(f"[{n}]({path})" for n, path in head["links"])))
    return ["| | |", "|---|---|"] + [f"| **{k}** | {v} |" for k, v in rows]


def trained_commit(launches: list[dict], now: dict) -> dict:
    """The commit the report vouches for: the one the report is written at, provided every
    launch of the experiment (the code that trained its runs) was a clean checkout of that same
    commit; otherwise it is marked dirty with the reason, so the stale-report check fails."""
    other = sorted({f"{(c.get('commit') or 'unknown')[:12]}{' (dirty)' if c.get('dirty') else ''}" for c in launches
                    if c.get("commit") != now.get("commit") or c.get("dirty")})
    if not other:
        return now
    return {**now, "dirty": True, "reason": f"runs were trained by other code: {', '.join(other)}"}


def data_lines(info: Iterable[dict]) -> list[str]:
    out = []
    for d in info:
        source = ""
        if d.get("source") == "npm":
            source = (f"; images from the npm package {d['origin']} ({d['images']:,} images"
                      + (f", {d['skipped']} entries that were not 784-pixel images skipped" if d.get("skipped") else "")
                      + "), split 70/15/15 with a fixed seed, stratified by class"
                      + (" (a 10,000-digit subset of MNIST, not its 60,000 training images)" if d["name"] == "mnist"
                         else ""))
        elif d.get("source") == "idx":
            source = f"; the original IDX files from {d['origin']} (official test split)"
        out.append(f"- {d['dataset']}: {d['n_train']:,} train, {d['n_val']:,} validation, {d['n_test']:,} test{source}.")
    return out


def report_markdown(a: dict, head: dict | None = None, notes: Iterable[str] = ()) -> str:
    """The report as Markdown."""
    head = head or {}
    spec, v = a["spec"], a["verdicts"]
    lines = [f"# asymviz experiment {a['id']}: asymmetric training against dropout", ""]
    lines += header(a, head) + [""]
    lines += ["## The grid", "", spec.describe(), ""]
    if head.get("data"):
        lines += ["Data:", ""] + data_lines(head["data"]) + [""]
    lines += list(notes) + ([""] if notes else [])
    lines += ["## What came out", ""] + words(a) + [""]
    lines += ["## Verdicts", ""]
    for family in FAMILIES:
        part = v[v["family"] == family] if len(v) else v
        if len(part):
            lines += [f"### {FAMILIES[family]}", "", markdown_table(shown_verdicts(v, family)), ""]
    lines += [RULES, ""]
    lines += ["## Selection stage", "",
              f"Each arm's candidate settings on {spec.selection_seeds} selection seed(s); the selection metric is the "
              "mean validation accuracy of the tested model (last epoch for the equal budget, the early-stopping "
              "checkpoint for converge); ✓ marks the setting chosen for confirmation (… : not decided yet).", "",
              markdown_table(shown_selection(a["selection"])), ""]
    lines += ["## Confirmation stage", "",
              f"The chosen settings on {spec.confirmation_seeds} fresh seeds; mean and {LEVEL:.0%} t interval. "
              "train - test gap and test loss are of the tested model; backward ms is the median step; "
              f"'hit the cap': converge runs that reached {spec.max_epochs} epochs without early stopping.", "",
              markdown_table(shown_confirmation(a["confirmation"])), ""]
    if spec.speed_widths:
        speed = a["speed_raw"] or {}
        lines += ["## Claim 3: the width sweep", "",
                  "Dense (symmetric, PyTorch's fused Adam) and sparse (lazy update) training steps on the same "
                  "weights and batch, interleaved in one process (`asymviz.bench`); speedup = dense / sparse time, "
                  "geometric mean over the repeats with its interval; ideal = the backward's FLOP ratio; path = "
                  "how the sparse backward ran (the compaction rule may send a layer to the dense kernels)."
                  + (f" Measured on {speed.get('threads')} thread(s) while {speed.get('busy_runs')} other run(s) "
                     "were training" + (f", load average {speed['load'][0]} at the start and {speed['load'][1]} at "
                                        "the end" if all(x is not None for x in speed.get("load") or [None]) else "")
                     + "." if speed else ""), "",
                  markdown_table(shown_speed(a["speed"])), ""]
    if spec.meprop:
        lines += ["## The meProp anchor", "",
                  f"MNIST, 784-500-500-10, Adam lr 0.001, batch {MEPROP['batch_size']}, {spec.meprop_epochs} epochs, "
                  f"top-80 and top-20 of 500 (s = 0.84, 0.96) per example and per batch, against symmetric and "
                  f"dropout p={MEPROP['dropout']:g}; test accuracy after the last epoch. Published: "
                  f"{MEPROP_PUBLISHED['source']}.", "",
                  markdown_table(shown_anchor(a["anchor"])), ""]
    failed = a["runs"][~a["runs"]["status"].isin(["finished", "diverged"])] if len(a["runs"]) else a["runs"]
    if len(failed):
        lines += ["## Runs that did not finish", "",
                  markdown_table(failed[["cell", "status", "error"]].fillna("")), ""]
    return "\n".join(lines).rstrip() + "\n"


_CSS = """body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#0f172a}
table{border-collapse:collapse;font-size:13px;margin:0.5em 0 1.5em}th,td{border:1px solid #cbd5e1;padding:3px 8px;text-align:left}
th{background:#f1f5f9}td.better{background:#dcfce7}td.worse{background:#fee2e2}td.equivalent{background:#e0f2fe}
td.inconclusive{background:#fef9c3}p.small{font-size:13px;color:#475569}"""


def html_table(df: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    body = []
    for row in df.itertuples(index=False):
        cells = []
        for x in row:
            text = str(x)
            cls = text if text in ("better", "worse", "equivalent", "inconclusive") else ""
            cells.append(f'<td class="{cls}">{html.escape(text)}</td>' if cls else f"<td>{html.escape(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def figures(a: dict) -> list[tuple[str, object]]:
    """(section, Figure) pairs of the report."""
    from asymviz import figures_experiment as fx

    out = []
    conf = a["confirmation"]
    if len(conf):
        out.append(("confirmation", fx.confirmation_metric(conf, "test_acc", "Confirmation: test accuracy")))
        out.append(("confirmation", fx.confirmation_metric(conf, "gap", "Confirmation: train - test gap")))
    if len(a["speed"]):
        out.append(("speed", fx.width_sweep(a["speed"], "backward", "Claim 3: backward speedup against width")))
        out.append(("speed", fx.width_sweep(a["speed"], "step", "Claim 3: training-step speedup against width")))
    if len(a["anchor"]):
        out.append(("anchor", fx.meprop_comparison(a["anchor"], "meProp anchor: ours next to the paper")))
    return out


def report_html(a: dict, markdown: str) -> str:
    """A standalone HTML report: tables and plotly figures, plotly.js embedded once (offline)."""
    v, spec = a["verdicts"], a["spec"]
    figs = figures(a)
    first = True

    def plots(section: str) -> list[str]:
        nonlocal first
        out = []
        for where, fig in figs:
            if where == section:
                out.append(fig.to_html(full_html=False, include_plotlyjs=first))
                first = False
        return out

    head = markdown.split("\n## What came out")[0].splitlines()[1:]
    said = markdown.split("## What came out")[1].split("\n## Verdicts")[0] if "## What came out" in markdown else ""
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>asymviz {a['id']}</title>"
             f"<style>{_CSS}</style></head><body>", f"<h1>asymviz experiment {html.escape(a['id'])}</h1>",
             "".join(f"<p class='small'>{html.escape(line)}</p>" for line in head if line.strip()),
             "<h2>What came out</h2>",
             "".join(f"<p>{html.escape(line.strip(' -'))}</p>" for line in said.splitlines() if line.strip()),
             "<h2>Verdicts</h2>"]
    for family in FAMILIES:
        if len(v) and (v["family"] == family).any():
            parts += [f"<h3>{html.escape(FAMILIES[family])}</h3>", html_table(shown_verdicts(v, family))]
    parts.append(f"<p class='small'>{html.escape(RULES.replace('*', ''))}</p>")
    parts += ["<h2>Selection stage</h2>", html_table(shown_selection(a["selection"]))]
    parts += ["<h2>Confirmation stage</h2>", *plots("confirmation"), html_table(shown_confirmation(a["confirmation"]))]
    if spec.speed_widths:
        parts += ["<h2>Claim 3: the width sweep</h2>", *plots("speed"), html_table(shown_speed(a["speed"]))]
    if spec.meprop:
        parts += ["<h2>The meProp anchor</h2>", *plots("anchor"), html_table(shown_anchor(a["anchor"]))]
    parts.append("</body></html>")
    return "\n".join(parts)


def _jsonable(frame: pd.DataFrame) -> list[dict]:
    return json.loads(frame.to_json(orient="records")) if len(frame) else []


def render_report(store, exp_id: str, notes: Iterable[str] = (), head: dict | None = None,
                  a: dict | None = None) -> dict[str, str]:
    """The report files as text, {file name: content}: runs.csv (one row per run), selection.csv,
    confirmation.csv, verdicts.csv, speed.csv, anchor.csv, report.md, report.html and report.json."""
    a = a or analyze(store, exp_id)
    text = report_markdown(a, head, notes)
    files = {"runs.csv": a["runs"].to_csv(index=False), "selection.csv": a["selection"].to_csv(index=False),
             "confirmation.csv": a["confirmation"].to_csv(index=False),
             "verdicts.csv": a["verdicts"].to_csv(index=False), "speed.csv": a["speed"].to_csv(index=False),
             "anchor.csv": a["anchor"].to_csv(index=False), "report.md": text, "report.html": report_html(a, text)}
    files["report.json"] = json.dumps({
        "experiment": exp_id, "spec": a["spec"].to_dict(), "progress": a["progress"],
        "verdicts": _jsonable(a["verdicts"]), "selection": _jsonable(a["selection"]),
        "confirmation": _jsonable(a["confirmation"]), "speed": _jsonable(a["speed"]), "curves": _jsonable(a["curves"]),
        "anchor": _jsonable(a["anchor"]), "head": {k: v for k, v in (head or {}).items() if k != "links"},
    }, indent=1, default=str)
    return files


def write_report(store, exp_id: str, out_dir: str | os.PathLike, notes: Iterable[str] = (),
                 results: str | os.PathLike | None = None, head: dict | None = None) -> dict[str, str]:
    """Write the report files into out_dir (and, with `results`, the Markdown report there too,
    its links to the CSV files relative to it); {file name: path}."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    head = dict(head or {})
    head.setdefault("commit", provenance.commit_info())
    head.setdefault("generated_at", time.time())
    a = analyze(store, exp_id)
    names = ("runs.csv", "selection.csv", "confirmation.csv", "verdicts.csv", "speed.csv", "anchor.csv")
    head["links"] = [(name, name) for name in names]
    paths = {}
    for name, text in render_report(store, exp_id, notes, head, a).items():
        (out / name).write_text(text, encoding="utf-8")
        paths[name] = str(out / name)
    if results:  # the same report, its links relative to where it lies
        base = Path(results).resolve().parent
        head["links"] = [(name, os.path.relpath(out.resolve() / name, base)) for name in names]
        Path(results).write_text(report_markdown(a, head, notes), encoding="utf-8")
        paths["results"] = str(results)
    return paths
