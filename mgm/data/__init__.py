"""Training data: prompt rendering + tokenisation with label masks, images, dataset, collator.

Submodules are imported explicitly (e.g. `from mgm.data.preprocess import tokenize_conversation`);
this package imports nothing on its own so that `mgm.mm_utils` can depend on `mgm.data.image`
without an import cycle.
"""
