"""TextVQA / ST-VQA answer scoring (the m4c evaluator used by LLaVA and Mini-Gemini).

`EvalAIAnswerProcessor` normalises an answer string the way the official EvalAI VQA evaluation does;
`TextVQAAccuracyEvaluator` computes the VQA soft accuracy: for each unique (normalised) human answer,
the mean over the 10 leave-one-out subsets of the 10 human answers of `min(1, matches / 3)`; a
prediction scores the value of the unique answer it equals, else 0.

Normalisation, in order (docs/original.md#evaluation):
1. lowercase; remove every "," and "?"; "'s" -> " 's"; strip;
2. newline / tab -> space; strip;
3. punctuation: for each character of `PUNCTUATIONS`, if it occurs next to a space (or a
   digit-comma-digit pattern exists anywhere) it is deleted, else replaced by a space — the test looks
   at the text as it was BEFORE this step, the edits accumulate;
4. periods not followed by a digit are deleted, at most 32 of them (see the PARITY note below);
5. split on whitespace; number words zero..ten and "none" -> digits; articles a/an/the dropped;
   contractions table applied word by word; join with single spaces.

PARITY (docs/original.md#fixed-defects) — two quirks of the official code are kept on purpose so scores match:
* the period regex is written `(?!<=\\d)(\\.)(?!\\d)`: `(?!<=\\d)` is a negative LOOKAHEAD for the
  text "<=digit" (a typo for the lookbehind `(?<!\\d)`); since the next character is the period itself
  it never fires, so the effective rule is "a period not followed by a digit" (`"5."` -> `"5"`,
  `"a.b"` -> `"ab"`, `"1.5"` kept);
* `re.UNICODE` was passed positionally as the `count` argument of `re.sub`, i.e. `count=32`: at most
  the first 32 such periods are removed.
The comma test of step 3 uses the m4c pattern `(?<=\\d)(\\,)+(?=\\d)`; as step 1 already removed all
commas it never matches (so "1,000" -> "1000" by step 1).
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType

__all__ = [
    "EvalAIAnswerProcessor",
    "TextVQAAccuracyEvaluator",
    "STVQAAccuracyEvaluator",
    "STVQAANLSEvaluator",
    "levenshtein",
]

# The EvalAI contraction table, verbatim keys and values (the capitalised keys can never match after
# lowercasing, and "somebody'd" -> "somebodyd" is reversed; both kept for parity).
_CONTRACTIONS = MappingProxyType({
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've",
    "hasnt": "hasn't", "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've",
    "hes": "he's", "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've",
    "I'dve": "I'd've", "Im": "I'm", "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've",
    "it'dve": "it'd've", "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've",
    "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've",
    "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't", "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd", "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've", "somebodyll": "somebody'll", "somebodys": "somebody's",
    "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've",
    "somethingll": "something'll", "thats": "that's", "thered": "there'd", "thered've": "there'd've",
    "there'dve": "there'd've", "therere": "there're", "theres": "there's", "theyd": "they'd",
    "theyd've": "they'd've", "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're",
    "theyve": "they've", "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've",
    "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're", "whats": "what's",
    "whatve": "what've", "whens": "when's", "whered": "where'd", "wheres": "where's",
    "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've",
    "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're",
    "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've",
    "y'all'dve": "y'all'd've", "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've",
    "youll": "you'll", "youre": "you're", "youve": "you've",
})

_NUMBER_MAP = MappingProxyType({
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
})

_ARTICLES = frozenset({"a", "an", "the"})

# Kept exactly as the official source writes it (see the PARITY note in the module docstring).
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
# The official call passed `re.UNICODE` (== 32) where `count` goes.
_PERIOD_STRIP_COUNT = int(re.UNICODE)
_COMMA_STRIP = re.compile(r"(?<=\d)(\,)+(?=\d)")
_PUNCTUATIONS = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`",
                 ",", "?", "!")


class EvalAIAnswerProcessor:
    """Callable answer normaliser of the EvalAI VQA evaluation (m4c flavour); see the module docstring."""

    CONTRACTIONS: Mapping[str, str] = _CONTRACTIONS
    NUMBER_MAP: Mapping[str, str] = _NUMBER_MAP
    ARTICLES: frozenset[str] = _ARTICLES
    PUNCTUATIONS: tuple[str, ...] = _PUNCTUATIONS

    def word_tokenize(self, word: str) -> str:
        """Lowercase, drop "," and "?", split off "'s", strip."""
        word = word.lower()
        word = word.replace(",", "").replace("?", "").replace("'s", " 's")
        return word.strip()

    def process_punctuation(self, in_text: str) -> str:
        """Delete or space out punctuation, then strip periods (PARITY rules in the module docstring)."""
        out_text = in_text
        has_digit_comma = _COMMA_STRIP.search(in_text) is not None
        for p in self.PUNCTUATIONS:
            # The condition reads the ORIGINAL text while the edits accumulate on out_text.
            if (p + " " in in_text or " " + p in in_text) or has_digit_comma:
                out_text = out_text.replace(p, "")
            else:
                out_text = out_text.replace(p, " ")
        return _PERIOD_STRIP.sub("", out_text, count=_PERIOD_STRIP_COUNT)

    def process_digit_article(self, in_text: str) -> str:
        """Map number words to digits, drop articles, expand contractions; single-space join."""
        words = []
        for word in in_text.lower().split():
            word = self.NUMBER_MAP.get(word, word)
            if word not in self.ARTICLES:
                words.append(word)
        return " ".join(self.CONTRACTIONS.get(word, word) for word in words)

    def __call__(self, item: str) -> str:
        item = self.word_tokenize(item)
        item = item.replace("\n", " ").replace("\t", " ").strip()
        item = self.process_punctuation(item)
        return self.process_digit_article(item)


class TextVQAAccuracyEvaluator:
    """VQA soft accuracy over 10 human answers (leave-one-out averaged), as the TextVQA leaderboard."""

    def __init__(self) -> None:
        self.answer_processor = EvalAIAnswerProcessor()

    def _compute_answer_scores(self, raw_answers: Sequence[str]) -> dict[str, float]:
        """Soft score of every unique normalised human answer.

        For each unique answer u and each held-out human answer i, acc_i = min(1, #{j != i: a_j == u} / 3);
        the score of u is sum(acc_i) / 10. E.g. u given by 2 of the 10 humans: 8 subsets keep both
        (2/3) and 2 subsets keep one (1/3) -> (8 * 2/3 + 2 * 1/3) / 10 = 0.6.

        Raises:
            ValueError: not exactly 10 human answers (TextVQA always has 10).
        """
        answers = [self.answer_processor(a) for a in raw_answers]
        if len(answers) != 10:
            raise ValueError(f"TextVQA soft accuracy needs exactly 10 human answers, got {len(answers)}")
        scores = {}
        for unique_answer in set(answers):
            accs = []
            for held_out in range(len(answers)):
                matches = sum(1 for j, a in enumerate(answers) if j != held_out and a == unique_answer)
                # Same arithmetic as the official code: min(1, float(n) / 3), summed in index order, / 10.
                accs.append(min(1, float(matches) / 3))
            scores[unique_answer] = sum(accs) / len(accs)
        return scores

    def eval_pred_list(self, pred_list: Iterable[Mapping], disable_tqdm: bool = True) -> float:
        """Mean soft accuracy of `[{"pred_answer": str, "gt_answers": [10 str]}, ...]`.

        Raises:
            ValueError: empty list, or an entry without 10 human answers.
        """
        pred_scores = []
        for entry in pred_list:
            pred_answer = self.answer_processor(entry["pred_answer"])
            unique_answer_scores = self._compute_answer_scores(entry["gt_answers"])
            pred_scores.append(unique_answer_scores.get(pred_answer, 0.0))
        if not pred_scores:
            raise ValueError("no predictions to score")
        return sum(pred_scores) / len(pred_scores)


class STVQAAccuracyEvaluator:
    """ST-VQA exact-match accuracy: 1 if the normalised prediction equals any normalised answer."""

    def __init__(self) -> None:
        self.answer_processor = EvalAIAnswerProcessor()

    def eval_pred_list(self, pred_list: Iterable[Mapping]) -> float:
        """Mean exact-match accuracy of `[{"pred_answer": str, "gt_answers": [str, ...]}, ...]`."""
        scores = []
        for entry in pred_list:
            pred = self.answer_processor(entry["pred_answer"])
            gts = {self.answer_processor(a) for a in entry["gt_answers"]}
            scores.append(1.0 if pred in gts else 0.0)
        if not scores:
            raise ValueError("no predictions to score")
        return sum(scores) / len(scores)


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insert/delete/substitute, unit costs); pure Python, O(len(a) * len(b))."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        current = [i]
        for j, cb in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


class STVQAANLSEvaluator:
    """ST-VQA ANLS: per answer 1 - edit_distance / max_len on lowercased stripped strings, 0 below 0.5."""

    @staticmethod
    def get_anls(s1: str, s2: str) -> float:
        s1 = s1.lower().strip()
        s2 = s2.lower().strip()
        longest = max(len(s1), len(s2))
        if longest == 0:
            return 1.0
        iou = 1 - levenshtein(s1, s2) / longest
        return iou if iou >= 0.5 else 0.0

    def eval_pred_list(self, pred_list: Iterable[Mapping]) -> float:
        """Mean over entries of the best ANLS between the prediction and any ground-truth answer."""
        scores = [max(self.get_anls(entry["pred_answer"], gt) for gt in entry["gt_answers"]) for entry in pred_list]
        if not scores:
            raise ValueError("no predictions to score")
        return sum(scores) / len(scores)
