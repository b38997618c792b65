"""The files that travel with an exported model: an Ollama `Modelfile` and a Hugging Face model card.

Both are plain text built from plain data (the prompt as the model saw it, the stop strings, the
run's measured scores), so they say what the run did and nothing else.
"""

from __future__ import annotations

from typing import Any

import yaml

# mathtune's embedded names -> the Hugging Face model they are (the model card's `base_model`).
EMBEDDED_BASE_MODELS = {"smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct"}
DATASETS = {"gsm8k": "openai/gsm8k", "svamp": "ChilleD/SVAMP", "math": "hendrycks/competition_math",
            "arc-challenge": "allenai/ai2_arc"}
PROMPT_SLOT = "{{ .Prompt }}"  # where Ollama puts the user's text


def _quoted(value: str) -> str:
    """A Modelfile value: "..." on one line, triple quotes when it holds a newline or a quote."""
    if "\n" in value or '"' in value:
        return f'"""{value}"""'
    return f'"{value}"'


def ollama_template(prompt_before: str, prompt_after: str) -> str:
    """A Go template that renders exactly what mathtune fed the model, the user's text in between.
    Literal `{{` in the prompt would read as template actions, so they are written as Go strings."""
    def literal(text: str) -> str:
        return text.replace("{{", '{{ "{{" }}')

    return literal(prompt_before) + PROMPT_SLOT + literal(prompt_after)


def modelfile(gguf_name: str, template: str, stops: list[str], max_new_tokens: int) -> str:
    lines = [f"FROM ./{gguf_name}", f"TEMPLATE {_quoted(template)}"]
    lines += [f"PARAMETER stop {_quoted(stop)}" for stop in stops if stop]
    lines += ["PARAMETER temperature 0", "PARAMETER top_k 1", f"PARAMETER num_predict {max_new_tokens}"]
    return "\n".join(lines) + "\n"


def model_index_entry(name: str, metrics: dict[str, Any], dataset: dict[str, str]) -> dict[str, Any]:
    """One `model-index` entry: each score of a metrics.json in percent, with n and its standard error."""
    n = metrics.get("n")
    results = [{"type": "exact_match", "value": round(100 * score["exact_match"], 2),
                "name": f"{key} (n={n}, stderr {100 * score['stderr']:.2f})",
                "args": {"n": n, "stderr": round(100 * score["stderr"], 2), "filter": key}}
               for key, score in metrics.get("scores", {}).items()]
    return {"name": name, "results": [{"task": {"type": "text-generation", "name": "Math word problems"},
                                       "dataset": dataset, "metrics": results}]}


def model_card(header: dict[str, Any], title: str, body: str) -> str:
    return f"---\n{yaml.safe_dump(header, sort_keys=False, allow_unicode=True)}---\n\n# {title}\n\n{body.strip()}\n"
