"""The VLMEvalKit model class for any MGM checkpoint (normal or HD, every LLM family).

`MGM(model_path, conv_mode=None, ...)` is a `vlmeval.vlm.base.BaseModel`: VLMEvalKit's inference
loop (`vlmeval.inference.infer_data_job`, behind its run.py) calls `generate(message, dataset)` per
sample. The answer comes from mgm's inference engine with the prompt mgm's own runners build, so it
equals `python -m mgm.eval.model_vqa_loader` (open questions) and `python -m mgm.eval.model_vqa_mmbench
--single-pred-prompt` (multiple-choice datasets, whose prompt this class builds as MGM's MMBench
evaluation does: hint, question, one "L. option" line per option, "Answer with the option's letter
from the given choices directly.").

Local TSVs (`$LMUData/<NAME>.tsv`): VLMEvalKit calls every dataset it does not know multiple choice
when it asks the model for a prompt, whatever the file holds; this class goes by the row instead, as
VLMEvalKit's own dataset builder does by the columns: a row with options (`A`, `B`, ...) gets the
MMBench prompt, a row without gets its question alone (the `model_vqa_loader` prompt; a `hint`
column is not used there), so a VQA file with a `hint` column is still asked as VQA.
"""
from __future__ import annotations

import string
from typing import Any

from vlmeval.dataset import DATASET_TYPE
from vlmeval.vlm.base import BaseModel

from mgm.integrations.harness import HarnessModel, Question


def _cell(line: Any, key: str) -> Any:
    """A TSV cell as a plain value (pandas' NaN → None)."""
    value = line[key] if key in line else None
    try:
        import pandas as pd

        return None if value is not None and pd.isna(value) else value
    except (TypeError, ValueError):  # a list cell (several images) is not NA
        return value


def _is_chinese(text: str) -> bool:
    return any("\u4e00" <= ch <= "\u9fff" for ch in text)


class MGM(BaseModel):
    """An MGM checkpoint in VLMEvalKit.

    model_path: checkpoint folder; conv_mode: template (default: the one the checkpoint's config
    implies); model_base, device, load_8bit: as mgm's loader; temperature (0 = greedy), top_p,
    num_beams, max_new_tokens: generation settings for every sample.
    """

    INSTALL_REQ = False
    INTERLEAVE = False  # images go before the text, one <image> each, as MGM was trained

    def __init__(self, model_path: str, conv_mode: str | None = None, model_base: str | None = None,
                 device: str = "auto", load_8bit: bool = False, temperature: float = 0.0,
                 top_p: float | None = None, num_beams: int = 1, max_new_tokens: int = 1024) -> None:
        super().__init__()
        from mgm.inference.requests import GenerationParams

        self.harness = HarnessModel(model_path, conv_mode=conv_mode, model_base=model_base, device=device,
                                    load_8bit=load_8bit)
        self.params = GenerationParams(temperature=float(temperature), top_p=top_p, num_beams=int(num_beams),
                                       max_new_tokens=int(max_new_tokens))
        self.harness.engine  # noqa: B018 (load now, as VLMEvalKit's models do in their constructor)

    def use_custom_prompt(self, dataset: str | None) -> bool:
        """Multiple-choice datasets (and local TSVs, which VLMEvalKit types as such) get the prompt of
        `build_prompt`; VLMEvalKit's own VQA datasets keep theirs."""
        return dataset is not None and DATASET_TYPE(dataset) == "MCQ"

    def build_prompt(self, line: Any, dataset: str | None = None) -> list[dict]:
        """One TSV row as mgm's runners ask it: MGM's MMBench prompt (mgm.eval.model_vqa_mmbench) when the
        row has options, else the question alone (mgm.eval.model_vqa_loader)."""
        from mgm.eval.model_vqa_mmbench import SINGLE_PRED_PROMPT, build_question, get_options

        paths = self.dump_image(line, dataset)
        row = {key: _cell(line, key) for key in ("question", "hint", *string.ascii_uppercase)}
        options = [str(o) for o in get_options(row, string.ascii_uppercase)]
        if options:
            prompt = build_question(row, options, string.ascii_uppercase)
            prompt += "\n" + SINGLE_PRED_PROMPT["cn" if _is_chinese(prompt) else "en"]
        else:
            prompt = str(row["question"])
        paths = paths if isinstance(paths, list) else [paths]
        return [dict(type="image", value=p) for p in paths] + [dict(type="text", value=prompt)]

    def generate_inner(self, message: list[dict], dataset: str | None = None) -> str:
        """One answer: every image of the message (in order), then its text parts joined by newlines."""
        from mgm.data.image import open_image

        images = [open_image(item["value"]) for item in message if item["type"] == "image"]
        text = "\n".join(item["value"] for item in message if item["type"] == "text")
        return self.harness.answer([Question(text, images)], self.params)[0]
