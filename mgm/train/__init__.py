"""Two-stage MGM training (docs/original.md#training): flags, model set-up per stage, trainer, checkpoints, entry points.

Entry points: `python -m mgm.train.train` / `deepspeed mgm/train/train_mem.py` with the original flags
(see `mgm.train.args`). Submodules are imported explicitly; this package imports nothing on its own.
"""
