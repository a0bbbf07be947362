"""Haystack sizing shared by the RULER generators.

RULER grows each task's haystack (essay words, noise lines, documents, list words) on a grid of
``incremental`` steps until the full prompt no longer fits, then regenerates every sample at that
size and, if one sample still overshoots, shrinks it one step at a time until it fits
(``while True: try ... assert length <= max_seq_length``).

What "fits" means: ``len(tokens(full prompt incl. template and answer prefix)) <= budget`` with
``budget = length - tokens_to_generate``. During the search RULER also counts the answers appended
to the prompt (``count_answers``); the final per-sample check does not.

Deviations from the AnchorAttention/FlexPrefill copy of RULER:
  * The search finds the same grid point as its linear scan (the largest size that fits, given
    that the token count grows with the size) with an exponential + binary search over the grid,
    like upstream HEAD's binary search, so 128K prompts need ~15 probes instead of ~200.
  * Upstream spells the appended answers slightly differently per task (a Python list repr for
    vt/qa, numbered for cwe, no separator for niah); here always ``" " + " ".join(answers)``. This
    only moves where the search stops by a few tokens.
  * Upstream loops forever when even the smallest size does not fit; here ``TooShort`` (a
    ``ValueError``) says how many tokens the smallest prompt needs.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from benchmarks.tasks.ruler.templates import Draft, PromptFormat


class TooShort(ValueError):
    """Even the smallest haystack gives a prompt longer than the budget.

    Attributes:
        needed: prompt tokens at the smallest size (as counted where it failed).
        budget: the prompt token budget.
    """

    def __init__(self, message: str, needed: int, budget: int):
        super().__init__(message)
        self.needed, self.budget = needed, budget


@dataclass
class Plan:
    """How one task builds samples of a given size.

    Attributes:
        make: ``(size, sample index) -> Draft``; consumes the task's random stream.
        start: first grid point (RULER starts at ``incremental``; fwe at ``length // 6``).
        step: grid step (RULER's ``incremental``).
        minimum: smallest allowed size.
        maximum: largest size (RULER caps essay words, cwe words and qa documents); ``None``: no cap.
        count_answers: append the answers while searching (all tasks but fwe).
    """

    make: Callable[[int, int], Draft]
    start: int
    step: int
    minimum: int
    maximum: int | None = None
    count_answers: bool = True


@dataclass
class Sample:
    """A finished sample: full prompt, references, prompt token count and haystack size."""

    index: int
    prompt: str
    answers: list[str]
    tokens: int
    size: int
    meta: dict[str, Any]


def largest_fitting(probe: Callable[[int], int], budget: int, *, start: int, step: int,
                    minimum: int, maximum: int | None = None) -> int:
    """Largest grid size ``n = start + k * step`` (``minimum <= n``, capped at ``maximum``) with
    ``probe(n) <= budget``, assuming ``probe`` grows with ``n``.

    Returns ``maximum`` itself when it fits (RULER: the haystack is used in full). Raises
    ``TooShort`` when no allowed size fits.
    """
    if step <= 0:
        raise ValueError(f"step must be positive, got {step}")

    def size(k: int) -> int:
        n = start + k * step
        return n if maximum is None else min(n, maximum)

    def fits(k: int) -> bool:
        return probe(size(k)) <= budget

    lowest = -((start - minimum) // step)  # smallest k with start + k * step >= minimum
    if maximum is not None and maximum < size(lowest):
        raise ValueError(f"maximum size {maximum} is below the minimum {minimum}")

    def too_long() -> TooShort:
        needed = probe(size(lowest))
        return TooShort(f"even the smallest size {size(lowest)} needs {needed} tokens, more than {budget}",
                        needed, budget)

    first = max(0, lowest)
    if fits(first):  # grow: double the jump until a size overshoots (or the cap fits)
        lo, jump = first, 1
        while True:
            k = lo + jump
            if fits(k):
                if maximum is not None and size(k) == maximum:
                    return maximum
                lo, jump = k, jump * 2
            else:
                hi = k
                break
    else:  # shrink: double the jump downwards until a size fits
        if first == lowest:
            raise too_long()
        hi, jump = first, 1
        while True:
            k = max(hi - jump, lowest)
            if fits(k):
                lo = k
                break
            if k == lowest:
                raise too_long()
            hi, jump = k, jump * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return size(lo)


def fit_sample(plan: Plan, fmt: PromptFormat, budget: int, size: int, index: int) -> Sample:
    """RULER's per-sample loop: build at ``size``; while the prompt overshoots, one step smaller."""
    while True:
        draft = plan.make(size, index)
        prompt = fmt.render(draft)
        tokens = fmt.count(prompt)
        if tokens <= budget:
            return Sample(index, prompt, list(draft.answers), tokens, size, dict(draft.meta))
        if size - plan.step < plan.minimum:
            raise TooShort(f"sample {index}: {tokens} prompt tokens at the smallest size {size}, "
                           f"budget {budget}", tokens, budget)
        size -= plan.step


def generate(plan: Plan, fmt: PromptFormat, budget: int, num_samples: int) -> list[Sample]:
    """Size the haystack once (probing with sample 0), then build ``num_samples`` samples."""
    def probe(n: int) -> int:
        draft = plan.make(n, 0)
        text = fmt.render(draft)
        if plan.count_answers:
            text += " " + " ".join(draft.answers)
        return fmt.count(text)

    size = largest_fitting(probe, budget, start=plan.start, step=plan.step, minimum=plan.minimum,
                           maximum=plan.maximum)
    return [fit_sample(plan, fmt, budget, size, i) for i in range(num_samples)]
