"""RULER variable tracking (``scripts/data/synthetic/variable_tracking.py``, mid-2024 version).

Follows the AnchorAttention/FlexPrefill copy of RULER:
  * ``num_chains`` chains of ``num_hops + 1`` variables (5 random uppercase letters, 3 in the ICL
    example): ``VAR AAAAA = 12345`` then ``VAR BBBBB = VAR AAAAA `` ...; the value is a random
    5-digit number (``np.random.randint(10000, 99999)``), random in the ICL example too;
  * the chain lines go to sorted random positions among ``size`` noise lines (the grass-is-green
    line plus ``"\\n"``), joined with ``" "`` and ``". \\n"`` turned into ``".\\n"``; with too few
    noise lines they are split into sentences first;
  * one ICL example, sized for 500 tokens with ``incremental=5`` and followed by its answers, is put
    before the task text: ``" " + example + " " + answers + "\\n\\n" + "\\n\\n" + task``;
  * ``incremental`` 10; the answer is every variable of the first chain (string_match_all).

The ICL example's template depends on the template set: ``anchorattention`` (default) uses the
plain task template plus answer prefix in both prompt modes, newlines and every word kept; this
deviates from the paper's copy, which (like official RULER) cut the model template out of it with
a whitespace-splitting heuristic that ``ruler2024`` reproduces (``templates.ruler2024_icl_template``).

Deviations in both sets: variable names are redrawn until all are distinct (upstream could,
rarely, repeat one); the sample's own size is used in the per-sample retry loop (upstream retried
at the search size forever).
"""
from __future__ import annotations

import random
import string

from benchmarks.tasks.ruler.niah import NOISE
from benchmarks.tasks.ruler.sizing import Plan, generate
from benchmarks.tasks.ruler.templates import FAMILIES, Draft, PromptFormat, ruler2024_icl_template

ICL_LENGTH = 500
ICL_STEP = 5
STEP = 10


def chains(rng: random.Random, num_chains: int, num_hops: int,
           is_icl: bool) -> tuple[list[list[str]], list[list[str]]]:
    """Variable names and assignment lines of ``num_chains`` chains (RULER's ``generate_chains``)."""
    letters = 3 if is_icl else 5
    num_hops = min(10, num_hops) if is_icl else num_hops
    names: list[str] = []
    while len(names) < num_chains * (num_hops + 1):
        name = "".join(rng.choices(string.ascii_uppercase, k=letters))
        if name not in names:
            names.append(name)
    all_vars, all_lines = [], []
    for i in range(0, len(names), num_hops + 1):
        names_i = names[i:i + num_hops + 1]
        lines = [f"VAR {names_i[0]} = {rng.randint(10000, 99998)}"]
        lines += [f"VAR {names_i[j + 1]} = VAR {names_i[j]} " for j in range(num_hops)]
        all_vars.append(names_i)
        all_lines.append(lines)
    return all_vars, all_lines


def build(rng: random.Random, size: int, *, num_chains: int, num_hops: int, is_icl: bool,
          icl: str = "", icl_template: str | None = None) -> Draft:
    """One vt sample with ``size`` noise lines; ``icl`` (example + answers) goes before the task.

    ``icl_template`` (ruler2024's ICL example): the whole text template, answer prefix included."""
    names, lines_per_chain = chains(rng, num_chains, num_hops, is_icl)
    sentences = [NOISE + "\n"] * size
    if len(sentences) <= len(lines_per_chain[0]):
        pieces = [piece for noise in sentences for piece in noise.split(".")]
        sentences = [p + "." if p.strip() else p for p in pieces]
        if len(sentences) <= len(lines_per_chain[0]):
            lines_per_chain = [c[:len(sentences) - 1] for c in lines_per_chain]
    for chain_lines in lines_per_chain:
        positions = sorted(rng.sample(range(len(sentences)), len(chain_lines)))
        for offset, (pos, line) in enumerate(zip(positions, chain_lines)):
            sentences.insert(pos + offset, line)
    context = " ".join(sentences).replace(". \n", ".\n")

    family = FAMILIES["variable_tracking"]
    value = lines_per_chain[0][0].split("=")[-1].strip()
    if icl_template is not None:
        return Draft(body=icl_template.format(context=context, query=value, num_v=num_hops + 1),
                     answer_prefix="", answers=names[0], meta={"value": value})
    body = family["template"].format(context=context, query=value, num_v=num_hops + 1)
    if icl:
        body = " " + icl + "\n\n" + body
    prefix = family["answer_prefix"].format(query=value, num_v=num_hops + 1)
    return Draft(body=body, answer_prefix=prefix, answers=names[0], meta={"value": value})


def icl_example(rng: random.Random, fmt: PromptFormat, num_chains: int, num_hops: int, template_set: str) -> str:
    """RULER's single ICL example: sized for 500 tokens, followed by its answers and ``"\\n\\n"``.

    Counted without model template or special tokens, as RULER sizes it. ``ruler2024``: the
    template of ``ruler2024_icl_template`` (model template cut out, whitespace collapsed, last
    word dropped); ``anchorattention``: the plain task template and answer prefix.
    """
    family = FAMILIES["variable_tracking"]
    icl_template = ruler2024_icl_template(fmt, family) if template_set == "ruler2024" else None
    plain = PromptFormat(fmt.tokenizer, "base", add_special_tokens=False)
    example = generate(Plan(make=lambda size, _i: build(rng, size, num_chains=num_chains, num_hops=num_hops,
                                                          is_icl=True, icl_template=icl_template),
                            start=ICL_STEP, step=ICL_STEP, minimum=ICL_STEP),
                       plain, ICL_LENGTH - family["tokens_to_generate"], 1)[0]
    return example.prompt + " " + " ".join(example.answers) + "\n\n"


def plan(rng: random.Random, fmt: PromptFormat, *, template_set: str, num_chains: int = 1,
         num_hops: int = 4) -> Plan:
    """Sizing plan of vt: the ICL example is drawn first (as upstream), then noise lines grow by 10."""
    icl = icl_example(rng, fmt, num_chains, num_hops, template_set)
    return Plan(make=lambda size, _i: build(rng, size, num_chains=num_chains, num_hops=num_hops,
                                            is_icl=False, icl=icl),
                start=STEP, step=STEP, minimum=STEP)
