"""Interactive (or piped) multi-turn chat with an MGM checkpoint: `python -m mgm.serve.cli` (docs/original.md#serving).

Type questions after the prompt; an empty line or end of input exits. Questions may also be piped on
standard input, one per line, for scripting (it must be UTF-8 text). The template comes from the model's
config; `--conv-mode` overrides it. Flags are checked before the model loads.
"""
from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path

from mgm.constants import DEFAULT_IMAGE_TOKEN
from mgm.errors import UserError, exit_on_user_error
from mgm.program import program_name
from mgm.serve.ocr import BACKENDS as OCR_BACKENDS
from mgm.serve.protocol import MAX_TEMPERATURE


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=program_name("python -m mgm.serve.cli"), description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-path", required=True, help="MGM checkpoint folder (config.json + weights)")
    p.add_argument("--model-base", default=None, help="base LLM for projector-only or LoRA folders")
    p.add_argument("--image-file", default=None, help="image path(s), comma-separated for several images")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N or mps")
    p.add_argument("--conv-mode", default=None, help="prompt template (default: chosen from the model config)")
    p.add_argument("--temperature", type=float, default=0.2,
                   help=f"0 = greedy, up to {MAX_TEMPERATURE:g} (default 0.2)")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling, in (0, 1] (default: none)")
    p.add_argument("--max-new-tokens", type=int, default=512, help="most tokens per answer, >= 1 (default 512)")
    p.add_argument("--load-8bit", action="store_true", help="quantise the LLM to 8 bit (bitsandbytes)")
    p.add_argument("--load-4bit", action="store_true", help="quantise the LLM to 4 bit (bitsandbytes)")
    p.add_argument("--quantization", choices=("int8", "int4"), default=None,
                   help="weight-only LLM quantisation on the CPU, PyTorch's own kernels (mgm.model.quantize): int8 (per channel) or int4 (groups of 128); towers and mining stay in the compute dtype. GPU: --load-8bit/--load-4bit")
    p.add_argument("--use-flash-attn", action="store_true")
    p.add_argument("--allow-remote-images", action="store_true", help="allow http(s) URLs in --image-file")
    p.add_argument("--ocr", action="store_true", help="add text read from the image(s) to the first question")
    p.add_argument("--ocr-backend", default="auto", choices=OCR_BACKENDS,
                   help="OCR engine for --ocr (default auto: PaddleOCR with local model folders if configured, "
                        "else rapidocr)")
    p.add_argument("--gen", action="store_true", help="reasoning-driven image generation from <h>...</h>")
    p.add_argument("--gen-model-path", default="stabilityai/stable-diffusion-xl-base-1.0",
                   help="diffusers text-to-image pipeline (folder or hub id) for --gen")
    p.add_argument("--output-file", default="generate.png", help="where --gen saves the image")
    p.add_argument("--seed", type=int, default=None, help="random seed for sampling")
    p.add_argument("--debug", action="store_true", help="print the prompt and raw output of every turn")
    p.add_argument("--image-cache-mb", type=int, default=256,
                   help="image features kept by content between turns (MiB; 0 = off; default 256)")
    p.add_argument("--prefix-cache-mb", type=int, default=1024,
                   help="KV of the conversation so far kept between turns, so a turn prefills only its new "
                        "message (MiB; default 1024)")
    p.add_argument("--no-prefix-cache", action="store_true", help="re-prefill the whole conversation every turn")
    return p


def check_args(args: argparse.Namespace) -> None:
    """UserError naming the flag for values generation would fail on (or silently misuse) later."""
    if args.load_8bit and args.load_4bit:
        raise UserError("--load-8bit and --load-4bit are mutually exclusive")
    for flag, value in (("--image-cache-mb", args.image_cache_mb), ("--prefix-cache-mb", args.prefix_cache_mb)):
        if value < 0:
            raise UserError(f"{flag} must be >= 0 (0 = off), got {value}")
    if args.max_new_tokens < 1:
        raise UserError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if not 0 <= args.temperature <= MAX_TEMPERATURE:
        raise UserError(f"--temperature must be between 0 (greedy) and {MAX_TEMPERATURE:g}, got {args.temperature:g}")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise UserError(f"--top-p must be in (0, 1], got {args.top_p:g}")
    for source in (args.image_file or "").split(","):
        source = source.strip()
        if source and not source.startswith(("http://", "https://")) and Path(source).is_dir():
            raise UserError(f"--image-file {source} is a directory; give image files (comma-separated)")
        if source and not source.startswith(("http://", "https://")) and Path(source).exists() \
                and not Path(source).is_file():
            raise UserError(f"--image-file {source} is not a regular file (a device, pipe or socket); give an "
                            "image file")


def _read_line(prompt: str, interactive: bool) -> str | None:
    """One line of input (None at the end); UserError when it is not UTF-8 text."""
    try:
        line = input(prompt) if interactive else sys.stdin.readline()
    except EOFError:
        return None
    except UnicodeDecodeError as exc:  # a strict stdin decoder
        raise UserError(f"standard input is not UTF-8 text (byte {exc.start} of a line: {exc.reason})") from None
    try:
        # Python decodes stdin with surrogateescape under a C/POSIX locale: undecodable bytes become lone
        # surrogates, which the tokenizer refuses with a TypeError
        line.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise UserError(f"standard input is not UTF-8 text (character {exc.start} of the line is an undecodable "
                        f"byte); convert it, e.g. iconv -t UTF-8") from None
    return line


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_args(args)

    import torch

    from mgm.data.image import open_image
    from mgm.model_name import get_model_name_from_path
    from mgm.inference.engine import InferenceEngine
    from mgm.inference.requests import GenerationParams, Request
    from mgm.model.builder import load_pretrained_model
    from mgm.profile import profile_of

    images = []
    if args.image_file:
        images = [open_image(p.strip(), allow_remote=args.allow_remote_images)
                  for p in args.image_file.split(",") if p.strip()]
    ocr_text = None
    if args.ocr:
        if not images:
            raise UserError("--ocr needs --image-file")
        from mgm.serve.ocr import build_ocr

        ocr = build_ocr(args.ocr_backend, args.device)
        ocr_text = ", ".join(ocr.read(image) for image in images)
        print(f"OCR Token: {ocr_text}")
    pipe = None
    if args.gen:
        from mgm.serve.imagegen import load_pipeline

        pipe = load_pipeline(args.gen_model_path, device=args.device)

    if args.seed is not None:
        torch.manual_seed(args.seed)
    tokenizer, model, processor, context_len = load_pretrained_model(
        args.model_path, args.model_base, get_model_name_from_path(args.model_path), args.load_8bit,
        args.load_4bit, device=args.device, use_flash_attn=args.use_flash_attn, quantization=args.quantization)
    if images and model.get_vision_tower() is None:
        raise UserError(f"{args.model_path} has no vision tower; run without --image-file")

    profile = profile_of(model).with_template(args.conv_mode)  # an unknown name: UserError listing the valid ones
    if args.conv_mode and args.conv_mode != profile.inferred_template:
        print(f"[WARNING] the auto inferred conversation mode is {profile.inferred_template}, while `--conv-mode` "
              f"is {args.conv_mode}, using {args.conv_mode}", file=sys.stderr)
    conv = profile.conversation()  # chat_template: the checkpoint's recorded Jinja
    engine = InferenceEngine(tokenizer, model, processor, context_len, profile=profile)
    prefix_mb = 0 if args.no_prefix_cache else args.prefix_cache_mb
    if args.image_cache_mb or prefix_mb:  # the conversation's features and KV, kept between turns
        engine.use_caches(args.image_cache_mb << 20, prefix_mb << 20)
    params = GenerationParams(temperature=args.temperature, top_p=args.top_p,
                              max_new_tokens=args.max_new_tokens, stop=list(profile.stop_strings))

    interactive = sys.stdin.isatty()
    user_role, assistant_role = conv.roles
    first = True
    while True:
        try:
            line = _read_line(f"{user_role}: ", interactive)
        except KeyboardInterrupt:  # Ctrl-C at the prompt: leave, without a traceback
            print("\nexit...")
            return 0
        if line is None or not line.strip():
            print("exit...")
            return 0
        text = line.strip()
        if DEFAULT_IMAGE_TOKEN in text:  # the tag is the images' place holder, never the user's text
            print(f"[the text may not contain {DEFAULT_IMAGE_TOKEN}: images come from --image-file; "
                  "ask again without it]", file=sys.stderr)
            continue
        if ocr_text is not None and first:
            text += "\nReference OCR Token: " + ocr_text + "\n"
        if pipe is not None:
            text += " <GEN>"
        if first and images:
            text = profile.place_images(text, len(images))
        turn_was_first, first = first, False
        conv.append_message(conv.roles[0], text)
        conv.append_message(conv.roles[1], None)
        prompt = conv.get_prompt()
        print(f"{assistant_role}: ", end="", flush=True)
        pieces = []
        try:
            for piece in engine.stream(Request(prompt, images, params), cancel=threading.Event()):
                print(piece, end="", flush=True)
                pieces.append(piece)
        except KeyboardInterrupt:  # Ctrl-C while answering: stop this answer, keep the conversation
            print("\n[answer interrupted; the conversation goes on, an empty line or Ctrl-D exits]", flush=True)
        except UserError as exc:  # e.g. the conversation no longer fits the context: this turn only
            print(f"\n[error: {exc}]", file=sys.stderr, flush=True)
            del conv.messages[-2:]
            first = turn_was_first  # the images and OCR text go with the next question instead
            continue
        print()
        answer = "".join(pieces).strip()
        conv.messages[-1][-1] = answer
        if args.debug:
            print({"prompt": prompt, "outputs": answer})
        if pipe is not None and "<h>" in answer and "</h>" in answer:
            from mgm.serve.imagegen import generate_image, hidden_prompt

            generate_image(pipe, hidden_prompt(answer, last=True)).save(args.output_file)
            print(f"Generate an image, save at {args.output_file}")


if __name__ == "__main__":
    sys.exit(main())
