"""Scoring functions of RULER, LongBench v1 and NIAH, ported from their official code.

Every metric is ``fn(prediction, targets, meta) -> float`` in ``[0, 1]`` for one example and is
registered in ``METRICS`` under the name an ``Example.metric`` gives. Benchmarks report the mean
x100, rounded to 2 decimals. Per-benchmark post-processing of the prediction (LongBench's
first-line rule, AnchorAttention's cut list) is done by the benchmark module before scoring; the
RULER metrics apply RULER's own ``postprocess_pred`` themselves.

Sources:

* RULER ``scripts/eval/synthetic/constants.py`` (``string_match_all``/``string_match_part``) and
  ``scripts/eval/evaluate.py`` (``postprocess_pred``), NVIDIA/RULER and the AnchorAttention copy.
* LongBench v1 ``metrics.py`` (THUDM/LongBench): ``normalize_answer``, ``qa_f1_score``,
  ``rouge_score``, ``classification_score``, ``count_score``, ``retrieval_score``,
  ``code_sim_score``; ``eval.py`` takes the max over the ground truths, starting from 0.
* MInference / AnchorAttention ``needle_in_a_haystack``: ``correct = needle_number in response``.
"""
from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable
from typing import Any

Metric = Callable[[str, list[str], dict[str, Any]], float]

_CONTROL_CHARS = re.compile(r"[\x00-\x1f]")


# ----------------------------------------------------------------------------------------- RULER
def ruler_postprocess(prediction: str) -> str:
    """RULER ``evaluate.py::postprocess_pred``: strip, control characters -> newline, strip."""
    return _CONTROL_CHARS.sub("\n", prediction.strip()).strip()


def string_match_all(prediction: str, targets: list[str], meta: dict[str, Any]) -> float:
    """RULER ``string_match_all`` for one example: fraction of references found (case-insensitive).

    Used by niah_*, vt, cwe and fwe. Partial credit: 2 of 4 keys found scores 0.5.
    """
    if not targets:
        raise ValueError("string_match_all needs at least one reference")
    pred = ruler_postprocess(prediction).lower()
    return sum(1.0 if r.lower() in pred else 0.0 for r in targets) / len(targets)


def string_match_part(prediction: str, targets: list[str], meta: dict[str, Any]) -> float:
    """RULER ``string_match_part`` for one example: 1 if any reference is found (case-insensitive).

    Used by qa_1 and qa_2.
    """
    if not targets:
        raise ValueError("string_match_part needs at least one reference")
    pred = ruler_postprocess(prediction).lower()
    return max(1.0 if r.lower() in pred else 0.0 for r in targets)


# ------------------------------------------------------------------------------------- LongBench
def normalize_answer(s: str) -> str:
    """LongBench (SQuAD) ``normalize_answer``: lower, drop ``string.punctuation``, drop the
    articles a/an/the (``\\b`` word boundaries), collapse whitespace (in that order)."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def _best(per_target: Callable[[str, str, dict[str, Any]], float]) -> Metric:
    """LongBench ``eval.py::scorer``: ``score = 0.; score = max(score, metric(pred, gt))`` over gts."""
    def metric(prediction: str, targets: list[str], meta: dict[str, Any]) -> float:
        return max((float(per_target(prediction, gt, meta)) for gt in targets), default=0.0)

    metric.__name__ = per_target.__name__.lstrip("_")
    metric.__doc__ = (per_target.__doc__ or "") + "\n\nMax over ``targets`` (0 if none)."
    return metric


def _qa_f1(prediction: str, ground_truth: str, meta: dict[str, Any]) -> float:
    """LongBench ``qa_f1_score``: token F1 of the normalized strings (multiset overlap)."""
    pred_tokens = normalize_answer(prediction).split()
    gt_tokens = normalize_answer(ground_truth).split()
    num_same = sum((Counter(pred_tokens) & Counter(gt_tokens)).values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(pred_tokens)
    recall = num_same / len(gt_tokens)
    return 2 * precision * recall / (precision + recall)


def _rouge_l(prediction: str, ground_truth: str, meta: dict[str, Any]) -> float:
    """LongBench ``rouge_score``: ROUGE-L F of ``rouge==1.0.1`` (pltrdy's ``rouge``, not Google's
    ``rouge-score``): ``Rouge().get_scores([pred], [gt], avg=True)["rouge-l"]["f"]``. Any exception
    (empty hypothesis, a prediction of only dots, deep recursion) scores 0, as upstream's bare except.
    """
    from rouge import Rouge

    try:
        scores = Rouge().get_scores([prediction], [ground_truth], avg=True)
    except Exception:  # noqa: BLE001  (upstream: bare except -> 0.0)
        return 0.0
    return scores["rouge-l"]["f"]


def _classification(prediction: str, ground_truth: str, meta: dict[str, Any]) -> float:
    """LongBench ``classification_score`` (trec), loop ported literally.

    Classes of ``meta["all_classes"]`` found in the prediction are collected; those that are a
    substring of the ground truth but not equal to it are removed **while iterating over the same
    list**, so the element after each removed one is skipped (kept even if it should go). Score:
    ``1/len(matches)`` if the ground truth is among the matches, else 0. Upstream's ``else`` branch
    (difflib best match) sits under ``if em_match_list != 0``, which a list always satisfies: it is
    unreachable and omitted.
    """
    em_match_list = []
    for class_name in meta["all_classes"]:
        if class_name in prediction:
            em_match_list.append(class_name)
    for match_term in em_match_list:
        if match_term in ground_truth and match_term != ground_truth:
            em_match_list.remove(match_term)
    if ground_truth in em_match_list:
        return 1.0 / len(em_match_list)
    return 0.0


def _count(prediction: str, ground_truth: str, meta: dict[str, Any]) -> float:
    """LongBench ``count_score`` (passage_count): share of the numbers in the prediction equal to
    the ground truth; 0 if the prediction has no number."""
    numbers = re.findall(r"\d+", prediction)
    right = sum(1 for n in numbers if str(n) == str(ground_truth))
    return 0.0 if not numbers else right / len(numbers)


def _retrieval(prediction: str, ground_truth: str, meta: dict[str, Any]) -> float:
    """LongBench ``retrieval_score`` (passage_retrieval_en): the id of ``"Paragraph N"`` in the
    ground truth, then scored as ``count_score`` over all numbers of the prediction."""
    gt_id = re.findall(r"Paragraph (\d+)", ground_truth)[0]
    return _count(prediction, gt_id, meta)


def _lcs_length(a: str, b: str) -> int:
    """Length of the longest common subsequence (bit-parallel, Hyyrö 2004; as rapidfuzz's Indel)."""
    if not a or not b:
        return 0
    masks: dict[str, int] = {}
    for i, ch in enumerate(a):
        masks[ch] = masks.get(ch, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full
    for ch in b:
        u = v & masks.get(ch, 0)
        v = ((v + u) | (v - u)) & full
    return len(a) - v.bit_count()


def fuzz_ratio(s1: str, s2: str) -> int:
    """``fuzzywuzzy.fuzz.ratio`` with ``python-Levenshtein`` (= ``round(rapidfuzz.fuzz.ratio)``):
    integer percent of the Indel normalised similarity ``2*LCS/(len1+len2)``.

    fuzzywuzzy's decorators: equal strings (both empty included) -> 100; one empty -> 0. The value
    is ``round(100 * ratio)`` (Python's round, half to even), as fuzzywuzzy's ``utils.intr``.
    """
    if s1 == s2:
        return 100
    if not s1 or not s2:
        return 0
    lensum = len(s1) + len(s2)
    distance = lensum - 2 * _lcs_length(s1, s2)
    return round(100 * (1.0 - distance / lensum))


def _code_sim(prediction: str, ground_truth: str, meta: dict[str, Any]) -> float:
    """LongBench ``code_sim_score`` (lcc, repobench-p): the first line of ``pred.lstrip('\\n')``
    containing none of ``` ` ```, ``#``, ``//`` (empty if none), then ``fuzz.ratio(line, gt) / 100``."""
    line = ""
    for candidate in prediction.lstrip("\n").split("\n"):
        if "`" not in candidate and "#" not in candidate and "//" not in candidate:
            line = candidate
            break
    return fuzz_ratio(line, ground_truth) / 100


qa_f1 = _best(_qa_f1)
rouge_l = _best(_rouge_l)
classification = _best(_classification)
count = _best(_count)
retrieval = _best(_retrieval)
code_sim = _best(_code_sim)


# ------------------------------------------------------------------------------------------ NIAH
def niah_number(prediction: str, targets: list[str], meta: dict[str, Any]) -> float:
    """AnchorAttention/MInference NIAH: 1 if the needle's number string occurs in the response
    (``needle_rnd_number in response``, case-sensitive substring; any of ``targets``)."""
    return 1.0 if any(str(t) in prediction for t in targets) else 0.0


METRICS: dict[str, Metric] = {
    "string_match_all": string_match_all,
    "string_match_part": string_match_part,
    "qa_f1": qa_f1,
    "rouge_l": rouge_l,
    "classification": classification,
    "count": count,
    "retrieval": retrieval,
    "code_sim": code_sim,
    "niah_number": niah_number,
}
