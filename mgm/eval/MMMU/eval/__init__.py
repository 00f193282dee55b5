"""MMMU CLIs kept at the original paths: `main_eval_only.py`, `eval.py`, `convert_to_test.py`."""
