"""mgm: Mini-Gemini re-implemented.

As in the original package, `from mgm import MGMLlamaForCausalLM` works and `import mgm` is enough for
`AutoConfig` / `AutoModelForCausalLM.from_pretrained(<MGM checkpoint>)`. Both are lazy: the model
classes are imported on first attribute access, and the Auto registration runs the first time
transformers looks up a model type it does not know (see `mgm.registration`), so importing a light
module such as `mgm.conversation` does not import torch. `mgm.register()` registers everything at once,
explicitly (idempotent): the MGM configs and models with the Auto classes, the processor classes and
the `SentencePieceDecodingTokenizer` that `AutoTokenizer` then loads back from a saved folder.
"""
from mgm.registration import register_on_first_lookup

register_on_first_lookup()


def register() -> None:
    """Register every MGM class with the transformers Auto classes now (idempotent, thread-safe)."""
    from mgm.registration import register_auto_classes

    register_auto_classes()


def __getattr__(name: str):
    # Model classes (MGMLlamaForCausalLM, MGMConfig, MiniGemini*, ...) live in mgm.model.
    if name.startswith(("MGM", "MiniGemini")):
        import mgm.model

        if name in mgm.model.__all__:
            return getattr(mgm.model, name)
    raise AttributeError(f"module 'mgm' has no attribute {name!r}")

