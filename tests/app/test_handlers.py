"""The app's handlers called directly (no browser) on a tiny trained run."""

import gradio as gr
import pytest

from mathtune.app.engine import MAX_QUESTION_CHARS, Engine, stream_generate
from mathtune.app.handlers import NO_RUN, Handlers
from mathtune.app.ratings import RatingStore
from mathtune.app.ui import build_demo
from mathtune.evaluate.generation import GenerationRequest


@pytest.fixture(scope="module")
def engine(tiny_run):
    return Engine.from_paths([tiny_run])


@pytest.fixture
def handlers(engine, tmp_path):
    return Handlers(engine, RatingStore(tmp_path / "ratings.sqlite"), seed=0)


def model_of(engine):
    return engine.runs["run"].config.model.name


def test_streamed_answer_equals_batch_generation(engine):
    cfg = engine.config_for(model_of(engine), "run", "qa", 24)
    backend = engine.backend(cfg, "run")
    prompt = engine.prompt_for(cfg, "Tom has 3 pens and buys 4 more. How many pens?", backend.tokenizer)
    stops = ("\nQ:",)
    parts = list(stream_generate(backend, prompt, stops, 24))
    assert len(parts) > 1 and all(b.startswith(a) for a, b in zip(parts, parts[1:], strict=False))
    assert parts[-1] == backend.generate([GenerationRequest(prompt, stops, 24)])[0].text


def test_solve_streams_base_then_tuned_and_scores_a_drawn_problem(handlers, engine):
    question, problem, reference = handlers.draw_problem()
    assert question == problem["question"] and problem["answer"] in reference
    steps = list(handlers.solve(model_of(engine), "run", "qa", 16, question, problem))
    assert len(steps) > 4
    base, tuned, base_notes, tuned_notes = steps[-1]
    assert "Answer" in base_notes and "Answer" in tuned_notes and "reference" in tuned_notes
    assert any(s[0] and not s[1] for s in steps)  # the base answer streams before the tuned one
    pool_item = engine.pool[-1]
    assert pool_item["question"] == question and set(pool_item["outputs"]) <= {"run/base", "run/tuned"}


def test_program_strategy_shows_the_program_and_the_sandbox_result(handlers, engine):
    *_, last = handlers.solve(model_of(engine), NO_RUN, "program", 16, "What is 6 times 7?", None)
    assert "**Program:**" in last[2] and "**Sandbox:**" in last[2]
    assert last[1] == "" and "no run selected" in last[3]


@pytest.mark.parametrize(("question", "message"), [
    ("   ", "type a math word problem"),
    ("x" * (MAX_QUESTION_CHARS + 1), "limit is 2,000"),
])
def test_bad_questions_get_a_clear_message(handlers, engine, question, message):
    with pytest.raises(gr.Error, match=message):
        list(handlers.solve(model_of(engine), "run", "qa", 16, question, None))


def test_a_run_needs_its_own_base_model(handlers, engine):
    engine.models.append("some-other-model")
    try:
        with pytest.raises(gr.Error, match="was trained on"):
            list(handlers.solve("some-other-model", "run", "qa", 16, "What is 1 + 1?", None))
    finally:
        engine.models.remove("some-other-model")


def test_blind_rating_round_trip(handlers, engine):
    with pytest.raises(gr.Error, match="name"):
        handlers.next_blind(None, "")
    item, question, out_a, out_b, status, *radios = handlers.next_blind(None, "ann")
    assert question == item["question"] and [out_a, out_b] == [s["output"] for s in item["shown"]]
    assert "run/" not in status and all(r is None for r in radios)  # nothing shown names the model
    with pytest.raises(gr.Error, match="output A: rate"):
        handlers.submit(None, "ann", item, 4, None, 3, 3, 2, 2, 2, 2)
    assert "Saved 2" in handlers.submit(None, "ann", item, 4, 4, 3, 3, 2, 2, 2, 2)
    rows = handlers.store.rows()
    assert sorted(r["model"] for r in rows) == sorted(s["model"] for s in item["shown"])
    assert "| criterion |" in handlers.summary()
    assert handlers.export_csv().endswith("ratings.csv")
    again = handlers.next_blind(None, "ann")[0]
    assert again is None or again["problem_id"] != item["problem_id"] or again["shown"] != item["shown"]


def test_demo_builds_with_a_queue(engine, tmp_path):
    demo = build_demo(engine, RatingStore(tmp_path / "r.sqlite"))
    assert demo._queue.max_size == 16


def test_control_characters_from_a_model_are_made_printable():
    from mathtune.app.handlers import printable

    assert printable("a\x03b\nc\td\x7f") == "a\ufffdb\nc\td\ufffd"  # raw \x03 broke the browser's textbox


def test_a_streamed_answer_ends_a_loop_where_evaluation_does(engine):
    cfg = engine.config_for(model_of(engine), "run", "qa", 60)
    backend = engine.backend(cfg, "run")
    prompt = engine.prompt_for(cfg, "Tom has 3 pens and buys 4 more. How many pens?", backend.tokenizer)
    loop = (2, 2)  # two copies of any block: a tiny random model repeats itself within 60 tokens
    parts = list(stream_generate(backend, prompt, (), 60, loop_stop=loop))
    evaluated = backend.generate([GenerationRequest(prompt, (), 60, loop_stop=loop)])[0]
    assert parts[-1] == evaluated.text
    whole = backend.generate([GenerationRequest(prompt, (), 60)])[0]
    assert evaluated.new_tokens < whole.new_tokens, "the tiny model must loop for this test to mean anything"
