"""Registration of the MGM classes with the transformers Auto classes, on first need.

The original package registered its classes as a side effect of `import mgm` (its `__init__` imported
every model module), so `AutoConfig.from_pretrained(<MGM checkpoint>)` worked after a bare `import mgm`.
Building the classes costs seconds (torch, four transformers model families, timm) that the light
parts of mgm (controller, conversation templates, `mgm --help`) should not pay at import. So
`import mgm` only calls `register_on_first_lookup()`: the first time transformers looks up a model type
it does not know (every Auto class resolves a checkpoint's `model_type` through AutoConfig's mapping),
`register_auto_classes()` runs and the lookup is answered again. Nothing is imported until then; if
transformers' Auto module is not loaded yet, the hook is attached right after it loads.

`register_auto_classes()` is the single place that registers the table's rows; add new Auto
registrations there. Derived rows (any decoder-only LLM, `mgm_<type>`, mgm.model.families.derived_family)
are registered one by one by `register_derived_row`, on the first lookup of their model type.
"""
from __future__ import annotations

import importlib.abc
import sys
import threading

AUTO_CONFIG_MODULE = "transformers.models.auto.configuration_auto"
_lock = threading.RLock()
_registered = False
_derived: dict = {}  # MGM model type -> Family of the derived rows registered so far


def register_auto_classes() -> None:
    """Register every MGM model_type with the transformers Auto classes (idempotent, thread-safe).

    AutoConfig and AutoModelForCausalLM, current and pre-rename (`mini_gemini*`) model types; the same
    causal-LM classes for AutoModelForImageTextToText (so `pipeline("image-text-to-text")` works: their
    `generate` takes input_ids + images); MGMProcessor / MGMImageProcessor for AutoProcessor /
    AutoImageProcessor.
    """
    global _registered
    with _lock:
        if _registered:
            return
        from transformers import AutoModelForImageTextToText

        from mgm.model.families import family_classes
        from mgm.model.families import register_auto_classes as register_families
        from mgm.processing import register_processor_classes

        register_families()
        for config_cls, _, causal_cls in family_classes().values():
            AutoModelForImageTextToText.register(config_cls, causal_cls, exist_ok=True)
        register_tokenizer_class()
        register_processor_classes([config_cls for config_cls, _, _ in family_classes().values()])
        _registered = True


def register_tokenizer_class() -> None:
    """Let `AutoTokenizer` load a saved `SentencePieceDecodingTokenizer` (tokenizer_config.json names it) as
    that class; registered with the Llama-family MGM configs, whose tokenizers it decodes."""
    from transformers import AutoTokenizer

    from mgm.model.families import FAMILIES, classes_for_model_type
    from mgm.model.sentencepiece_decode import SLOW_TOKENIZER_FAMILIES, SentencePieceDecodingTokenizer

    for fam in FAMILIES:
        if fam.key in SLOW_TOKENIZER_FAMILIES:
            for model_type in (fam.model_type, fam.legacy_model_type):
                AutoTokenizer.register(classes_for_model_type(model_type)[0],
                                       tokenizer_class=SentencePieceDecodingTokenizer, exist_ok=True)


def register_derived_row(fam) -> tuple[type, type, type]:
    """Register one derived row with every Auto class the table's rows have (idempotent, thread-safe)."""
    from mgm.model.families import _row_classes, register_derived

    with _lock:
        if fam.model_type in _derived:
            return _row_classes(fam)[fam.model_type]
        _derived[fam.model_type] = fam  # first: AutoConfig.register looks the type up again
        from transformers import AutoModelForImageTextToText

        from mgm.processing import register_processor_classes

        config_cls, model_cls, causal_cls = register_derived(fam)
        AutoModelForImageTextToText.register(config_cls, causal_cls, exist_ok=True)
        register_processor_classes([config_cls])
        return config_cls, model_cls, causal_cls


def _register_unknown(key) -> None:
    """The table's rows on the first unknown key; a derived row when `key` names one."""
    if not _registered:
        register_auto_classes()
    if isinstance(key, str) and key.startswith("mgm_") and key not in _derived:
        from mgm.model.families import derived_family

        fam = derived_family(key)
        if fam is not None and fam.model_type == key:
            register_derived_row(fam)


def _registering_mapping_class(base: type) -> type:
    """A subclass of transformers' config mapping that registers MGM on the first unknown key."""

    class RegisteringConfigMapping(base):
        def __contains__(self, key) -> bool:
            if not base.__contains__(self, key):
                _register_unknown(key)
            return base.__contains__(self, key)

        def __getitem__(self, key):
            if not base.__contains__(self, key):
                _register_unknown(key)
            return base.__getitem__(self, key)

    RegisteringConfigMapping.__qualname__ = RegisteringConfigMapping.__name__ = f"{base.__name__}WithMGM"
    return RegisteringConfigMapping


def _attach(module) -> None:
    mapping = module.CONFIG_MAPPING
    if not type(mapping).__name__.endswith("WithMGM"):
        # Swapping the class (not the object) reaches every module that imported CONFIG_MAPPING by name.
        mapping.__class__ = _registering_mapping_class(type(mapping))


class _AttachAfterImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself; wraps the loader of `AUTO_CONFIG_MODULE` so the hook is attached after it runs."""

    def find_spec(self, fullname, path, target=None):
        if fullname != AUTO_CONFIG_MODULE:
            return None
        sys.meta_path.remove(self)  # one shot; also keeps the search below from finding us again
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            spec = find(fullname, path, target) if find else None
            if spec is not None and spec.loader is not None:
                spec.loader = _LoaderThenAttach(spec.loader)
                return spec
        return None


class _LoaderThenAttach(importlib.abc.Loader):
    """Delegates to the real loader, then attaches the registration hook to the loaded module."""

    def __init__(self, loader) -> None:
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        self._loader.exec_module(module)
        _attach(module)

    def __getattr__(self, name):  # get_code, get_source, is_package, ... for inspect/linecache
        return getattr(self._loader, name)


def register_on_first_lookup() -> None:
    """Make transformers register the MGM classes the first time it meets an unknown model type."""
    with _lock:
        if _registered:
            return
        module = sys.modules.get(AUTO_CONFIG_MODULE)
        if module is not None and hasattr(module, "CONFIG_MAPPING"):
            _attach(module)
        elif not any(isinstance(f, _AttachAfterImport) for f in sys.meta_path):
            sys.meta_path.insert(0, _AttachAfterImport())
