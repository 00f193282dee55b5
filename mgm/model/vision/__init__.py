"""Vision towers: the low-res CLIP ViT and the high-res ConvNeXt, plus where their files are found."""
