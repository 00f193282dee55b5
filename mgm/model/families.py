"""LLM families as rows of data: each row makes an MGM config class, inner model class and causal-LM class.

Rows say only what cannot be derived: the released checkpoints' names, ZeRO-3 leaf modules, template
defaults, real deviations. Any other decoder-only LLM that `AutoModelForCausalLM` builds gets a row
derived from transformers' own tables (`derived_family`): base `model_type` X becomes MGM model type
`mgm_X`, wrapping X's config, inner model and causal-LM classes; its ZeRO-3 leaves are read off the
built model (`moe_leaf_types`: modules holding `experts`).

The classes keep the original names (`MGMLlamaForCausalLM`, ... and the pre-rename `MiniGemini*`
ones) and `model_type` strings, subclass the family's HF classes so the original state-dict keys
(`model.layers…`, `model.mm_projector…`, `lm_head…`) load with no remapping, and get all MGM
behaviour from the mixins in `mgm.model.arch`.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    GemmaConfig,
    GemmaForCausalLM,
    GemmaModel,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaModel,
    MistralConfig,
    MistralForCausalLM,
    MistralModel,
    MixtralConfig,
    MixtralForCausalLM,
    MixtralModel,
)

from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

from mgm.errors import UserError
from mgm.model.arch import MGMMetaForCausalLM, MGMMetaModel


@dataclass(frozen=True)
class Family:
    """One LLM family: its HF classes and the names MGM registered it under."""

    key: str
    config_base: type
    model_base: type
    causal_base: type
    model_type: str
    class_stem: str  # "Llama" -> MGMLlamaForCausalLM
    legacy_model_type: str
    config_name: str
    # Training facts: modules ZeRO-3 must gather as one leaf (a MoE block whose experts run data-dependently,
    # so hooks per expert would deadlock ranks that route differently).
    zero3_leaf_modules: tuple[type, ...] = ()
    # Conversation template the family's released checkpoints use; None = decided from the tokenizer's
    # vocabulary (the Llama family spans Vicuna, LLaMA-3 and Yi: `mgm.conversation.template_for_model_config`).
    default_template: str | None = None


FAMILIES: tuple[Family, ...] = (
    Family("llama", LlamaConfig, LlamaModel, LlamaForCausalLM, "mgm", "Llama", "mini_gemini", "MGMConfig"),
    Family("gemma", GemmaConfig, GemmaModel, GemmaForCausalLM, "mgm_gemma", "Gemma", "mini_gemini_gemma", "MGMGemmaConfig",
           default_template="gemma"),
    Family("mistral", MistralConfig, MistralModel, MistralForCausalLM, "mgm_mistral", "Mistral", "mini_gemini_mistral",
           "MGMMistralConfig", default_template="mistral_instruct"),
    Family("mixtral", MixtralConfig, MixtralModel, MixtralForCausalLM, "mgm_mixtral", "Mixtral", "mini_gemini_mixtral",
           "MGMMixtralConfig", zero3_leaf_modules=(MixtralSparseMoeBlock,), default_template="mistral_instruct"),
)


def _make_config(name: str, base: type, model_type: str) -> type:
    def post_init(self, **kwargs):
        # Released Gemma MGM configs say `hidden_act: "gelu"` with no `hidden_activation`; the original
        # ran them with the exact (erf) GELU, which newer GemmaConfig rewrites to the tanh form. Keep the
        # exact one unless the config names `hidden_activation` explicitly (docs/original.md#transformers-5).
        act = getattr(self, "hidden_act", None)
        explicit = getattr(self, "hidden_activation", None)
        if act == "gelu":
            self.hidden_act = "_mgm_exact_gelu"
        base.__post_init__(self, **kwargs)
        if self.hidden_act == "_mgm_exact_gelu":
            self.hidden_act = "gelu"
        if explicit:
            self.hidden_act = explicit

    return type(name, (base,), {"model_type": model_type, "__post_init__": post_init, "__module__": __name__})


def _make_classes(family: Family, prefix: str, model_type: str, config_name: str) -> tuple[type, type, type]:
    if family.legacy_model_type == family.model_type:  # a derived row: the base config as it is
        config_cls = type(config_name, (family.config_base,), {"model_type": model_type, "__module__": __name__})
    else:
        config_cls = _make_config(config_name, family.config_base, model_type)

    def model_init(self, config, vision_tower_path=None, vision_tower_aux_path=None):
        family.model_base.__init__(self, config)
        self.init_multimodal(config, vision_tower_path, vision_tower_aux_path)

    model_cls = type(f"{prefix}{family.class_stem}Model", (MGMMetaModel, family.model_base), {
        "config_class": config_cls, "__init__": model_init, "__module__": __name__})

    def causal_init(self, config, vision_tower_path=None, vision_tower_aux_path=None, **kwargs):
        # The parent builds the family's lm_head and attributes; its plain inner model is replaced.
        family.causal_base.__init__(self, config)
        self.model = model_cls(config, vision_tower_path, vision_tower_aux_path)
        self.post_init()

    causal_cls = type(f"{prefix}{family.class_stem}ForCausalLM", (MGMMetaForCausalLM, family.causal_base), {
        "config_class": config_cls, "__init__": causal_init, "__module__": __name__})
    return config_cls, model_cls, causal_cls


@cache
def _row_classes(fam: Family) -> dict[str, tuple[type, type, type]]:
    """The classes of one row, built once per row (so a row added later leaves the others' classes alone)."""
    out = {fam.model_type: _make_classes(fam, "MGM", fam.model_type, fam.config_name)}
    if fam.legacy_model_type != fam.model_type:  # derived rows have no pre-rename names
        legacy_config = fam.config_name.replace("MGM", "MiniGemini")
        out[fam.legacy_model_type] = _make_classes(fam, "MiniGemini", fam.legacy_model_type, legacy_config)
    return out


DERIVED_PREFIX = "mgm_"


@cache
def derived_family(model_type: str) -> Family | None:
    """The row of a base LLM without a table row, from transformers' Auto tables (None when there is none).

    `model_type` may be the base type (`qwen3`) or its MGM type (`mgm_qwen3`). Only decoder-only causal
    LMs whose causal-LM class holds the inner model as `.model` qualify (the MGM mixins live there).
    """
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING, MODEL_MAPPING

    if any(model_type in (f.config_base.model_type, f.model_type, f.legacy_model_type) for f in FAMILIES):
        return None
    base_type = model_type[len(DERIVED_PREFIX):] if model_type.startswith(DERIVED_PREFIX) else model_type
    if not base_type or base_type.startswith(DERIVED_PREFIX) or base_type not in CONFIG_MAPPING:
        return None
    config_base = CONFIG_MAPPING[base_type]
    causal_base = MODEL_FOR_CAUSAL_LM_MAPPING.get(config_base, None)
    model_base = MODEL_MAPPING.get(config_base, None)
    if causal_base is None or model_base is None or getattr(causal_base, "base_model_prefix", None) != "model" \
            or getattr(config_base, "is_encoder_decoder", False):
        return None
    stem = causal_base.__name__.removesuffix("ForCausalLM")
    mgm_type = DERIVED_PREFIX + base_type
    return Family(base_type, config_base, model_base, causal_base, mgm_type, stem, mgm_type, f"MGM{stem}Config")


def moe_leaf_types(model) -> tuple[type, ...]:
    """Types of the modules of `model` that route tokens to an `experts` sub-module: ZeRO-3 must gather
    each as one leaf (experts run data-dependently, so per-expert hooks would deadlock ranks)."""
    from torch import nn

    return tuple(dict.fromkeys(type(m) for m in model.modules()
                               if isinstance(getattr(m, "experts", None), nn.Module)))


def any_family(model_type: str) -> Family | None:
    """The table row or derived row for a base or MGM `model_type`; None if neither exists."""
    for fam in FAMILIES:
        if model_type in (fam.config_base.model_type, fam.model_type, fam.legacy_model_type):
            return fam
    return derived_family(model_type)


@cache
def family_classes() -> dict[str, tuple[type, type, type]]:
    """model_type -> (config class, inner model class, causal LM class), current and legacy names."""
    out: dict[str, tuple[type, type, type]] = {}
    for fam in FAMILIES:
        out.update(_row_classes(fam))
    return out


def register_conversion(fam: Family) -> None:
    """Give the row's MGM model types the checkpoint conversion of its base (idempotent)."""
    from transformers import conversion_mapping as cm

    mapping = cm.get_checkpoint_conversion_mapping(fam.config_base.model_type)
    for transform in mapping or []:
        # Only the decoder layers: a bare ".mlp." rename would also hit the CLIP tower's keys.
        transform.scope_prefix, transform.base_model_prefix = "layers", "model"
    for model_type in (fam.model_type, fam.legacy_model_type):
        if mapping is not None and cm.get_checkpoint_conversion_mapping(model_type) is None:
            cm.register_checkpoint_conversion_mapping(model_type, mapping)


# Derived rows whose classes were built in this process (pickle finds generated classes by name).
_DERIVED_BUILT: dict[str, Family] = {}


def register_derived(fam: Family) -> tuple[type, type, type]:
    """Register a derived row's classes with AutoConfig / AutoModelForCausalLM; returns its classes.
    (mgm.registration adds the processor classes when transformers first looks the type up.)"""
    register_conversion(fam)
    config_cls, model_cls, causal_cls = _row_classes(fam)[fam.model_type]
    AutoConfig.register(fam.model_type, config_cls, exist_ok=True)
    AutoModelForCausalLM.register(config_cls, causal_cls, exist_ok=True)
    _DERIVED_BUILT[fam.model_type] = fam
    return config_cls, model_cls, causal_cls


def register_auto_classes() -> None:
    """Register every MGM model_type with AutoConfig / AutoModelForCausalLM (idempotent).

    Also gives each MGM model_type the checkpoint conversion of its base family (transformers 5 fuses
    Mixtral's per-expert weights on load and splits them back on save), so released checkpoints load
    and `save_pretrained` writes their original layout.
    """
    for fam in FAMILIES:
        register_conversion(fam)
    for model_type, (config_cls, _, causal_cls) in family_classes().items():
        AutoConfig.register(model_type, config_cls, exist_ok=True)
        AutoModelForCausalLM.register(config_cls, causal_cls, exist_ok=True)


def __getattr__(name: str) -> type:
    """The generated classes by name, so pickle (vLLM ships configs to its worker processes) finds
    `mgm.model.families.MGMConfig` and friends although they are made by `family_classes()`."""
    for classes in family_classes().values():
        for cls in classes:
            if cls.__name__ == name:
                return cls
    for fam in _derived_rows_built():
        for cls in _row_classes(fam)[fam.model_type]:
            if cls.__name__ == name:
                return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _derived_rows_built() -> list[Family]:
    """Derived rows whose classes exist in this process (pickle looks generated classes up by name)."""
    return list(_DERIVED_BUILT.values())


def classes_for_model_type(model_type: str) -> tuple[type, type, type]:
    """Classes for a config's `model_type`, with an error listing the valid ones."""
    classes = family_classes()
    if model_type in classes:
        return classes[model_type]
    fam = derived_family(model_type)
    if fam is not None and model_type == fam.model_type:
        return register_derived(fam)
    raise UserError(f"unknown model_type {model_type!r} in config.json; valid MGM model types: "
                    f"{', '.join(sorted(classes))}, or {DERIVED_PREFIX}<X> for any decoder-only LLM type X "
                    "that transformers' AutoModelForCausalLM builds")


def family_of(model_type: str) -> Family:
    for fam in FAMILIES:
        if model_type in (fam.model_type, fam.legacy_model_type):
            return fam
    fam = derived_family(model_type)
    if fam is not None and model_type == fam.model_type:
        return fam
    raise UserError(f"unknown model_type {model_type!r}; valid: "
                    + ", ".join(sorted(t for f in FAMILIES for t in (f.model_type, f.legacy_model_type))))


def family_for_llm(model_type: str) -> Family:
    """The MGM family wrapping a base LLM `model_type` ('llama', 'gemma', ...) or an MGM one."""
    fam = any_family(model_type)
    if fam is not None:
        return fam
    raise UserError(f"LLM model_type {model_type!r} has no MGM family: it is not one of "
                    + ", ".join(f.config_base.model_type for f in FAMILIES)
                    + " and transformers' AutoModelForCausalLM does not build it as a decoder-only causal LM "
                    "(a newer transformers may know it)")


def find_family_for_llm(model_type: str) -> Family | None:
    """The table row of a base or MGM `model_type`, or None (a derived row or no family: nothing to say
    beyond what the base config says; `any_family` includes the derived rows)."""
    for fam in FAMILIES:
        if model_type in (fam.config_base.model_type, fam.model_type, fam.legacy_model_type):
            return fam
    return None
