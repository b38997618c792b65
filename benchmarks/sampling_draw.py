"""One sampled token per row, the way mathtune's sampler draws it (`decoding.draw_tokens`: one uniform
per row, a two-level cumulative sum) against `torch.multinomial` with each row's own generator (what
the sampler did before), on the same probabilities, in one run. Prints ms per decoding step and the ratio.

    python benchmarks/sampling_draw.py --rows 128 --vocab 49152
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from mathtune.evaluate.decoding import draw_tokens, sampling_probs


def per_step_ms(draw, steps: int) -> float:
    draw()  # warm-up
    started = time.perf_counter()
    for _ in range(steps):
        draw()
    return (time.perf_counter() - started) / steps * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=128, help="rows decoded at once (problems x samples)")
    parser.add_argument("--vocab", type=int, default=49152, help="vocabulary size (SmolLM2: 49,152)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--temperature", type=float, default=0.7)
    args = parser.parse_args()
    logits = (torch.randn(args.rows, args.vocab, generator=torch.Generator().manual_seed(0)) * 3).bfloat16()
    generators = [torch.Generator().manual_seed(row) for row in range(args.rows)]
    probs = sampling_probs(logits, args.temperature)

    def multinomial() -> list[int]:
        return [int(torch.multinomial(probs[i], 1, generator=g)) for i, g in enumerate(generators)]

    def inverse_cdf() -> list[int]:
        uniforms = torch.cat([torch.rand(1, generator=g) for g in generators])
        return draw_tokens(probs, uniforms).tolist()

    arms = {"torch.multinomial per row": per_step_ms(multinomial, args.steps),
            "draw_tokens (inverse CDF)": per_step_ms(inverse_cdf, args.steps),
            "sampling_probs (softmax, shared by both)": per_step_ms(lambda: sampling_probs(logits, args.temperature),
                                                                    args.steps)}
    print(json.dumps({"rows": args.rows, "vocab": args.vocab, "threads": torch.get_num_threads(),
                      "ms_per_step": {name: round(ms, 2) for name, ms in arms.items()},
                      "draw_speedup": round(arms["torch.multinomial per row"] / arms["draw_tokens (inverse CDF)"], 1)},
                     indent=2))


if __name__ == "__main__":
    main()
