"""The standard benchmarks' own scoring rules, as their reference scorers apply them (lmms-eval,
which follows the benchmarks' official scripts): a number here is comparable with a number
published with that scorer. Each function is registered in :data:`runners.metrics.METRICS`.

None of them uses :func:`runners.metrics.normalize`: each does exactly what its benchmark does,
quirks included (named in the docstrings), and nothing more. Every model answer is stripped of
surrounding whitespace first, as lmms-eval strips every answer before scoring it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from rapidfuzz.distance import Levenshtein

from runners.metrics import Reference, reference_list

# --- DocVQA, InfographicVQA ---------------------------------------------------------------

DOCVQA_THRESHOLD = 0.5


def docvqa_anls(prediction: str | None, reference: Reference) -> float:
    """ANLS as DocVQA's and InfographicVQA's scorers compute it (Biten et al. 2019), best over
    the references: ``1 - NL`` kept when it is at least 0.5, else 0.

    Both texts are lower-cased, stripped and their runs of whitespace made one space; NL is
    their Levenshtein distance divided by the longer of the two texts *as given* (the scorers'
    quirk: not of the normalised ones). A similarity of exactly 0.5 counts (``< 0.5`` is 0).
    """
    answer = (prediction or "").strip()
    best = 0.0
    for ref in reference_list(reference):
        length = max(len(ref.upper()), len(answer.upper()))
        distance = Levenshtein.distance(_docvqa_form(ref), _docvqa_form(answer))
        similarity = 1.0 - (distance / length if length else 0.0)
        best = max(best, similarity if similarity >= DOCVQA_THRESHOLD else 0.0)
    return best


def _docvqa_form(text: str) -> str:
    return " ".join(text.strip().lower().split())


# --- ChartQA -------------------------------------------------------------------------------

RELAXED_TOLERANCE = 0.05  # ChartQA: a number within 5% of the reference is right


def relaxed_accuracy(prediction: str | None, reference: Reference) -> float:
    """ChartQA's relaxed accuracy (Masry et al. 2022, section 5.1, as lmms-eval and Qwen-VL
    score it), best over the references. With no normalisation but these rules:

    * both texts read as numbers (Python's ``float``; a trailing ``%`` divides by 100, so
      ``"45%"`` is 0.45) and the reference is not zero: right when
      ``|prediction - reference| / |reference| <= 0.05``;
    * otherwise: right when the texts are equal ignoring case (``"5 kg"`` is no number, and a
      reference of ``0`` is compared as text: ``"0.0"`` is wrong).
    """
    answer = (prediction or "").strip()
    return float(any(_relaxed_match(answer, ref) for ref in reference_list(reference)))


def _relaxed_match(prediction: str, target: str) -> bool:
    predicted, expected = _chart_number(prediction), _chart_number(target)
    if predicted is not None and expected:
        return abs(predicted - expected) / abs(expected) <= RELAXED_TOLERANCE
    return prediction.lower() == target.lower()


def _chart_number(text: str) -> float | None:
    try:
        return float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        return None


# --- OCRBench (v1) -------------------------------------------------------------------------

# Its handwritten-formula questions (HME100k) are matched with spaces removed and case kept.
OCRBENCH_FORMULAS = "Handwritten Mathematical Expression Recognition"
_FULLWIDTH = {code: code - 0xFEE0 for code in range(0xFF01, 0xFF5F)} | {0x3000: 0x20}


def ocrbench_accuracy(
    prediction: str | None, reference: Reference, *, row: Mapping[str, Any] | None = None
) -> float:
    """OCRBench's rule: 1 when any reference answer is *contained in* the prediction.

    For its handwritten-formula questions (``question_type`` "Handwritten Mathematical
    Expression Recognition", given by the sample's ``row``) both texts lose every space and
    newline and keep their case; for every other question both are folded from full-width to
    ASCII forms, lower-cased, stripped and their newlines made spaces.
    """
    formulas = row is not None and row.get("question_type") == OCRBENCH_FORMULAS
    form = _formula_form if formulas else _ocr_form
    answer = form((prediction or "").strip())
    return float(any(form(ref) in answer for ref in reference_list(reference)))


ocrbench_accuracy.takes_row = True  # type: ignore[attr-defined]


def _formula_form(text: str) -> str:
    return text.strip().replace("\n", " ").replace(" ", "")


def _ocr_form(text: str) -> str:
    return text.translate(_FULLWIDTH).lower().strip().replace("\n", " ")


# --- TextVQA (VQA accuracy) ----------------------------------------------------------------


def vqa_accuracy(prediction: str | None, reference: Reference) -> float:
    """VQA accuracy (Antol et al. 2015; TextVQA's scorer): the answer and each of the (ten)
    human answers are normalised by :func:`vqa_normalize`; for each human answer left out in
    turn, ``min(1, matches among the others / 3)``; the mean of those.

    Benchmarks that use it give ten answers per question. A question with one answer scores
    1 when it matches (the formula, which counts matches among the *others*, would give 0
    whatever the answer).
    """
    answer = vqa_normalize(prediction or "")
    answers = [vqa_normalize(ref) for ref in reference_list(reference)]
    if len(answers) == 1:
        return float(answers[0] == answer)
    scores = [
        min(1.0, sum(other == answer for other in answers[:left] + answers[left + 1 :]) / 3)
        for left in range(len(answers))
    ]
    return sum(scores) / len(scores)


_PUNCTUATION = ';/[]"{}()=+\\_-><@`,?!'
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")  # sic: the official pattern, a lookahead
_NUMBER_WORDS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
_ARTICLES = {"a", "an", "the"}
# The official table, word as written -> as it is spelt (its capitalised entries, which never
# match a lower-cased answer, left out).
_CONTRACTION_TABLE = """
aint=ain't arent=aren't cant=can't couldve=could've couldnt=couldn't couldn'tve=couldn't've
couldnt've=couldn't've didnt=didn't doesnt=doesn't dont=don't hadnt=hadn't hadnt've=hadn't've
hadn'tve=hadn't've hasnt=hasn't havent=haven't hed=he'd hed've=he'd've he'dve=he'd've hes=he's
howd=how'd howll=how'll hows=how's isnt=isn't itd=it'd itd've=it'd've it'dve=it'd've itll=it'll
let's=let's maam=ma'am mightnt=mightn't mightnt've=mightn't've mightn'tve=mightn't've
mightve=might've mustnt=mustn't mustve=must've neednt=needn't notve=not've oclock=o'clock
oughtnt=oughtn't ow's'at='ow's'at 'ows'at='ow's'at 'ow'sat='ow's'at shant=shan't
shed've=she'd've she'dve=she'd've she's=she's shouldve=should've shouldnt=shouldn't
shouldnt've=shouldn't've shouldn'tve=shouldn't've somebody'd=somebodyd
somebodyd've=somebody'd've somebody'dve=somebody'd've somebodyll=somebody'll
somebodys=somebody's someoned=someone'd someoned've=someone'd've someone'dve=someone'd've
someonell=someone'll someones=someone's somethingd=something'd somethingd've=something'd've
something'dve=something'd've somethingll=something'll thats=that's thered=there'd
thered've=there'd've there'dve=there'd've therere=there're theres=there's theyd=they'd
theyd've=they'd've they'dve=they'd've theyll=they'll theyre=they're theyve=they've twas='twas
wasnt=wasn't wed've=we'd've we'dve=we'd've weve=we've werent=weren't whatll=what'll
whatre=what're whats=what's whatve=what've whens=when's whered=where'd wheres=where's
whereve=where've whod=who'd whod've=who'd've who'dve=who'd've wholl=who'll whos=who's
whove=who've whyll=why'll whyre=why're whys=why's wont=won't wouldve=would've wouldnt=wouldn't
wouldnt've=wouldn't've wouldn'tve=wouldn't've yall=y'all yall'll=y'all'll y'allll=y'all'll
yall'd've=y'all'd've y'alld've=y'all'd've y'all'dve=y'all'd've youd=you'd youd've=you'd've
you'dve=you'd've youll=you'll youre=you're youve=you've
"""
_CONTRACTIONS = dict(pair.split("=", 1) for pair in _CONTRACTION_TABLE.split())


def vqa_normalize(text: str) -> str:
    """The official VQA answer normalisation (EvalAI's, as TextVQA scores): lower-case; drop
    ``,`` and ``?``, split ``'s``; each other punctuation mark removed where it touches a space,
    else made a space; periods not before a digit removed (at most 32, as the official call
    does); number words to digits (``two`` -> ``2``), articles dropped, contractions spelt with
    their apostrophe (``dont`` -> ``don't``)."""
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    spaced = text  # every mark is judged by the text before any was replaced
    for mark in _PUNCTUATION:
        touches_space = f"{mark} " in spaced or f" {mark}" in spaced
        text = text.replace(mark, "" if touches_space else " ")
    text = _PERIOD.sub("", text, count=32)
    words = []
    for word in text.split():
        word = _NUMBER_WORDS.get(word, word)
        if word not in _ARTICLES:
            words.append(_CONTRACTIONS.get(word, word))
    return " ".join(words)
