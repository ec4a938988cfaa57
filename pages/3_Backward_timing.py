"""Backward timing page: dense vs sparse backward time measured live on this machine.

Uses asymviz.bench.backward_table in one background thread shared by all sessions (so the
page never blocks and two measurements never time each other); the figure puts the measured
speedup next to the ideal FLOP ratio, and the page says plainly when a network is too small
for sparsity to pay (overhead-bound).
"""

import os
import time

import pandas as pd
import streamlit as st
import torch

import ui_common
from asymviz import figures, pagekit
from asymviz.config import sparsities as parse_sparsities
from asymviz.strategies import STRATEGIES

ui_common.setup("Backward timing", ":material/timer:")
ui_common.owner()
ss = st.session_state
MAX_SECONDS = 90  # a measurement larger than this (estimated) is refused
THROUGHPUT = 2e10  # FLOP/s assumed for the estimate (about two CPU cores in float32)
N_IN, N_OUT = 784, 10
SPARSE = [name for name, s in STRATEGIES.items() if s.neuron_sparse]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

st.title("Backward timing")
st.markdown("How much faster is a sparse backward pass, **on this machine**? The same network "
            f"({N_IN} inputs, {N_OUT} classes) is trained for a few steps with a dense backward and with a sparse "
            "one, alternating, and the median times are compared with the **ideal** speedup, the ratio of "
            "multiplications saved. Where the measured curve stays far below the ideal, fixed overheads "
            "(choosing the top-k, indexing, launching work) eat the saving.")

with st.sidebar:
    st.header("Measurement")
    st.number_input("Hidden layers", 1, 4, value=2, step=1, key="bench_layers")
    st.number_input("Layer width", 16, 8192, value=1024, step=128, key="bench_width",
                    help="Neurons per hidden layer. Sparsity pays from roughly a thousand neurons up on a CPU.")
    st.number_input("Batch size", 1, 4096, value=128, step=32, key="bench_batch")
    st.text_input("Sparsities", value="0, 0.5, 0.9, 0.95, 0.99", key="bench_sparsities",
                  help="Fractions of neurons left out of the backward, each in [0, 1), separated by commas, "
                       "semicolons or spaces (at most 8, so the measurement stays short).")
    try:
        sparsities = parse_sparsities(ss["bench_sparsities"], at_most=8)
        sparsity_error = None
    except Exception as err:
        sparsities, sparsity_error = [], pagekit.friendly_error(err)
        st.error(sparsity_error)
    st.selectbox("Strategy", SPARSE, key="bench_strategy", format_func=lambda n: STRATEGIES[n].title,
                 help=pagekit.strategy_help())
    if STRATEGIES[ss["bench_strategy"]].connection:
        st.slider("Connection sparsity", 0.0, 0.99, value=0.5, step=0.01, key="bench_conn")
    st.number_input("Repeats", 3, 50, value=10, step=1, key="bench_repeats",
                    help="Timed steps per setting; the median is reported.")
    st.selectbox("Device", DEVICES, key="bench_device")

widths = [int(ss["bench_width"])] * int(ss["bench_layers"])
batch = int(ss["bench_batch"])
params = sum(a * b + b for a, b in zip([N_IN, *widths], [*widths, N_OUT]))
estimate = len(sparsities or [0]) * (int(ss["bench_repeats"]) + 3) * 2 * 6 * batch * params / THROUGHPUT
too_big = ss["bench_device"] == "cpu" and estimate > MAX_SECONDS
if too_big:
    st.sidebar.error(f"This measurement would take about {estimate:.0f} s here (the limit is {MAX_SECONDS} s); "
                     "use a smaller width or batch, fewer sparsities or fewer repeats.")

future = ss.get("bench_future")
busy = future is not None and not future.done()
c1, c2 = st.columns([1, 4], vertical_alignment="center")
go = c1.button("Measure", type="primary", key="bench_run", icon=":material/timer:", use_container_width=True,
               disabled=busy or too_big or bool(sparsity_error))
c2.caption(f"Network {N_IN} → {' → '.join(map(str, widths))} → {N_OUT} ({params:,} parameters), batch {batch}; "
           f"about {max(1, round(estimate))} s on this machine.")

if go:
    from asymviz import bench
    job = dict(widths=widths, batch=batch, sparsities=sparsities, strategy=ss["bench_strategy"],
               conn_sparsity=float(ss.get("bench_conn", 0.0)) if STRATEGIES[ss["bench_strategy"]].connection else 0.0,
               n_in=N_IN, n_out=N_OUT, device=ss["bench_device"], repeats=int(ss["bench_repeats"]), warmup=3)
    ss["bench_future"] = ui_common.bench_executor().submit(bench.backward_table, **job)
    ss["bench_job"], ss["bench_started"], ss["bench_estimate"] = job, time.time(), estimate
    future, busy = ss["bench_future"], True


def waiting() -> None:
    """Poll the background measurement; redraw the page when it is done."""
    if ss["bench_future"].done():
        st.rerun()
    st.status(f"Measuring ... {time.time() - ss['bench_started']:.0f} s of about {max(1, round(ss.get('bench_estimate', 1)))} s "
              "(another session's measurement, if any, goes first)", state="running")


if busy:
    st.fragment(waiting, run_every=0.5)()
    st.stop()

if future is None:
    st.info("Choose a network on the left and press **Measure**. The default (two layers of 1,024) takes about "
            "half a minute on two CPU cores.", icon=":material/info:")
    st.stop()

try:
    rows = future.result()
except Exception as err:  # a bad setting caught by the benchmark itself: one sentence
    ui_common.error(err)
    st.stop()

job = ss["bench_job"]
st.plotly_chart(figures.bench_figure(rows), key="bench_fig")
threads = torch.get_num_threads()
top = max(rows, key=lambda r: r["sparsity"])  # the most sparse setting: where the saving is largest
verdict = (f"At sparsity {top['sparsity']:.0%} (k = {top['keep'][0]} of {job['widths'][0]} neurons kept) the sparse "
           f"backward runs {top['backward_speedup']:.2f}x as fast as the dense one; the multiplications alone would "
           f"allow {top['ideal']:.1f}x.")
if pagekit.overhead_bound(rows):
    st.warning(f"**Overhead-bound.** {verdict} At width {job['widths'][0]} and batch {job['batch']} the fixed costs of "
               "a step (choosing the top-k, indexing, autograd and launch overhead) eat most of the saving. Small "
               "classroom networks train no faster with a sparse backward; what they can show is the effect on "
               "accuracy and overfitting. Try a width of 2,048 or more to see sparsity pay.", icon=":material/speed:")
else:
    st.success(f"**Sparsity pays here.** {verdict} Efficiency (measured / ideal): {top['efficiency']:.0%}.",
               icon=":material/bolt:")
st.caption(f"Measured on this machine: {os.cpu_count()} CPU cores, {threads} PyTorch threads, device "
           f"{rows[0].get('device', job['device'])}, CPU hot loops in {rows[0].get('kernels', 'PyTorch ops')}, "
           f"medians of {job['repeats']} steps after 3 warm-up steps. "
           "Runs training on this server at the same time slow both sides alike but add noise. The whole step "
           "includes the dense forward pass, so its speedup is always smaller than the backward's.")
table = pd.DataFrame([{
    "sparsity": r["sparsity"], "kept per layer": r["keep"][0], "dense backward ms": r["dense_backward_ms"],
    "sparse backward ms": r["sparse_backward_ms"], "speedup": r["backward_speedup"], "ideal": r["ideal"],
    "efficiency": r["efficiency"], "step speedup": r["step_speedup"], "forward ms": r["forward_ms"],
    "path": r["path"]} for r in rows])
st.dataframe(table, key="bench_table", hide_index=True, column_config={
    "sparsity": st.column_config.NumberColumn(format="percent"),
    "dense backward ms": st.column_config.NumberColumn(format="%.2f"),
    "sparse backward ms": st.column_config.NumberColumn(format="%.2f"),
    "forward ms": st.column_config.NumberColumn(format="%.2f"),
    "speedup": st.column_config.NumberColumn(format="%.2fx"),
    "ideal": st.column_config.NumberColumn(format="%.1fx"),
    "step speedup": st.column_config.NumberColumn(format="%.2fx"),
    "efficiency": st.column_config.NumberColumn(format="percent"),
})
st.download_button("Download as CSV", table.to_csv(index=False), file_name="asymviz-backward-timing.csv",
                   mime="text/csv", key="bench_download", icon=":material/download:")
