"""MathVista CLIs kept at the original paths: `extract_answer.py` and `calculate_score.py`
(logic in `mgm.eval.mathvista_utils`)."""
