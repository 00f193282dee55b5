"""Evaluation: answer runners (`python -m mgm.eval.model_vqa_loader`, ...) and benchmark scorers.

Scorers (pure Python, same numbers as the original Mini-Gemini / LLaVA tools, docs/original.md#evaluation):
`eval_textvqa` (+ `m4c_evaluator`), `eval_pope`, `eval_science_qa`, `eval_mme`, `mmmu_utils`
(CLIs under `MMMU/eval/`), `mathvista_utils` (CLIs under `MathVista/`), `judge` (OpenAI-compatible
LLM judge client); submission converters live in `scripts/convert_*.py`.
Importing this package imports nothing else.
"""
