"""MMMU evaluation kit: subject tables, prompt building, response parsing, scoring and the three CLIs.

Re-implements the upstream MMMU `utils/data_utils.py` + `utils/eval_utils.py` that Mini-Gemini vendored
(docs/original.md#evaluation), with the same results:

* `parse_multi_choice_response(response, all_choices, index2ans)`: strip , . ! ? ; : ' from both ends
  (in that order), pad with spaces, collect choices written "(X)", else " X ", else (only when the
  response has more than 5 words) choices whose option text occurs in it; several candidates -> the
  one occurring LAST; none -> a random choice from a generator seeded with 42 (upstream seeds the
  global `random` with 42 at import; here one shared `random.Random(42)` is created on first use, or
  pass `rng=`).
* `parse_open_response(response)`: key sub-responses after "could be ", "so ", "is ", "thus ",
  "therefore ", "final ", "answer ", "result " (and "=" for the last sentence), plus every number found
  in them, normalised (numbers -> float rounded to 2 decimals, strings lowercased, 1-char strings padded
  with a space) and de-duplicated with `set` (so the order of string items varies with the hash seed,
  as upstream).
* `eval_multi_choice` (exact match, gold may be a list), `eval_open` (a normalised gold string
  contained in a string prediction, or equal floats), `evaluate`, `calculate_ins_level_acc`.

CLIs (runnable from the repository root; thin wrappers live under mgm/eval/MMMU/eval/):

    python mgm/eval/MMMU/eval/main_eval_only.py --output_path val_output.json --answer_path answer_dict_val.json
    python mgm/eval/MMMU/eval/eval.py --result_file merge.jsonl --output_path work_dirs/MMMU/CKPT/val.json
    python mgm/eval/MMMU/eval/convert_to_test.py --result_file merge.jsonl --output_path test.json
"""
from __future__ import annotations

import argparse
import ast
import functools
import os
import random
import re
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

from mgm.errors import UserError
from mgm.eval.scorer_io import check_keys, load_json, read_jsonl, save_json

# The 30 MMMU subjects in their 6 disciplines (order matters: it is the printing order).
DOMAIN_CAT2SUB_CAT: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "Art and Design": ("Art", "Art_Theory", "Design", "Music"),
    "Business": ("Accounting", "Economics", "Finance", "Manage", "Marketing"),
    "Science": ("Biology", "Chemistry", "Geography", "Math", "Physics"),
    "Health and Medicine": ("Basic_Medical_Science", "Clinical_Medicine", "Diagnostics_and_Laboratory_Medicine",
                            "Pharmacy", "Public_Health"),
    "Humanities and Social Science": ("History", "Literature", "Sociology", "Psychology"),
    "Tech and Engineering": ("Agriculture", "Architecture_and_Engineering", "Computer_Science", "Electronics",
                             "Energy_and_Power", "Materials", "Mechanical_Engineering"),
})

CAT_SHORT2LONG: Mapping[str, str] = MappingProxyType({
    "acc": "Accounting", "agri": "Agriculture", "arch": "Architecture_and_Engineering", "art": "Art",
    "art_theory": "Art_Theory", "bas_med": "Basic_Medical_Science", "bio": "Biology", "chem": "Chemistry",
    "cli_med": "Clinical_Medicine", "cs": "Computer_Science", "design": "Design",
    "diag_med": "Diagnostics_and_Laboratory_Medicine", "econ": "Economics", "elec": "Electronics",
    "ep": "Energy_and_Power", "fin": "Finance", "geo": "Geography", "his": "History", "liter": "Literature",
    "manage": "Manage", "mark": "Marketing", "mate": "Materials", "math": "Math",
    "mech": "Mechanical_Engineering", "music": "Music", "phar": "Pharmacy", "phys": "Physics",
    "psy": "Psychology", "pub_health": "Public_Health", "socio": "Sociology",
})

FALLBACK_SEED = 42


@functools.lru_cache(maxsize=1)
def _fallback_rng() -> random.Random:
    # One generator for the whole process, like upstream's `random.seed(42)` at import; created on
    # first use so importing this module has no side effect.
    return random.Random(FALLBACK_SEED)


# ----------------------------------------------------------------------------------------- data
def get_multi_choice_info(options: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """`(index2ans, all_choices)` for options labelled A, B, C, ..."""
    index2ans, all_choices = {}, []
    for i, option in enumerate(options):
        letter = chr(ord("A") + i)
        index2ans[letter] = option
        all_choices.append(letter)
    return index2ans, all_choices


def parse_img_path(text: str) -> list[str]:
    """Image references `<img='...'>` inside a question or option."""
    return re.findall("<img='(.*?)'>", text)


def parse_options(options: Any) -> list:
    """MMMU stores options as the text of a Python list; parse it safely (upstream used `eval`)."""
    if isinstance(options, (list, tuple)):
        return list(options)
    try:
        value = ast.literal_eval(options)
    except (ValueError, SyntaxError) as exc:
        raise ValueError(f"options are not a Python list literal: {options!r} ({exc})") from None
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"options are not a list: {options!r}")
    return list(value)


def process_single_sample(data: Mapping) -> dict:
    """Keep the fields a runner needs; samples with images in more than one option get image None.

    PARITY: like upstream this iterates `data["options"]` as stored. In the HF MMMU dataset that is the
    TEXT of a list, so the loop sees single characters and never finds an `<img='...'>` reference:
    every sample keeps `image_1`.
    """
    option_images = [p for option in data["options"] for p in parse_img_path(str(option))]
    image = None if len(option_images) > 1 else data.get("image_1")
    return {"id": data["id"], "question": data["question"], "options": data["options"], "answer": data["answer"],
            "image": image, "question_type": data["question_type"]}


def construct_prompt(sample: Mapping, config: Mapping) -> dict:
    """Build the prompt of one sample from the YAML config (keys task_instructions,
    multi_choice_example_format, short_ans_example_format); returns upstream's res_dict merged with
    the sample (index2ans, all_choices, correct_choice, empty_prompt, final_input_prompt, gt_content)."""
    question = sample["question"]
    res: dict = {}
    if sample["question_type"] == "multiple-choice":
        options = parse_options(sample["options"])
        index2ans, all_choices = get_multi_choice_info(options)
        example = "".join(f"({letter}) {option}\n" for letter, option in zip(all_choices, options))
        empty_prompt = config["multi_choice_example_format"].format(question, example)
        res["index2ans"] = index2ans
        res["correct_choice"] = sample["answer"]
        res["all_choices"] = all_choices
        res["gt_content"] = options[ord(sample["answer"].upper()) - ord("A")]
    else:
        empty_prompt = config["short_ans_example_format"].format(question)
        res["gt_content"] = sample["answer"]
    res["empty_prompt"] = empty_prompt
    instructions = config.get("task_instructions")
    res["final_input_prompt"] = instructions.strip() + "\n\n" + empty_prompt if instructions else empty_prompt
    res.update(sample)
    return res


# -------------------------------------------------------------------------------------- parsing
def parse_multi_choice_response(response: str, all_choices: Sequence[str], index2ans: Mapping[str, str],
                                rng: random.Random | None = None) -> str:
    """Return the predicted option letter (rules in the module docstring)."""
    for char in (",", ".", "!", "?", ";", ":", "'"):
        response = response.strip(char)
    response = " " + response + " "  # avoid partial matches

    index_ans = True
    ans_with_brack = False
    candidates = []
    for choice in all_choices:
        if f"({choice})" in response:
            candidates.append(choice)
            ans_with_brack = True
    if not candidates:
        for choice in all_choices:
            if f" {choice} " in response:
                candidates.append(choice)
    if not candidates and len(response.split()) > 5:
        for index, ans in index2ans.items():
            if ans.lower() in response.lower():
                candidates.append(index)
                index_ans = False  # matched the option text, not the letter

    if not candidates:
        return (rng or _fallback_rng()).choice(list(all_choices))
    if len(candidates) == 1:
        return candidates[0]
    if index_ans and ans_with_brack:
        starts = [response.rfind(f"({c})") for c in candidates]
    elif index_ans:
        starts = [response.rfind(f" {c} ") for c in candidates]
    else:
        starts = [response.lower().rfind(index2ans[c].lower()) for c in candidates]
    # The candidate that occurs last; ties -> the first such candidate (numpy.argmax semantics).
    return candidates[max(range(len(starts)), key=starts.__getitem__)]


def check_is_number(string: str) -> bool:
    """True if `string` (commas removed) parses as a float."""
    try:
        float(string.replace(",", ""))
        return True
    except ValueError:
        return False


def normalize_str(string: str) -> list:
    """Numbers -> [float rounded to 2]; strings -> [lowercased], 1-char strings -> [" x", "x "]."""
    string = string.strip()
    if check_is_number(string):
        return [round(float(string.replace(",", "")), 2)]
    string = string.lower()
    if len(string) == 1:
        return [" " + string, string + " "]  # avoid trivial matches
    return [string]


_NUM_COMMAS = re.compile(r"-?\b\d{1,3}(?:,\d{3})+\b")
_NUM_SCIENTIFIC = re.compile(r"-?\d+(?:\.\d+)?[eE][+-]?\d+")
_NUM_SIMPLE = re.compile(r"-?(?:\d+\.\d+|\.\d+|\d+\b)(?![eE][+-]?\d+)(?![,\d])")


def extract_numbers(string: str) -> list[str]:
    """All numbers in `string`: with thousands commas, then scientific, then plain (upstream order)."""
    return _NUM_COMMAS.findall(string) + _NUM_SCIENTIFIC.findall(string) + _NUM_SIMPLE.findall(string)


_KEY_INDICATORS = ("could be ", "so ", "is ", "thus ", "therefore ", "final ", "answer ", "result ")
_TRIVIAL = (":", ",", ".", "!", "?", ";", ":", "'")


def _key_subresponses(response: str) -> list[str]:
    response = response.strip().strip(".").lower()
    # Upstream splits on ". " before a capital AFTER lowercasing, so in practice only "\n" splits.
    sub_responses = re.split(r"\.\s(?=[A-Z])|\n", response)
    key_responses = []
    for index, resp in enumerate(sub_responses):
        indicators = _KEY_INDICATORS + (("=",) if index == len(sub_responses) - 1 else ())
        shortest = None
        for indicator in indicators:
            if indicator in resp:
                tail = resp.split(indicator)[-1].strip()
                # `not shortest` (not `is None`): an empty tail is replaced by the next one, as upstream.
                if not shortest or len(tail) < len(shortest):
                    shortest = tail
        if shortest and shortest.strip() not in _TRIVIAL:
            key_responses.append(shortest)
    return key_responses or [response]


def parse_open_response(response: str) -> list:
    """Candidate answers of an open question (rules in the module docstring)."""
    key_responses = _key_subresponses(response)
    pred_list: list = list(key_responses)
    for resp in key_responses:
        pred_list.extend(extract_numbers(resp))
    normalized: list = []
    for item in pred_list:
        normalized.extend(normalize_str(item))
    return list(set(normalized))


# ----------------------------------------------------------------------------------- evaluation
def eval_multi_choice(gold_i: str | Sequence[str], pred_i: str) -> bool:
    """Exact match; a list gold accepts any of its items."""
    if isinstance(gold_i, list):
        return any(answer == pred_i for answer in gold_i)
    return gold_i == pred_i


def eval_open(gold_i: str | Sequence[str], pred_i: Sequence) -> bool:
    """A normalised gold string contained in a string prediction, or a float prediction equal to a gold."""
    if isinstance(gold_i, list):
        norm_answers: list = []
        for answer in gold_i:
            norm_answers.extend(normalize_str(answer))
    else:
        norm_answers = normalize_str(gold_i)
    for pred in pred_i:
        if isinstance(pred, str):
            if any(isinstance(ans, str) and ans in pred for ans in norm_answers):
                return True
        elif pred in norm_answers:
            return True
    return False


def evaluate(samples: Sequence[Mapping]) -> tuple[dict[str, str], dict[str, float]]:
    """Judge `[{id, question_type, answer, parsed_pred}]`: `({id: "Correct"|"Wrong"}, {"acc": x})`.

    (Upstream returned a bare `{"acc": 0}` for an empty list; here it is `({}, {"acc": 0})`.)
    """
    judge_dict: dict[str, str] = {}
    pred_correct = 0
    for sample in samples:
        if sample["question_type"] == "multiple-choice":
            correct = eval_multi_choice(sample["answer"], sample["parsed_pred"])
        else:
            correct = eval_open(sample["answer"], sample["parsed_pred"])
        judge_dict[sample["id"]] = "Correct" if correct else "Wrong"
        pred_correct += bool(correct)
    if not samples:
        return judge_dict, {"acc": 0}
    return judge_dict, {"acc": pred_correct / len(samples)}


def calculate_ins_level_acc(results: Mapping[str, Mapping]) -> float:
    """Instance-weighted accuracy over `{category: {"acc", "num_example"}}` (0 when empty)."""
    acc = 0
    ins_num = 0
    for cat_results in results.values():
        acc += cat_results["acc"] * cat_results["num_example"]
        ins_num += cat_results["num_example"]
    if ins_num == 0:
        return 0
    return acc / ins_num


def category_of(data_id: str) -> str:
    """Subject of an MMMU id such as "validation_Art_Theory_12" -> "Art_Theory"."""
    return "_".join(data_id.split("_")[1:-1])


def evaluate_output_dict(output_dict: Mapping[str, Any], answer_dict: Mapping[str, Mapping],
                         output_name: str = "output file") -> dict:
    """upstream main_eval_only: per-subject, per-discipline and overall `{"num", "acc"}` (acc rounded to 3).

    Prints "Evaluating: <subject>" / "Skipping <subject> for not found" like upstream; returns the
    printable dict (its key order is the printing order).
    """
    outputs_by_cat: dict[str, dict] = {}
    for data_id, parsed_pred in output_dict.items():
        outputs_by_cat.setdefault(category_of(data_id), {})[data_id] = parsed_pred
    answers_by_cat: dict[str, dict] = {}
    for data_id, answer in answer_dict.items():
        answers_by_cat.setdefault(category_of(data_id), {})[data_id] = answer

    evaluation_result: dict[str, dict] = {}
    for category in CAT_SHORT2LONG.values():
        print("Evaluating: {}".format(category))
        if category not in outputs_by_cat or category not in answers_by_cat:
            print("Skipping {} for not found".format(category))
            continue
        cat_answers = answers_by_cat[category]
        examples = []
        for data_id, parsed_pred in outputs_by_cat[category].items():
            if data_id not in cat_answers:
                raise UserError(f"{output_name}: id {data_id!r} is not in the answer file")
            check_keys(cat_answers[data_id], ("question_type", "ground_truth"), f"answer file, id {data_id!r}")
            question_type = cat_answers[data_id]["question_type"]
            if question_type != "multiple-choice":
                if not isinstance(parsed_pred, str):
                    raise UserError(f"{output_name}: id {data_id!r}: open-question prediction must be a string, "
                                    f"got {type(parsed_pred).__name__}")
                parsed_pred = parse_open_response(parsed_pred)  # type consistency (numbers, ...)
            examples.append({"id": data_id, "question_type": question_type,
                             "answer": cat_answers[data_id]["ground_truth"], "parsed_pred": parsed_pred})
        _, metric_dict = evaluate(examples)
        metric_dict["num_example"] = len(examples)
        evaluation_result[category] = metric_dict

    printable: dict[str, dict] = {}
    for domain, in_domain_cats in DOMAIN_CAT2SUB_CAT.items():
        in_domain = {c: evaluation_result[c] for c in in_domain_cats if c in evaluation_result}
        printable["Overall-" + domain] = {
            "num": int(sum(r["num_example"] for r in in_domain.values())),
            "acc": round(calculate_ins_level_acc(in_domain), 3),
        }
        for cat_name, cat_results in in_domain.items():
            printable[cat_name] = {"num": int(cat_results["num_example"]), "acc": round(cat_results["acc"], 3)}
    printable["Overall"] = {
        "num": sum(r["num_example"] for r in evaluation_result.values()),
        "acc": round(calculate_ins_level_acc(evaluation_result), 3),
    }
    return printable


# ------------------------------------------------------------------------------------------ CLIs
def _find_answer_file(path: str) -> str:
    if os.path.isfile(path):
        return path
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "MMMU", "eval", os.path.basename(path))
    if os.path.isfile(here):
        return here
    raise UserError(f"--answer_path {path} not found (also looked for {here}); it is the MMMU validation "
                    "ground truth answer_dict_val.json shipped with the MMMU evaluation kit")


def main_eval_only(argv: Sequence[str] | None = None) -> dict:
    """`main_eval_only.py --output_path OUT.json --answer_path answer_dict_val.json`: prints and returns results."""
    parser = argparse.ArgumentParser(prog="main_eval_only.py", description="Score MMMU parsed predictions "
                                     "({id: prediction} JSON) against the answer dict, per subject and discipline.")
    parser.add_argument("--output_path", default="./example_outputs/qwen_vl/total_val_output.json",
                        help="model output JSON {id: parsed prediction}")
    parser.add_argument("--answer_path", default="./answer_dict_val.json",
                        help="answer dict JSON {id: {question_type, ground_truth}}")
    args = parser.parse_args(argv)
    output_dict = load_json(args.output_path, "--output_path")
    answer_dict = load_json(_find_answer_file(args.answer_path), "--answer_path")
    if not isinstance(output_dict, dict) or not isinstance(answer_dict, dict):
        raise UserError("--output_path and --answer_path must both be JSON objects keyed by MMMU id "
                        "(an answers JSONL goes to eval.py --result_file instead)")
    printable = evaluate_output_dict(output_dict, answer_dict, f"--output_path {args.output_path}")
    print(printable)
    return printable


_RESULT_KEYS = ("id", "question_type", "answer", "parsed_pred")


def eval_result_file(argv: Sequence[str] | None = None) -> dict:
    """`eval.py --result_file merge.jsonl --output_path val.json`: judge dict + metric_dict saved as JSON."""
    parser = argparse.ArgumentParser(prog="eval.py", description="Judge MMMU runner output (JSONL with id, "
                                     "question_type, answer, parsed_pred) and save {id: Correct|Wrong, metric_dict}.")
    parser.add_argument("--result_file", default="llava1.5_13b_val.txt", help="runner output JSONL")
    parser.add_argument("--output_path", default="llava1.5_13b_val.json", help="where to save the judge JSON")
    args = parser.parse_args(argv)
    samples = read_jsonl(args.result_file, _RESULT_KEYS, "--result_file")
    judge_dict, metric_dict = evaluate(samples)
    metric_dict["num_example"] = len(samples)
    out: dict = dict(judge_dict)
    out["metric_dict"] = metric_dict
    save_json(args.output_path, out)
    print(metric_dict)
    return out


def convert_to_test(argv: Sequence[str] | None = None) -> dict:
    """`convert_to_test.py --result_file merge.jsonl --output_path test.json`: `{id: prediction}` for submission."""
    parser = argparse.ArgumentParser(prog="convert_to_test.py", description="Turn MMMU runner output into the "
                                     "test-server submission {id: prediction} (first parsed item of open questions).")
    parser.add_argument("--result_file", default="llava1.5_13b_val.txt", help="runner output JSONL")
    parser.add_argument("--output_path", default="llava1.5_13b_val.json", help="where to save the submission JSON")
    args = parser.parse_args(argv)
    out: dict = {}
    for lineno, sample in enumerate(read_jsonl(args.result_file, ("id", "parsed_pred"), "--result_file"), start=1):
        result = sample["parsed_pred"]
        if isinstance(result, list):
            if not result:
                raise UserError(f"--result_file {args.result_file}, record {lineno}: empty parsed_pred list")
            result = str(result[0])
        out[sample["id"]] = result
    save_json(args.output_path, out)
    return out
