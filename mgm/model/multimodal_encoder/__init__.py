"""The original module paths of the vision towers (`mgm.model.multimodal_encoder.*`)."""
