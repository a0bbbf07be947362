"""RULER task templates and how a prompt is wrapped and counted.

Template sets (``template_set`` setting):
  * ``anchorattention`` (default, ``FAMILIES``): the task templates, answer prefixes and
    ``tokens_to_generate`` of the RULER copy that AnchorAttention ships
    (``eval/RULER/scripts/data/synthetic/constants.py``, a mid-2024 RULER snapshot): cwe carries the
    ``(not including very common words like "the", "and", etc.)`` wording and vt keeps the
    "assgined" typo, as in the paper's run.
  * ``ruler2024``: official NVIDIA/RULER as of 2024-09-24 (commit 3b8928f, the last mid-2024
    state; constants.py unchanged since 2024-07-12): the same templates except cwe
    (``constants.py`` L37-41: no "common words" wording, shorter answer prefix), and the vt
    in-context example built by ``ruler2024_icl_template`` (``variable_tracking.py`` L114-119).

Prompt wrapping (``template`` setting):
  * ``chat``: the task text becomes the user turn of the tokenizer's chat template
    (``add_generation_prompt=True``) and the answer prefix follows the generation prompt. This is
    RULER's intent (``ModelTemplate.format(task_template) + answer_prefix`` in ``prepare.py``) with
    the model's own template instead of RULER's hard-coded ones. Deviation: the AnchorAttention
    run used ``meta-chat`` (``[INST] ... [/INST]``, Llama-2 style) for Llama-3.1.
  * ``base``: RULER's ``base`` template, the raw task text followed by the answer prefix.

Token counts are those the runner will see: ``chat`` prompts already hold any BOS the template
writes, so they are counted and fed with ``add_special_tokens=False``; ``base`` prompts are fed
with ``add_special_tokens=True`` (AnchorAttention's ``pred.py`` lets the HF tokenizer add BOS)
and counted the same way, so the budget check covers the BOS.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# family -> tokens_to_generate, task template, answer prefix (AnchorAttention's constants.py).
FAMILIES: dict[str, dict[str, Any]] = {
    "niah": {
        "tokens_to_generate": 128,
        "template": (
            "Some special magic {type_needle_v} are hidden within the following text. Make sure to "
            "memorize it. I will quiz you about the {type_needle_v} afterwards.\n{context}\nWhat are "
            "all the special magic {type_needle_v} for {query} mentioned in the provided text?"),
        "answer_prefix": " The special magic {type_needle_v} for {query} mentioned in the provided text are",
    },
    "variable_tracking": {
        "tokens_to_generate": 30,
        "template": (
            "Memorize and track the chain(s) of variable assignment hidden in the following text."
            "\n\n{context}\nQuestion: Find all variables that are assigned the value {query} in the "
            "text above."),
        "answer_prefix": (
            " Answer: According to the chain(s) of variable assignment in the text above, {num_v} "
            "variables are assgined the value {query}, they are: "),
    },
    "common_words_extraction": {
        "tokens_to_generate": 120,
        "template": (
            "Below is a numbered list of words. In these words, some appear more often than others "
            "(not including very common words like \"the\", \"and\", etc.). Memorize the ones that "
            "appear most often.\n{context}\nQuestion: What are the 10 most common words (not "
            "including very common words like \"the\", \"and\", etc.) in the above list?"),
        "answer_prefix": (
            " Answer: The top 10 words that appear most often in the list, excluding common words "
            "(like \"the\", \"and\", etc.), are:"),
    },
    "freq_words_extraction": {
        "tokens_to_generate": 50,
        "template": (
            "Read the following coded text and track the frequency of each coded word. Find the three "
            "most frequently appeared coded words. {context}\nQuestion: Do not provide any explanation. "
            "Please ignore the dots '....'. What are the three most frequently appeared words in the "
            "above coded text?"),
        "answer_prefix": (
            " Answer: According to the coded text above, the three most frequently appeared words are:"),
    },
    "qa": {
        "tokens_to_generate": 32,
        "template": (
            "Answer the question based on the given documents. Only give me the answer and do not "
            "output any other words.\n\nThe following are given documents.\n\n{context}\n\nAnswer the "
            "question based on the given documents. Only give me the answer and do not output any "
            "other words.\n\nQuestion: {query}"),
        "answer_prefix": " Answer:",
    },
}

MODES = ("chat", "base")
TEMPLATE_SETS = ("anchorattention", "ruler2024")
# NVIDIA/RULER 3b8928f scripts/data/synthetic/constants.py L37-41 (unchanged 2024-07-12 .. 2025-05).
RULER2024_CWE = {
    "tokens_to_generate": 120,
    "template": (
        "Below is a numbered list of words. In these words, some appear more often than others. Memorize "
        "the ones that appear most often.\n{context}\nQuestion: What are the 10 most common words in the "
        "above list?"),
    "answer_prefix": " Answer: The top 10 words that appear most often in the list are:",
}


def family(name: str, template_set: str) -> dict[str, Any]:
    """Template, answer prefix and ``tokens_to_generate`` of task family ``name`` in ``template_set``."""
    if template_set not in TEMPLATE_SETS:
        raise ValueError(f"unknown RULER template_set {template_set!r}; choose one of {TEMPLATE_SETS}")
    if template_set == "ruler2024" and name == "common_words_extraction":
        return RULER2024_CWE
    return FAMILIES[name]


def singularise(text: str) -> str:
    """RULER niah's rule when ``num_needle_q * num_needle_v == 1``, applied to template and prefix.

    Same replacements in the same order as ``niah.py`` (``Some->A``, ``are all->is``,
    ``are->is``, ``answers->answer``); the caller also drops the final "s" of ``type_needle_v``.
    Upstream applies them to the whole model template too; here the chat template is added
    afterwards, so a system prompt such as "You are ..." is left intact.
    """
    for old, new in (("Some", "A"), ("are all", "is"), ("are", "is"), ("answers", "answer")):
        text = text.replace(old, new)
    return text


@dataclass
class Draft:
    """One sample before wrapping: the user-turn text, the answer prefix and the references."""

    body: str
    answer_prefix: str
    answers: list[str]
    meta: dict[str, Any]


class PromptFormat:
    """Wraps drafts into model prompts (``chat`` or ``base``) and counts their tokens.

    Args:
        tokenizer: needs ``encode(text, add_special_tokens=...)``; ``chat`` also needs
            ``apply_chat_template`` and a ``chat_template``.
        mode: ``chat`` or ``base`` (see the module docstring).
        add_special_tokens: override the mode's choice (False counts like RULER's
            ``text_to_tokens``, used for the vt ICL example).
    """

    def __init__(self, tokenizer: Any, mode: str, add_special_tokens: bool | None = None):
        if mode not in MODES:
            raise ValueError(f"unknown RULER template {mode!r}; choose one of {MODES}")
        if mode == "chat" and not getattr(tokenizer, "chat_template", None):
            raise ValueError(f"template=chat but the tokenizer {getattr(tokenizer, 'name_or_path', tokenizer)!r} "
                             "has no chat template; use template=base")
        self.tokenizer = tokenizer
        self.mode = mode
        self.add_special_tokens = mode == "base" if add_special_tokens is None else add_special_tokens

    def render(self, draft: Draft) -> str:
        """Full model input: wrapped body followed by the answer prefix."""
        if self.mode == "base":
            return draft.body + draft.answer_prefix
        wrapped = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": draft.body}], tokenize=False, add_generation_prompt=True)
        return wrapped + draft.answer_prefix

    def count(self, text: str) -> int:
        """Token count of ``text`` as the runner will tokenize it."""
        return len(self.tokenizer.encode(text, add_special_tokens=self.add_special_tokens))


def ruler2024_icl_template(fmt: "PromptFormat", spec: dict[str, Any]) -> str:
    """vt's in-context-example template as official RULER 2024 builds it (``variable_tracking.py``
    L114-119 at 3b8928f): the prompt template wrapped by the model template, cut from the task
    template's first 20 characters to the answer prefix, split on whitespace with the last word
    dropped (meant to drop the model template's closing tag) and re-joined with single spaces,
    then the answer prefix. Placeholders (``{context}``, ...) stay to be filled in.

    With ``base`` the dropped word is the question's last, "above."; with a chat template it is
    the last whitespace-free piece of the template's turn change (ChatML: ``<|im_start|>assistant``,
    leaving ``above.<|im_end|>`` in the example), as upstream with its model templates.
    """
    wrapped = fmt.render(Draft(body=spec["template"], answer_prefix=spec["answer_prefix"], answers=[], meta={}))
    cutoff = wrapped.index(spec["template"][:20])
    cutoff_ans = wrapped.index(spec["answer_prefix"][:10])
    return " ".join(wrapped[cutoff:cutoff_ans].split()[:-1]) + wrapped[cutoff_ans:]
