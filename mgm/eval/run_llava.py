"""`python -m mgm.eval.run_llava`: answer one query about one or more images (the original's names).

Flags as the original: --model-path --model-base --image-file (several joined by --sep, default ",")
--query --conv-mode --sep --temperature 0.2 --top_p --num_beams 1 --max_new_tokens 512; plus --device
(default auto). An `<image-placeholder>` in the query marks where the image goes, else it is put first.
The template comes from the model config unless --conv-mode is given. Prints the answer.
"""
from __future__ import annotations

import argparse
import re

from mgm.constants import DEFAULT_IM_END_TOKEN, DEFAULT_IM_START_TOKEN, DEFAULT_IMAGE_TOKEN, IMAGE_PLACEHOLDER
from mgm.errors import exit_on_user_error


def image_parser(args) -> list[str]:
    return args.image_file.split(args.sep)


def load_image(image_file: str):
    """RGB PIL image from a path or an http(s) URL."""
    from mgm.data.image import open_image  # loads torch: not for `--help`

    return open_image(image_file, allow_remote=True).convert("RGB")


def load_images(image_files: list[str]) -> list:
    return [load_image(f) for f in image_files]


def eval_model(args) -> str:
    """Load the model, answer `args.query` about `args.image_file`, print and return the answer."""
    from mgm.inference.engine import InferenceEngine
    from mgm.inference.requests import GenerationParams, Request
    from mgm.model_name import get_model_name_from_path
    from mgm.model.builder import load_pretrained_model
    from mgm.profile import profile_of

    tokenizer, model, processor, context_len = load_pretrained_model(
        args.model_path, args.model_base, get_model_name_from_path(args.model_path),
        device=getattr(args, "device", "auto"))
    image_token = (DEFAULT_IM_START_TOKEN + DEFAULT_IMAGE_TOKEN + DEFAULT_IM_END_TOKEN
                   if model.config.mm_use_im_start_end else DEFAULT_IMAGE_TOKEN)
    qs = args.query
    qs = re.sub(IMAGE_PLACEHOLDER, image_token, qs) if IMAGE_PLACEHOLDER in qs else image_token + "\n" + qs
    profile = profile_of(model).with_template(args.conv_mode)
    conv = profile.conversation()
    conv.append_message(conv.roles[0], qs)
    conv.append_message(conv.roles[1], None)
    params = GenerationParams(temperature=args.temperature, top_p=args.top_p, num_beams=args.num_beams,
                              max_new_tokens=args.max_new_tokens)
    engine = InferenceEngine(tokenizer, model, processor, context_len, profile=profile)
    answer = engine.generate([Request(conv.get_prompt(), load_images(image_parser(args)), params)])[0].strip()
    print(answer)
    return answer


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mgm.eval.run_llava", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-path", required=True)
    p.add_argument("--model-base", default=None)
    p.add_argument("--image-file", required=True)
    p.add_argument("--query", required=True)
    p.add_argument("--conv-mode", default=None)
    p.add_argument("--sep", default=",")
    p.add_argument("--temperature", type=float, default=0.2)
    p.add_argument("--top_p", type=float, default=None)
    p.add_argument("--num_beams", type=int, default=1)
    p.add_argument("--max_new_tokens", type=int, default=512)
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N or mps")
    return p


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    eval_model(build_parser().parse_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
