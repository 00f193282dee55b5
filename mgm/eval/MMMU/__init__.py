"""MMMU evaluation kit at the original path (logic in `mgm.eval.mmmu_utils`)."""
