"""The Gradio Blocks layout: a Solve tab (base vs tuned, streamed) and a blind human-evaluation tab.

Layout only; every event calls a method of `Handlers`. Component `elem_id`s are what the browser
test looks for.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr

from mathtune.app.auth import check_exposure, load_users, login_checker
from mathtune.app.engine import MAX_NEW_TOKENS, Engine
from mathtune.app.handlers import NO_RUN, SLOTS, Handlers
from mathtune.app.ratings import CRITERIA, RatingStore
from mathtune.prompts import load_strategies

QUEUE_SIZE = 16  # waiting requests beyond this are refused with a "queue full" message
# Rating events (draw, submit) are milliseconds of SQLite work: they run side by side, in their own
# group, so raters never wait behind a generation (concurrency limit 1 per event otherwise).
RATING_CONCURRENCY = 8
INTRO = """# mathtune demo
Type a math word problem or draw one from the GSM8K test split, then compare the base model with
a fine-tuned one. The tab *Human evaluation* shows outputs blind for rating."""


def build_demo(engine: Engine, store: RatingStore, seed: int | None = None, login: bool = False) -> gr.Blocks:
    """`login`: served behind Gradio's login; ratings are then stored under the logged-in user."""
    handlers = Handlers(engine, store, seed, login=login)
    first_run = next(iter(engine.runs), None)
    strategy = engine.default_config.prompt.strategy
    with gr.Blocks(title="mathtune demo") as demo:
        gr.Markdown(INTRO)
        with gr.Tab("Solve", elem_id="tab-solve"):
            with gr.Row():
                model = gr.Dropdown(
                    engine.models,
                    value=engine.models[0] if not first_run else engine.runs[first_run].config.model.name,
                    label="Base model",
                    elem_id="model",
                )
                run = gr.Dropdown(
                    handlers.run_choices(),
                    value=first_run or NO_RUN,
                    label="Tuned adapter (run directory)",
                    elem_id="run",
                )
                prompt = gr.Dropdown(
                    list(load_strategies()), value=strategy, label="Prompt strategy", elem_id="strategy"
                )
                tokens = gr.Slider(
                    8,
                    MAX_NEW_TOKENS,
                    value=max(8, min(256, engine.default_config.eval.max_new_tokens)),
                    step=8,
                    label="Max new tokens",
                    elem_id="max-tokens",
                )
                calculator = gr.Checkbox(value=engine.default_config.eval.calculator, label="Calculator decoding",
                                         elem_id="calculator")
            question = gr.Textbox(
                lines=4,
                label="Problem (up to 2,000 characters)",
                elem_id="question",
                placeholder="A farmer has 12 cows and buys 7 more. How many cows does he have?",
            )
            problem = gr.State(None)
            with gr.Row():
                draw = gr.Button("Random GSM8K test problem", elem_id="random-problem")
                solve = gr.Button("Solve", variant="primary", elem_id="solve")
            reference = gr.Markdown(elem_id="reference")
            with gr.Row():
                with gr.Column():
                    base_text = gr.Textbox(label="Base model", lines=10, elem_id="base-output")
                    base_notes = gr.Markdown(elem_id="base-details")
                with gr.Column():
                    tuned_text = gr.Textbox(label="Tuned model", lines=10, elem_id="tuned-output")
                    tuned_notes = gr.Markdown(elem_id="tuned-details")
        run.change(handlers.on_run_change, run, [model, prompt])
        draw.click(handlers.draw_problem, None, [question, problem, reference])
        solve_inputs = [model, run, prompt, tokens, question, problem, calculator]
        solve.click(handlers.solve, solve_inputs, [base_text, tuned_text, base_notes, tuned_notes])
        with gr.Tab("Human evaluation", elem_id="tab-rate"):
            rater = _rating_tab(handlers)
        demo.load(handlers.whoami, None, rater)
    demo.queue(max_size=QUEUE_SIZE, default_concurrency_limit=1)  # one generation at a time: CPU-bound
    return demo


def _rating_tab(handlers: Handlers) -> gr.Textbox:
    gr.Markdown(
        "Outputs are shown **blind**: the model is hidden and the order is random. "
        "Rate each on a 1 (poor) to 5 (excellent) scale."
    )
    with gr.Row():
        label = "Rating as (the logged-in user)" if handlers.login else "Your name (rater)"
        rater = gr.Textbox(label=label, elem_id="rater", scale=3, interactive=not handlers.login)
        next_button = gr.Button("Next problem", elem_id="next-blind", scale=1)
    item = gr.State(None)
    blind_question = gr.Textbox(label="Problem", interactive=False, lines=3, elem_id="blind-question")
    outputs, radios = [], []
    with gr.Row():
        for slot in SLOTS:
            with gr.Column():
                outputs.append(
                    gr.Textbox(
                        label=f"Output {slot}", interactive=False, lines=8, elem_id=f"blind-output-{slot.lower()}"
                    )
                )
                radios += [
                    gr.Radio(
                        [1, 2, 3, 4, 5],
                        label=criterion.capitalize() if criterion != "pedagogy" else "Pedagogical value",
                        elem_id=f"rate-{slot.lower()}-{criterion}",
                    )
                    for criterion in CRITERIA
                ]
    submit = gr.Button("Submit ratings", variant="primary", elem_id="submit-ratings")
    status = gr.Markdown(elem_id="rating-status")
    with gr.Accordion("Results (reveals models)", open=False):
        with gr.Row():
            summary_button = gr.Button("Summarise ratings", elem_id="summary")
            export_button = gr.Button("Export CSV", elem_id="export")
        summary = gr.Markdown(elem_id="summary-text")
        csv_file = gr.File(label="ratings.csv", elem_id="csv")
    rating_events = {"concurrency_id": "ratings", "concurrency_limit": RATING_CONCURRENCY}
    next_button.click(
        handlers.next_blind, rater, [item, blind_question, *outputs, status, *radios], **rating_events
    )
    submit.click(handlers.submit, [rater, item, *radios], status, **rating_events)
    summary_button.click(handlers.summary, None, summary)
    export_button.click(handlers.export_csv, None, csv_file)  # behind the login too (Gradio's file route)
    return rater


def launch(
    run_dirs: list[Path],
    model: str | None,
    data_dir: str | None,
    db: Path,
    host: str,
    port: int | None,
    block: bool = True,
    auth: Path | None = None,
    insecure: bool = False,
    int8_decode: bool = False,
) -> Any:
    """Build and serve the app; returns (demo, url) when `block` is False (tests).

    `auth`: a users file (format in app/auth.py); every page, API call and file download then needs a
    login. Without one, only a loopback `host` is served unless `insecure`."""
    check_exposure(host, auth, insecure)  # before loading any model: a refusal is immediate
    users = load_users(auth) if auth is not None else None
    engine = Engine.from_paths(run_dirs, model, data_dir, int8_decode=int8_decode)
    demo = build_demo(engine, RatingStore(db), login=users is not None)
    _, url, _ = demo.launch(
        auth=login_checker(users) if users is not None else None,
        auth_message="mathtune ratings: log in with the user name and password you were given." if users else None,
        server_name=host,
        server_port=port,
        prevent_thread_lock=not block,
        quiet=not block,
        show_error=True,
        footer_links=["gradio"],
    )
    return demo, url
