"""Inference benchmark: each step of MGM inference against a plain baseline measured in the same run.

    python benchmarks/bench_inference.py [--quick] [--repeats N] [--steps N] [--sections mining,towers,...] [--json]

The default configuration has the released shapes with random weights (CLIP ViT-L/14-336, ConvNeXt-L
at 768 (1536 for HD), mining 2880 -> 1024) and a small Llama; `--config anyllm` has SigLIP-so400m/384
(729 tokens, no CLS), ConvNeXt-L at 756 and a Qwen3-shaped LLM (Qwen3-0.6B widths, 4 layers); `--quick` runs the same steps on tiny
shapes in seconds (a smoke test; its numbers mean nothing). Rows (median of --repeats interleaved runs):

  mining        factored mining (mgm) vs the literal per-window formula on the materialised map;
                also mgm's fold on the dense map
  lr_tower / hr_tower / encode
                mgm vs a plain reference encode: HF CLIP eager attention running every layer (as
                output_hidden_states does), timm ConvNeXt in NCHW with the stages upsampled and
                concatenated, literal mining, F.linear (MKL) everywhere; "mgm_f.linear" is mgm with
                the oneDNN linears switched off (what they buy)
  encode_hd     the same for an HD model (5 views: 4 crops + global, HR map at 1536)
  prefill_llm   the LLM forward over the spliced prompt (one image), mgm vs the bare HF LLM
  decode        ms/token of the engine's per-token path (ContinuousBatch.step) vs HF `generate` with
                `inputs_embeds` on the bare LLM with the same weights (timed per token by a streamer,
                prefill excluded), same prompt length; "mgm_f.linear" is the engine with oneDNN off
  peak_rss      peak resident memory of each encode (VmHWM, reset before each measurement)
  bf16          the same model cast to bf16 afterwards: its speed, and its accuracy against float32
                (relative error of encode features and prefill logits, greedy-token agreement)
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

CONFIGS = {
    "tiny": dict(clip=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                           image_size=32, patch_size=4),
                 convnext=dict(depths=[1, 1, 1, 1], dims=[8, 16, 32, 64]), image_size_aux=64,
                 llm=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                          num_key_value_heads=2, vocab_size=512)),
    "real": dict(clip=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                           image_size=336, patch_size=14, hidden_act="quick_gelu"),
                 convnext=dict(timm_model_name="convnext_large"), image_size_aux=768,
                 llm=dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=4, num_attention_heads=16,
                          num_key_value_heads=16, vocab_size=32000)),
    # MGM on a current stack (README "MGM on your own LLM"): SigLIP-so400m/384 (27 x 27 tokens, no CLS) +
    # ConvNeXt-L at 756 (~768; 189 = 27 x 7, so the literal reference mining can run) + a Qwen3-shaped LLM
    # (Qwen3-0.6B widths, 4 layers), random weights
    "anyllm": dict(lr_kind="siglip",
                   clip=dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                             image_size=384, patch_size=14),
                   convnext=dict(timm_model_name="convnext_large"), image_size_aux=756, llm_type="qwen3",
                   llm=dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=4, num_attention_heads=16,
                            num_key_value_heads=8, head_dim=128, vocab_size=151936)),
}


def medians(fns: dict, repeats: int, warmup: bool = True) -> dict[str, float]:
    """Median wall time (s) of each function, run in alternation so drifting load hits all alike."""
    if warmup:
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise OSError(field)


def peak_rss_mib(fn) -> tuple[float, float]:
    """(peak resident memory of the process while `fn()` runs, that peak minus the RSS before), MiB.

    Linux: the peak (VmHWM) is reset through /proc/self/clear_refs first; elsewhere ru_maxrss (no reset).
    """
    try:
        Path("/proc/self/clear_refs").write_text("5")
        before = _status_mib("VmRSS")
        fn()
        peak = _status_mib("VmHWM")
        return peak, peak - before
    except OSError:
        import resource

        fn()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return peak, float("nan")


def build_model(name: str, workdir: Path):
    from transformers import CLIPVisionConfig

    import mgm.model as M
    from mgm.model.families import classes_for_model_type

    spec = CONFIGS[name]
    clip_dir, aux_dir = workdir / f"{name}-clip", workdir / f"{name}-convnext"
    clip_dir.mkdir(parents=True, exist_ok=True)
    aux_dir.mkdir(parents=True, exist_ok=True)
    if spec.get("lr_kind") == "siglip":
        from transformers import SiglipVisionConfig

        SiglipVisionConfig(**spec["clip"]).save_pretrained(clip_dir)
    else:
        CLIPVisionConfig(**spec["clip"]).save_pretrained(clip_dir)
    (aux_dir / "open_clip_config.json").write_text(json.dumps({"model_cfg": {"vision_cfg": spec["convnext"]}}))
    config_cls, _, causal_cls = (classes_for_model_type("mgm_" + spec["llm_type"]) if "llm_type" in spec
                                 else (M.MGMConfig, None, M.MGMLlamaForCausalLM))
    cfg = config_cls(**spec["llm"], max_position_embeddings=4096, mm_vision_tower=str(clip_dir),
                     mm_vision_tower_aux=str(aux_dir), mm_projector_type="mlp2x_gelu", mm_vision_select_layer=-2,
                     image_size_aux=spec["image_size_aux"], image_aspect_ratio="pad")
    torch.manual_seed(0)
    model = causal_cls(cfg).eval()
    for name_ in ("vlm_uni_query_projector", "vlm_uni_aux_projector", "vlm_uni_val_projector"):
        ln = getattr(model.get_model(), name_)[0]  # non-trivial LayerNorm affine, as trained weights have
        ln.weight.data.uniform_(0.5, 1.5)
        ln.bias.data.normal_(0, 0.3)
    return model, spec


# -- the plain reference (what the original computes, with stock library code) -----------------------
def ref_clip(tower, images: torch.Tensor) -> torch.Tensor:
    """HF CLIP layers with eager attention, every layer run (output_hidden_states), hidden_states[-2]."""
    vm = tower.vision_tower.vision_model
    cfg = tower.config
    saved, cfg._attn_implementation = cfg._attn_implementation, "eager"
    try:
        emb = vm.embeddings
        x = emb.patch_embedding(images).flatten(2).transpose(1, 2)
        cls = getattr(emb, "class_embedding", None)  # SigLIP: no CLS token, no pre-LayerNorm
        if cls is not None:
            x = torch.cat([cls.expand(x.shape[0], 1, -1), x], 1)
        x = x + emb.position_embedding.weight
        hidden = [vm.pre_layrnorm(x) if cls is not None else x]
        for layer in vm.encoder.layers:
            hidden.append(layer(hidden[-1], None))
        vm.post_layernorm(hidden[-1][:, 0])
        return hidden[tower.select_layer][:, 1:] if cls is not None else hidden[tower.select_layer]
    finally:
        cfg._attn_implementation = saved


def ref_convnext(tower, images: torch.Tensor) -> torch.Tensor:
    """timm stem and stages (their own forward, NCHW), stages upsampled in float32 and concatenated."""
    x = tower.vision_stem(images)
    outs = []
    for stage in tower.vision_stages:
        x = stage(x)
        outs.append(x)
    size = outs[0].shape[-2:]
    return torch.cat([outs[0]] + [F.interpolate(o.float(), size=size, mode="bilinear", align_corners=False)
                                  for o in outs[1:]], 1)


def ref_encode(model, images: torch.Tensor, images_aux: torch.Tensor) -> torch.Tensor:
    from mgm.model.mining import mine_patches_reference

    inner = model.get_model()
    mods = (inner.vlm_uni_query_projector, inner.vlm_uni_aux_projector, inner.vlm_uni_val_projector)
    s = model.mgm_settings
    hr = ref_convnext(inner.vision_tower_aux, images_aux)
    if s.image_grid == 1:
        f = ref_clip(inner.vision_tower, images)
        return inner.mm_projector(f + mine_patches_reference(f, hr, *mods))
    g, b = s.image_grid, images.shape[0]
    feats = ref_clip(inner.vision_tower, torch.cat([images[:, :-1].flatten(0, 1), images[:, -1]]))
    crops, glob = feats[: b * g * g], feats[b * g * g:]
    c, hs, ws = hr.shape[1:]
    hr_crops = hr.view(b, c, g, hs // g, g, ws // g).permute(0, 2, 4, 1, 3, 5).reshape(b * g * g, c, hs // g, ws // g)
    crops = (crops + mine_patches_reference(crops, hr_crops, *mods)).reshape(b, -1, crops.shape[-1])
    hr_glob = F.interpolate(hr, size=(hs // g, ws // g), mode="bilinear", align_corners=False)
    glob = glob + mine_patches_reference(glob, hr_glob, *mods)
    return inner.mm_projector(torch.cat([glob, crops], 1))


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def plain_linears():
    """Context: oneDNN linears off (F.linear everywhere), for the reference and the "what it buys" rows."""
    from mgm.model import fast_linear

    return fast_linear.stock_linears()


def with_plain(fn):
    def run():
        with plain_linears():
            return fn()
    return run


def word_tokenizer(vocab_size: int):
    """An in-memory word-level tokenizer covering the whole vocabulary (`w<id>`), so every id decodes."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, vocab_size)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<unk>")


# -- sections -----------------------------------------------------------------------------------------
def bench_mining(model, repeats: int) -> dict:
    from mgm.model.mining import mine_patches, mine_patches_reference
    from mgm.model.vision.multiscale import MultiScaleMap

    inner = model.get_model()
    mods = (inner.vlm_uni_query_projector, inner.vlm_uni_aux_projector, inner.vlm_uni_val_projector)
    side = model.mgm_settings.image_size_aux // 4
    torch.manual_seed(1)
    stages = [torch.randn(1, c, side >> i, side >> i).contiguous(memory_format=torch.channels_last) * 2 + 0.5
              for i, c in enumerate(inner.vision_tower_aux.spec.dims)]
    hr = MultiScaleMap.upsampled(stages)
    dense = hr.dense()
    lr = torch.randn(1, inner.vision_tower.num_patches, inner.vision_tower.hidden_size)
    fns = {"literal": with_plain(lambda: mine_patches_reference(lr, dense, *mods)),
           "mgm_dense_fold": lambda: mine_patches(lr, dense, *mods), "mgm": lambda: mine_patches(lr, hr, *mods)}
    t = medians(fns, repeats)
    ref = fns["literal"]()
    return {"literal_s": t["literal"], "mgm_dense_fold_s": t["mgm_dense_fold"], "mgm_s": t["mgm"],
            "ratio": t["mgm"] / t["literal"], "dense_fold_ratio": t["mgm_dense_fold"] / t["literal"],
            "rel_err": rel_err(fns["mgm"](), ref), "shape_hr": list(hr.shape)}


def bench_towers(model, images, images_aux, repeats: int) -> dict:
    inner = model.get_model()
    lr, hr = inner.vision_tower, inner.vision_tower_aux
    t = medians({"lr_ref": with_plain(lambda: ref_clip(lr, images)), "lr_mgm": lambda: lr(images),
                 "hr_ref": with_plain(lambda: ref_convnext(hr, images_aux)), "hr_mgm": lambda: hr.features(images_aux),
                 "hr_mgm_plain": with_plain(lambda: hr.features(images_aux))}, repeats)
    return {"lr_tower": {"reference_s": t["lr_ref"], "mgm_s": t["lr_mgm"], "ratio": t["lr_mgm"] / t["lr_ref"],
                         "rel_err": rel_err(lr(images), ref_clip(lr, images))},
            "hr_tower": {"reference_s": t["hr_ref"], "mgm_s": t["hr_mgm"], "mgm_f.linear_s": t["hr_mgm_plain"],
                         "ratio": t["hr_mgm"] / t["hr_ref"],
                         "rel_err": rel_err(hr.features(images_aux).dense(), ref_convnext(hr, images_aux))}}


def bench_encode(model, images, images_aux, repeats: int, plain_variant: bool = True) -> dict:
    """Encode time (median), peak RSS and error of mgm vs the reference; every timed run also gives the
    peak RSS and the output, so a heavy configuration (HD) needs no extra runs."""
    fns = {"reference": with_plain(lambda: ref_encode(model, images, images_aux)),
           "mgm": lambda: model.encode_images(images, images_aux)}
    if plain_variant:
        fns["mgm_f.linear"] = with_plain(fns["mgm"])
    times: dict[str, list[float]] = {k: [] for k in fns}
    peaks: dict[str, list[tuple[float, float]]] = {k: [] for k in fns}
    outputs: dict[str, torch.Tensor] = {}

    def run(key: str) -> None:
        t0 = time.perf_counter()
        outputs[key] = fns[key]()
        times[key].append(time.perf_counter() - t0)

    for _ in range(repeats):
        for key in fns:
            gc.collect()
            peaks[key].append(peak_rss_mib(lambda key=key: run(key)))
    out = {f"{k}_s": statistics.median(v) for k, v in times.items()}
    out["ratio"] = out["mgm_s"] / out["reference_s"]
    for key in ("reference", "mgm"):
        out[f"peak_rss_{key}_mib"] = min(p[0] for p in peaks[key])
        out[f"rss_growth_{key}_mib"] = min(p[1] for p in peaks[key])
    out["peak_rss_ratio"] = out["peak_rss_mgm_mib"] / out["peak_rss_reference_mib"]
    out["rel_err"] = rel_err(outputs["mgm"], outputs["reference"])
    return out


def decode_tokens(engine, prompt: str, steps: int, batch_cls, request_cls, params_cls) -> tuple[float, list[int]]:
    """Prefill one request in a ContinuousBatch (untimed), then time `steps` decoding steps."""
    request = request_cls(prompt, [], params_cls(temperature=0, max_new_tokens=steps + 8))
    batch = batch_cls(engine)
    row = batch.new_row(request)
    batch.add([row])
    t0 = time.perf_counter()
    for _ in range(steps):
        batch.step()
    elapsed = time.perf_counter() - t0
    ids = list(row.decoder.ids)
    batch.cancel_all()
    return elapsed / steps, ids


def clock():
    """A `generate` streamer that timestamps every put(): the prompt first, then one per generated token."""
    from transformers.generation.streamers import BaseStreamer

    class Clock(BaseStreamer):
        def __init__(self) -> None:
            self.times: list[float] = []

        def put(self, value) -> None:
            self.times.append(time.perf_counter())

        def end(self) -> None:
            pass

    return Clock()


def bench_llm(model, bare, engine, embeds, mask, prompt: str, ids: torch.Tensor, steps: int, repeats: int) -> dict:
    from mgm.inference import ContinuousBatch, GenerationParams, Request

    def prefill(m):
        return m(inputs_embeds=embeds, attention_mask=mask, use_cache=True, logits_to_keep=1)

    t = medians({"bare": with_plain(lambda: prefill(bare)), "mgm": lambda: prefill(model)}, repeats)
    out = {"prefill_llm": {"tokens": embeds.shape[1], "bare_s": t["bare"], "mgm_s": t["mgm"],
                           "ratio": t["mgm"] / t["bare"]}}
    text_embeds = bare.get_input_embeddings()(ids)

    def generate(n):
        timer = clock()
        with plain_linears():
            ids_out = bare.generate(inputs_embeds=text_embeds, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                                    min_new_tokens=n, do_sample=False, pad_token_id=0, streamer=timer)
        # from the first generated token (prefill done) to the last: steps decoding steps
        return ids_out[0].tolist(), (timer.times[-1] - timer.times[1]) / (n - 1)

    ours, bare_t, ours_mkl = [], [], []
    generate(3)
    decode_tokens(engine, prompt, 2, ContinuousBatch, Request, GenerationParams)
    for _ in range(repeats):
        bare_ids, per_token = generate(steps + 1)
        bare_t.append(per_token)
        per_token, our_ids = decode_tokens(engine, prompt, steps, ContinuousBatch, Request, GenerationParams)
        ours.append(per_token)
        with plain_linears():  # what the oneDNN gemv buys (the rest: in-place cache, no re-splicing)
            ours_mkl.append(decode_tokens(engine, prompt, steps, ContinuousBatch, Request, GenerationParams)[0])
    n = min(len(bare_ids), len(our_ids))
    out["decode"] = {"cache_tokens": ids.shape[1], "steps": steps, "bare_ms_per_token": 1e3 * statistics.median(bare_t),
                     "mgm_ms_per_token": 1e3 * statistics.median(ours),
                     "mgm_f.linear_ms_per_token": 1e3 * statistics.median(ours_mkl),
                     "ratio": statistics.median(ours) / statistics.median(bare_t),
                     "greedy_equal_to_bare": our_ids[:n] == bare_ids[:n]}
    return out, our_ids


def bench_bf16(model, images, images_aux, engine, prompt: str, ids, steps: int, repeats: int, fp32: dict) -> dict:
    """Cast the model to bfloat16 (the one switch: load_pretrained_model(dtype=torch.bfloat16)) and
    compare its speed and outputs with the float32 run."""
    from mgm.inference import ContinuousBatch, GenerationParams, Request

    model.to(torch.bfloat16)
    images, images_aux = images.bfloat16(), images_aux.bfloat16()
    t = medians({"mgm": lambda: model.encode_images(images, images_aux)}, repeats)
    enc = model.encode_images(images, images_aux)
    logits = model(input_ids=ids, use_cache=False).logits[0, -1]
    per_token = []
    for _ in range(repeats):
        tok, our_ids = decode_tokens(engine, prompt, steps, ContinuousBatch, Request, GenerationParams)
        per_token.append(tok)
    ref_ids = fp32["greedy_ids"]
    n = min(len(ref_ids), len(our_ids))
    agree = [a == b for a, b in zip(our_ids[:n], ref_ids[:n])]
    first_diff = agree.index(False) if False in agree else n
    return {"encode_s": t["mgm"], "encode_ratio_vs_fp32_mgm": t["mgm"] / fp32["encode_mgm_s"],
            "encode_ratio_vs_reference": t["mgm"] / fp32["encode_reference_s"],
            "encode_rel_err_vs_fp32": rel_err(enc, fp32["encode"]),
            "decode_ms_per_token": 1e3 * statistics.median(per_token),
            "decode_ratio_vs_bare_fp32": 1e3 * statistics.median(per_token) / fp32["bare_ms_per_token"],
            "logits_rel_err_vs_fp32": rel_err(logits, fp32["logits"]),
            "logits_max_abs_err_vs_fp32": float((logits.float() - fp32["logits"]).abs().max()),
            "top1_equal_vs_fp32": bool(logits.argmax() == fp32["logits"].argmax()),
            "greedy_agreement_vs_fp32": sum(agree) / max(n, 1), "greedy_first_difference": first_diff}


def progress(section: str, rows: dict) -> None:
    """One line per finished section on stderr (a real-dimension run takes many minutes)."""
    print(f"[bench_inference] {section}: " + json.dumps(rows, default=str), file=sys.stderr, flush=True)


SECTIONS = ("mining", "towers", "encode", "llm", "hd", "bf16")


def bench(name: str, repeats: int, steps: int, sections: tuple[str, ...] = SECTIONS) -> dict:
    from transformers import LlamaConfig, LlamaForCausalLM

    from mgm.inference import InferenceEngine, Request

    from mgm.model import cpu_probe
    from mgm.model.fast_linear import use_fast_linears

    with tempfile.TemporaryDirectory() as tmp:
        model, spec = build_model(name, Path(tmp))
    use_fast_linears(model)  # what load_pretrained_model does on CPU
    inner = model.get_model()
    side, side_aux = spec["clip"]["image_size"], spec["image_size_aux"]
    torch.manual_seed(2)
    images, images_aux = torch.randn(1, 3, side, side), torch.randn(1, 3, side_aux, side_aux)
    out: dict = {"config": name, "threads": torch.get_num_threads(), "cpu": cpu_probe.describe(),
                 "kernels": {str(dt).removeprefix("torch."): cpu_probe.linear_plan(dt)
                             for dt in (torch.float32, torch.bfloat16)}}
    if "mining" in sections:
        out["mining"] = bench_mining(model, repeats)
        progress("mining", out["mining"])
    if "towers" in sections:
        out.update(bench_towers(model, images, images_aux, repeats))
        progress("towers", {"lr": out["lr_tower"], "hr": out["hr_tower"]})
    if "encode" in sections:
        out["encode"] = bench_encode(model, images, images_aux, repeats)
        progress("encode", out["encode"])
    enc32 = model.encode_images(images, images_aux)

    tokenizer = word_tokenizer(spec["llm"]["vocab_size"])
    engine = InferenceEngine(tokenizer, model, None)
    engine.eos_ids = []  # fixed-length decoding: never stop early on a random model's EOS
    words = inner.vision_tower.num_patches + 40
    prompt = " ".join(f"w{3 + (7 * i) % (spec['llm']['vocab_size'] - 3)}" for i in range(words))
    ids = engine.encode_prompt(Request(prompt))[None]
    image_ids = torch.cat([ids[:, :20], torch.tensor([[-200]]), ids[:, 20:40]], 1)
    _, _, mask, _, embeds, _ = model.prepare_inputs_labels_for_multimodal(
        image_ids, None, torch.ones_like(image_ids), None, None, images, images_aux, padding_side="left")
    if "llm_type" in spec:  # the bare LLM of the same architecture
        from transformers import AutoConfig, AutoModelForCausalLM

        bare = AutoModelForCausalLM.from_config(AutoConfig.for_model(spec["llm_type"], **spec["llm"],
                                                                     max_position_embeddings=4096)).eval()
    else:
        bare = LlamaForCausalLM(LlamaConfig(**spec["llm"], max_position_embeddings=4096)).eval()
    bare.load_state_dict({k: v for k, v in model.state_dict().items() if k in bare.state_dict()}, strict=True)
    if "llm" in sections or "bf16" in sections:
        llm, greedy_ids = bench_llm(model, bare, engine, embeds, mask, prompt, ids, steps, repeats)
        out.update(llm)
        progress("llm", llm)
    if "llm" in sections and "encode" in out:
        out["prefill"] = {"reference_s": out["encode"]["reference_s"] + out["prefill_llm"]["bare_s"],
                          "mgm_s": out["encode"]["mgm_s"] + out["prefill_llm"]["mgm_s"]}
        out["prefill"]["ratio"] = out["prefill"]["mgm_s"] / out["prefill"]["reference_s"]
    logits32 = model(input_ids=ids, use_cache=False).logits[0, -1]
    del bare, embeds

    if "hd" in sections:
        s = inner.mgm_settings
        inner.mgm_settings = dataclasses.replace(s, image_grid=2, image_global=True, image_size_aux=2 * side_aux)
        torch.manual_seed(3)
        hd_images, hd_aux = torch.randn(1, 5, 3, side, side), torch.randn(1, 3, 2 * side_aux, 2 * side_aux)
        out["encode_hd"] = bench_encode(model, hd_images, hd_aux, max(1, repeats - 1), plain_variant=False)
        inner.mgm_settings = s
        progress("encode_hd", out["encode_hd"])
        del hd_images, hd_aux
    if "bf16" in sections:
        encode_mgm_s = (out["encode"]["mgm_s"] if "encode" in out
                        else medians({"mgm": lambda: model.encode_images(images, images_aux)}, repeats)["mgm"])
        fp32 = {"encode": enc32, "logits": logits32, "greedy_ids": greedy_ids, "encode_mgm_s": encode_mgm_s,
                "encode_reference_s": out.get("encode", {}).get("reference_s", float("nan")),
                "bare_ms_per_token": out["decode"]["bare_ms_per_token"]}
        out["bf16"] = bench_bf16(model, images, images_aux, engine, prompt, ids, steps, repeats, fp32)
    return out


TARGETS = {"mining": 0.05, "encode": 0.5, "decode": 0.8}


def print_report(result: dict) -> None:
    print(f"== {result['config']} ({result['threads']} threads; medians) ==")
    print(f"  cpu          {result['cpu']}")
    print("  kernels      " + "; ".join(f"{dt}: " + ", ".join(f"{rows} row(s) {k}" for rows, k in plan.items())
                                        for dt, plan in result["kernels"].items()))
    for section, rows in result.items():
        if not isinstance(rows, dict) or section == "kernels":
            continue
        cells = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in rows.items())
        target = TARGETS.get(section)
        verdict = "" if target is None else f"  [target <= {target}x: {'OK' if rows['ratio'] <= target else 'MISSED'}]"
        print(f"  {section:12s} {cells}{verdict}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny shapes, one repeat: a smoke test of every step")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (median reported)")
    p.add_argument("--steps", type=int, default=32, help="decoding steps per decode measurement")
    p.add_argument("--sections", default=",".join(SECTIONS),
                   help=f"comma-separated subset of {','.join(SECTIONS)} (hd: 5 views, HR map at 1536; "
                        "bf16 needs llm, which it then runs too)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.add_argument("--config", default="real", choices=("real", "anyllm"),
                   help="real: the released shapes; anyllm: SigLIP-so400m/384 + ConvNeXt-L/756 + a Qwen3-shaped LLM")
    args = p.parse_args(argv)
    name, repeats, steps = ("tiny", 1, 4) if args.quick else (args.config, args.repeats, args.steps)
    with torch.no_grad():
        sections = tuple(x for x in args.sections.split(",") if x)
        unknown = sorted(set(sections) - set(SECTIONS))
        if unknown:
            p.error(f"unknown sections {unknown}; valid: {', '.join(SECTIONS)}")
        result = bench(name, repeats, steps, sections)
    if args.json:
        print(json.dumps(result))
    else:
        print_report(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
