"""The original module path of the projector builder (`mgm.model.multimodal_projector.builder`)."""
