"""mgm: Mini-Gemini re-implemented.

As in the original package, `from mgm import MGMLlamaForCausalLM` works and `import mgm` is enough for
`AutoConfig` / `AutoModelForCausalLM.from_pretrained(<MGM checkpoint>)`. Both are lazy: the model
classes are imported on first attribute access, and the Auto registration runs the first time
transformers looks up a model type it does not know (see `mgm.registration`), so importing a light
module such as `mgm.conversation` does not import torch.
"""
from mgm.registration import register_on_first_lookup

register_on_first_lookup()


def __getattr__(name: str):
    # Model classes (MGMLlamaForCausalLM, MGMConfig, MiniGemini*, ...) live in mgm.model.
    if name.startswith(("MGM", "MiniGemini")):
        import mgm.model

        if name in mgm.model.__all__:
            return getattr(mgm.model, name)
    raise AttributeError(f"module 'mgm' has no attribute {name!r}")

