"""A tiny random Stable Diffusion XL pipeline folder, built locally, for testing `--gen` end to end.

    python -m mgm.zoo.sdxl --out DIR [--seed 0]

Writes a diffusers `StableDiffusionXLPipeline.save_pretrained` folder (model_index.json, unet/, vae/,
text_encoder/, text_encoder_2/, tokenizer/, tokenizer_2/, scheduler/; about 11 MB) that
`mgm.serve.imagegen.load_pipeline(DIR)` loads like the real SDXL base. The component sizes follow
diffusers' own SDXL test configuration: UNet with block channels (32, 64) and "text_time" added
conditioning (6 × 8 time ids + a 32-wide pooled text embedding = 80), cross-attention over the two
32-wide CLIP text encoders (64), a 2-level VAE (so the default image is 32 × 2 = 64 px), an Euler
scheduler, and a byte-level CLIP BPE tokenizer written here (no download). Weights are random.

Python: `build_tiny_sdxl(out_dir, seed=0) -> Path`.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from mgm.errors import UserError, exit_on_user_error

# A few merges so the BPE is a real one (pairs and their results are added to the vocabulary).
_MERGES = [("t", "h"), ("th", "e</w>"), ("a", "n"), ("i", "n"), ("o", "n</w>"), ("e", "r"), ("a", "t"),
           ("r", "e"), ("o", "r"), ("e", "n")]
_VOCAB_SIZE = 1000  # text-encoder vocabulary (the tokenizer uses the first ~530 ids)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte → printable character table (256 entries)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = keep[:]
    n = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + n)
            n += 1
    return dict(zip(keep, (chr(c) for c in chars)))


def write_clip_bpe_files(folder: Path) -> None:
    """vocab.json + merges.txt of a small byte-level CLIP BPE tokenizer."""
    symbols = list(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for s in symbols:
        vocab[s] = len(vocab)
    for s in symbols:
        vocab[s + "</w>"] = len(vocab)
    for a, b in _MERGES:
        vocab.setdefault(a + b, len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in _MERGES))


def build_tiny_sdxl(out_dir: str | Path, seed: int = 0) -> Path:
    """Write the tiny SDXL pipeline folder to `out_dir` and return its path (absolute)."""
    try:
        import torch
        from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
        from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer
    except ImportError:
        raise UserError('building the tiny SDXL pipeline needs diffusers: pip install "mgm[gen]"') from None
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 1),
        projection_class_embeddings_input_dim=80,  # 6 time ids x 8 + the 32-wide pooled text embedding
        cross_attention_dim=64, norm_num_groups=1)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, steps_offset=1,
                                       beta_schedule="scaled_linear", timestep_spacing="leading")
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(block_out_channels=[32, 64], in_channels=3, out_channels=3,
                        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                        latent_channels=4, sample_size=128, norm_num_groups=32)
    text_config = CLIPTextConfig(bos_token_id=0, eos_token_id=2, hidden_size=32, intermediate_size=37,
                                 layer_norm_eps=1e-05, num_attention_heads=4, num_hidden_layers=2, pad_token_id=1,
                                 vocab_size=_VOCAB_SIZE, hidden_act="gelu", projection_dim=32)
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(text_config)
    torch.manual_seed(seed + 3)
    text_encoder_2 = CLIPTextModelWithProjection(text_config)
    with tempfile.TemporaryDirectory() as tmp:
        write_clip_bpe_files(Path(tmp))
        # from_pretrained reads vocab.json/merges.txt (constructor file kwargs are ignored by transformers 5)
        tokenizer = CLIPTokenizer.from_pretrained(tmp, model_max_length=77)
        tokenizer_2 = CLIPTokenizer.from_pretrained(tmp, model_max_length=77)
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                     tokenizer=tokenizer, tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler)
    out.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(out, safe_serialization=True)
    return out.resolve()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mgm.zoo.sdxl",
                                     description="Write a tiny random SDXL pipeline folder (for testing --gen offline).")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="folder to write (created)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    return parser


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    path = build_tiny_sdxl(args.out, args.seed)
    print(f"tiny SDXL pipeline written to {path}", file=sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
