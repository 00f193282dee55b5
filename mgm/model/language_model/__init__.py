"""The original module paths of the per-family MGM classes (`mgm.model.language_model.mgm_<family>`)."""
