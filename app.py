"""asymviz dashboard, home page: what asymmetric training is, and a one-click demo.

    bash scripts/setup.sh && .venv/bin/streamlit run app.py

The pages in pages/ (Train, Runs, Backward timing, Experiment, Instructor) are listed in the
sidebar after Home (ui_common.navigation). Training runs in background worker processes that the
server starts on first use; pages only read the store and act through the Runner.
"""


def main() -> None:
    """The home page."""
    import streamlit as st

    import ui_common
    import ui_lecture
    from asymviz import figures, pagekit

    ui_common.setup("Home", ":material/neurology:")
    owner = ui_common.owner()
    ui_common.runner()  # start the worker pool now, so it has booted by the time someone presses "Try it"
    ui_lecture.start_page()  # the lesson an instructor pinned as start page, once per session

    st.title("asymviz: train a network with a sparse backward pass")
    st.markdown(
        "A neural network learns in two passes. The **forward pass** pushes an input through every "
        "weight to a prediction. The **backward pass** sends the error back and computes how each weight "
        "should change. Ordinary (**symmetric**) training uses every weight in both passes.\n\n"
        "**Asymmetric** training keeps the forward pass whole but lets only a few neurons per layer take "
        "part in the backward pass, for example the *k* with the largest gradient. The others get no update "
        "this step and pass no error back. Less backward work can mean faster steps, and it acts a bit like "
        "dropout, only in the backward pass. Here you can watch it happen, and test whether it helps."
    )
    st.plotly_chart(figures.network_figure((3, 6, 6, 2)), key="home_network",
                    config={"displayModeBar": False, "staticPlot": False})
    st.caption("Left: every weight is used to compute the prediction. Right: in the backward pass only the "
               "orange neurons were kept (here half of each hidden layer), so only their incoming weights are "
               "updated; the dotted ones sit this step out. The output layer stays dense.")

    left, right = st.columns([1, 2], vertical_alignment="center")
    with left:
        clicked = st.button("Try it: train on two moons", type="primary", key="home_try",
                            icon=":material/play_arrow:", use_container_width=True, disabled=owner is None)
    with right:
        st.caption("Starts a small run (2 hidden layers of 32 neurons, backward keeps half of them, 40 epochs) "
                   "on a 2-D toy dataset at 20 steps a second and takes you to its live view, where the decision "
                   "boundary forms; Pause and Step it there."
                   + (" " + ui_common.sign_in_hint("start it") if owner is None else ""))
    if clicked and owner is not None:
        try:
            run_id = ui_lecture.try_it(owner)  # at 20 steps per second: slow enough to watch
        except Exception as err:  # a limit, a full queue: one sentence, nothing launched
            ui_common.error(err)
        else:
            config = pagekit.full_config(pagekit.TRY_IT_CONFIG)
            st.switch_page("pages/1_Train.py", query_params={**pagekit.config_to_query(config), pagekit.RUN_PARAM: str(run_id)})

    ui_lecture.home_lessons()

    st.subheader("What you can do here")
    a, b, c = st.columns(3)
    with a:
        st.page_link("pages/1_Train.py", label="**Train**", icon=":material/model_training:")
        st.caption("Pick a dataset, a network and a backward strategy; watch loss, accuracy, timing and the "
                   "gradient masks live. The address bar holds the whole configuration: share it to reproduce a run.")
    with b:
        st.page_link("pages/2_Runs.py", label="**Runs**", icon=":material/table_chart:")
        st.caption("Every run on this server: overlay curves, compare accuracy, the generalization gap and the "
                   "backward speedup against a symmetric run, export CSV or JSON.")
    with c:
        st.page_link("pages/3_Backward_timing.py", label="**Backward timing**", icon=":material/timer:")
        st.caption("Measure dense against sparse backward time on this machine, next to the ideal FLOP "
                   "ratio: see where sparsity pays and where fixed overheads win.")

    with st.expander("The strategies"):
        from asymviz.strategies import STRATEGIES
        for s in STRATEGIES.values():
            st.markdown(f"- **{s.title}**: {s.summary}")
        st.caption("These readings of the three strategies of Srivastava (2022) are this project's own; the "
                   "operator underneath is general. Related published work: meProp (Sun et al., ICML 2017).")


main()
