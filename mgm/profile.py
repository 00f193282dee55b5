"""`ModelProfile`: every fact a front end needs about a loaded checkpoint, decided once where it is loaded.

A profile is resolved by `load_pretrained_model` (from the model it built), by the vLLM engine and by
`MGMProcessor.from_checkpoint` (from the checkpoint folder, no weights read); the CLI, the workers,
the eval runners and `mgm eval`, the harness and its toolkit adapters, export and the processor read
it and re-derive nothing. It holds:

- the conversation template: an explicit choice, else what the checkpoint records (`conv_template` in
  config.json), else the legacy rule of `mgm.template_choice`; always a known template name;
- the stop strings (the template's) and the end-of-sequence ids (the tokenizer's, the generation
  config's, and each stop string that is one vocabulary entry, e.g. `<|eot_id|>`, `<|im_end|>`);
- the pad id (the tokenizer's, else the first end-of-sequence id, else 0);
- the context limit (`max_position_embeddings`, else `max_sequence_length`, else 2048; a serving engine
  may set a smaller one);
- tokens per image (P² (+1 with `cls_patch`) per LR view, times the views: g² crops + the global view);
- the image tag put before a question per image, and the multi-image form: two or more `<image>` tags
  in one turn become `Image 1:<image>`, `Image 2:<image>`, ... (the original CLI's form);
- the tokenizer and image processor, the one text decoder (`decode`) and one image preprocessing.

It is frozen: `with_template(name)` returns a new profile whose stop strings and ids follow `name`.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from mgm.constants import DEFAULT_IM_END_TOKEN, DEFAULT_IM_START_TOKEN, DEFAULT_IMAGE_TOKEN
from mgm.errors import UserError

# Context limit when the config states neither max_position_embeddings nor max_sequence_length.
DEFAULT_CONTEXT_LIMIT = 2048
# pad id when the tokenizer has no pad token and no end-of-sequence id is known either.
FALLBACK_PAD_ID = 0
# The config key a checkpoint records its conversation template under.
TEMPLATE_KEY = "conv_template"  # = mgm.chat_template_conversation.CONFIG_NAME_KEY, what training records


def _ids(value: Any) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]


def _config_get(config: Any, key: str) -> Any:
    return config.get(key) if isinstance(config, dict) else getattr(config, key, None)


@dataclasses.dataclass(frozen=True)
class ModelProfile:
    """What every front end reads about one loaded checkpoint (see the module docstring)."""

    template: str
    inferred_template: str  # what the checkpoint implies without an explicit choice
    stop_strings: tuple[str, ...]
    eos_ids: tuple[int, ...]
    model_eos_ids: tuple[int, ...]  # the tokenizer's and the generation config's, before the template's
    pad_id: int
    context_limit: int
    tokens_per_image: int
    image_prefix: str  # put before the question once per image
    tokenizer: Any = dataclasses.field(compare=False, repr=False)
    image_processor: Any = dataclasses.field(default=None, compare=False, repr=False)
    chat_template: str | None = dataclasses.field(default=None, compare=False, repr=False)  # recorded Jinja

    def __deepcopy__(self, memo: dict) -> ModelProfile:
        return self  # immutable; copying a processor that holds it must not copy its tokenizer

    # -- facts ----------------------------------------------------------------------------------------
    def facts(self) -> dict[str, Any]:
        """The comparable facts: template, stop strings, EOS ids, pad id, context limit, tokens per image."""
        return {"template": self.template, "stop_strings": list(self.stop_strings), "eos_ids": list(self.eos_ids),
                "pad_id": self.pad_id, "context_limit": self.context_limit,
                "tokens_per_image": self.tokens_per_image}

    def with_template(self, name: str | None) -> ModelProfile:
        """This profile with template `name` (None: unchanged); UserError for an unknown name."""
        if name is None or name == self.template:
            return self
        stops = template_stop_strings(name, self.tokenizer, self.chat_template)
        eos = eos_ids_for(self.tokenizer, self.model_eos_ids, stops)
        return dataclasses.replace(self, template=name, stop_strings=stops, eos_ids=eos,
                                   pad_id=pad_id_for(self.tokenizer, eos))

    def with_context_limit(self, limit: int) -> ModelProfile:
        """This profile with a smaller context (a serving engine's own maximum length)."""
        return dataclasses.replace(self, context_limit=int(limit))

    # -- prompts --------------------------------------------------------------------------------------
    def conversation(self):
        """A private copy of this profile's conversation template (`chat_template`: the LLM's own Jinja)."""
        return conversation_named(self.template, self.tokenizer, self.chat_template)

    def place_images(self, text: str, n_images: int) -> str:
        """`text` with its images placed: one `image_prefix` per image in front when it has no `<image>`
        tag; then, with two or more tags, the k-th becomes `Image k:<image>`."""
        tags = text.count(DEFAULT_IMAGE_TOKEN)
        if tags == 0 and n_images:
            text = self.image_prefix * n_images + text
        elif tags != n_images:
            raise UserError(f"the text has {tags} {DEFAULT_IMAGE_TOKEN} tags but {n_images} images were given")
        return number_images(text)

    def prompt(self, text: str, n_images: int = 0) -> str:
        """One user turn (images placed as `place_images` does) and the open assistant turn."""
        conv = self.conversation()
        conv.append_message(conv.roles[0], self.place_images(text, n_images))
        conv.append_message(conv.roles[1], None)
        return conv.get_prompt()

    # -- text -----------------------------------------------------------------------------------------
    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """The text of generated ids (image placeholders, i.e. negative ids, dropped)."""
        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
        return self.tokenizer.decode([int(i) for i in ids if int(i) >= 0], skip_special_tokens=skip_special_tokens)


def number_images(text: str) -> str:
    """Two or more `<image>` tags: the k-th becomes `Image k:<image>` (1-based); else `text` unchanged."""
    parts = text.split(DEFAULT_IMAGE_TOKEN)
    if len(parts) < 3:
        return text
    return parts[0] + "".join(f"Image {k}:{DEFAULT_IMAGE_TOKEN}{rest}" for k, rest in enumerate(parts[1:], 1))


def conversation_named(name: str, tokenizer: Any = None, chat_template: str | None = None):
    """An editable conversation of template `name` (UserError listing the valid names when unknown);
    `chat_template` renders with the recorded Jinja text, else the tokenizer's own."""
    from mgm.chat_template_conversation import CONFIG_JINJA_KEY, conversation_for

    return conversation_for(name, tokenizer, {CONFIG_JINJA_KEY: chat_template} if chat_template else None)


def template_stop_strings(name: str, tokenizer: Any = None, chat_template: str | None = None) -> tuple[str, ...]:
    """The stop strings of template `name` (UserError listing the valid names when unknown)."""
    return tuple(conversation_named(name, tokenizer, chat_template).stop_strings())


def single_token_id(tokenizer: Any, token: str) -> int | None:
    """The id of `token` when it is one vocabulary entry (not the unknown token), else None."""
    token_id = tokenizer.convert_tokens_to_ids(token)
    if isinstance(token_id, int) and token_id != tokenizer.unk_token_id:
        return token_id
    return None


def eos_ids_for(tokenizer: Any, model_eos: Sequence[int], stops: Iterable[str]) -> tuple[int, ...]:
    """`model_eos` followed by the id of each stop string that is a single vocabulary entry."""
    out = list(model_eos)
    for stop in stops:
        token_id = single_token_id(tokenizer, stop)
        if token_id is not None and token_id not in out:
            out.append(token_id)
    return tuple(out)


def pad_id_for(tokenizer: Any, eos_ids: Sequence[int]) -> int:
    """The tokenizer's pad id, else the first end-of-sequence id, else FALLBACK_PAD_ID."""
    if tokenizer.pad_token_id is not None:
        return int(tokenizer.pad_token_id)
    return int(eos_ids[0]) if eos_ids else FALLBACK_PAD_ID


def context_limit_of(config: Any) -> int:
    """The model's position limit: max_position_embeddings, else max_sequence_length, else the default."""
    return int(_config_get(config, "max_position_embeddings") or _config_get(config, "max_sequence_length")
               or DEFAULT_CONTEXT_LIMIT)


def tokens_per_image(config: Any, clip_config: Any) -> int:
    """Visual tokens of one image: P² per LR view (+1 with `cls_patch`) times g² crops (+ the global view).

    0 for a model without a vision tower; `clip_config` is its CLIP tower's config (image/patch size).
    """
    from mgm.model.settings import MGMSettings
    from mgm.model.vision_encoder import tokens_per_view

    settings = MGMSettings.from_config(config)
    if not settings.vision_tower or clip_config is None:
        return 0
    return tokens_per_view(clip_config, settings) * settings.num_views


def image_prefix_of(config: Any) -> str:
    """What goes before a question per image: `<image>\\n`, or wrapped in start/end tags when the model uses them."""
    if _config_get(config, "mm_use_im_start_end"):
        return DEFAULT_IM_START_TOKEN + DEFAULT_IMAGE_TOKEN + DEFAULT_IM_END_TOKEN + "\n"
    return DEFAULT_IMAGE_TOKEN + "\n"


def choose_template(config: Any, tokenizer: Any, explicit: str | None = None) -> tuple[str, str]:
    """(template, inferred): the explicit choice, else the checkpoint's `conv_template`, else the legacy rule.

    Every name is checked against the known templates (UserError listing them).
    """
    from mgm.chat_template_conversation import CHAT_TEMPLATE
    from mgm.conversation import get_template
    from mgm.template_choice import resolve_template

    recorded = _config_get(config, TEMPLATE_KEY)
    inferred = recorded or resolve_template(config, tokenizer)
    for name in (inferred, explicit):
        if name is not None and name != CHAT_TEMPLATE:
            get_template(name)  # UserError listing the valid names
    return explicit or inferred, inferred


def resolve_profile(config: Any, tokenizer: Any, *, clip_config: Any = None, generation_eos: Any = None,
                    image_processor: Any = None, template: str | None = None,
                    context_limit: int | None = None, image_tokens: int | None = None) -> ModelProfile:
    """The profile of a checkpoint from its config, tokenizer, CLIP tower config and generation config.

    generation_eos: `generation_config.eos_token_id` (int, list or None); context_limit: a smaller
    limit than the model's (a serving engine's), else the config's.
    """
    chosen, inferred = choose_template(config, tokenizer, template)
    model_eos = _ids(tokenizer.eos_token_id)
    for extra in _ids(generation_eos):
        if extra not in model_eos:
            model_eos.append(extra)
    from mgm.chat_template_conversation import CONFIG_JINJA_KEY

    jinja = _config_get(config, CONFIG_JINJA_KEY)
    stops = template_stop_strings(chosen, tokenizer, jinja)
    eos = eos_ids_for(tokenizer, model_eos, stops)
    return ModelProfile(
        template=chosen, inferred_template=inferred, stop_strings=stops, eos_ids=eos, model_eos_ids=tuple(model_eos),
        pad_id=pad_id_for(tokenizer, eos),
        context_limit=int(context_limit) if context_limit else context_limit_of(config),
        tokens_per_image=image_tokens if image_tokens is not None else tokens_per_image(config, clip_config),
        image_prefix=image_prefix_of(config),
        tokenizer=tokenizer, image_processor=image_processor, chat_template=jinja)


def profile_for_model(model: Any, tokenizer: Any, image_processor: Any = None,
                      template: str | None = None) -> ModelProfile:
    """The profile of a model built in this process (its tower's config, its generation config)."""
    tower = model.get_vision_tower() if hasattr(model, "get_vision_tower") else None
    # the live encoder's count: its settings are the model's (a caller may switch them, e.g. to HD views)
    encoder = getattr(model.get_model(), "vision_encoder", None) if hasattr(model, "get_model") else None
    return resolve_profile(model.config, tokenizer, clip_config=getattr(tower, "config", None),
                           generation_eos=getattr(getattr(model, "generation_config", None), "eos_token_id", None),
                           image_processor=image_processor, template=template,
                           image_tokens=encoder.tokens_per_image if encoder is not None else None)


def profile_for_checkpoint(folder: str | Path, config: Any, tokenizer: Any, image_processor: Any = None,
                           template: str | None = None, context_limit: int | None = None) -> ModelProfile:
    """The profile of a checkpoint folder without loading its weights (the processor and vLLM paths)."""
    import json

    from mgm.model.settings import MGMSettings
    from mgm.model.vision.kinds import lr_kind, lr_vision_config
    from mgm.model.vision.registry import clip_config_from, resolve_tower_path

    settings = MGMSettings.from_config(config)
    clip = None
    if settings.vision_tower:
        tower_dir = resolve_tower_path(settings.vision_tower, str(folder))
        kind = lr_kind(tower_dir)  # CLIP or SigLIP, from the folder's config.json
        clip = (lr_vision_config(tower_dir, kind) if kind in ("siglip", "siglip2")
                else clip_config_from(tower_dir, settings.vision_tower))
    # as transformers does: generation_config.json when the folder has one, else the config's own eos
    gen_file = Path(folder) / "generation_config.json"
    generation_eos = (json.loads(gen_file.read_text()).get("eos_token_id") if gen_file.is_file()
                      else _config_get(config, "eos_token_id"))
    return resolve_profile(config, tokenizer, clip_config=clip, generation_eos=generation_eos,
                           image_processor=image_processor, template=template, context_limit=context_limit)


def profile_of(model: Any) -> ModelProfile:
    """The profile `load_pretrained_model` resolved for `model` (UserError for a model it did not load)."""
    profile = getattr(model, "mgm_profile", None)
    if profile is None:
        raise UserError("this model has no ModelProfile: load it with mgm.model.builder.load_pretrained_model")
    return profile


def checkpoint_profile(folder: str | Path, template: str | None = None) -> ModelProfile:
    """The profile of a checkpoint folder from its config.json and tokenizer alone (no weights, no images)."""
    import json

    from mgm.model.families import classes_for_model_type, family_for_llm
    from mgm.model.sentencepiece_decode import load_tokenizer

    folder = Path(folder).expanduser()
    config_file = folder / "config.json"
    try:
        model_type = json.loads(config_file.read_text()).get("model_type")
    except (OSError, json.JSONDecodeError):
        raise UserError(f"{config_file} is missing or not JSON: not an MGM checkpoint folder") from None
    config = classes_for_model_type(model_type or "")[0].from_pretrained(str(folder))
    tokenizer = load_tokenizer(folder, family_for_llm(config.model_type).key)
    return profile_for_checkpoint(folder, config, tokenizer, template=template)
