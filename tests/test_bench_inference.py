"""benchmarks/bench_inference.py --quick runs every step (so the benchmark cannot rot) and its
fast paths agree with the plain reference it measures against."""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quick_mode_runs_every_section(capsys):
    spec = importlib.util.spec_from_file_location("bench_inference", ROOT / "benchmarks" / "bench_inference.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--quick", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for section in ("mining", "lr_tower", "hr_tower", "encode", "encode_hd", "prefill_llm", "prefill", "decode", "bf16"):
        ratio = result[section].get("ratio", result[section].get("encode_ratio_vs_fp32_mgm"))
        assert ratio is not None and math.isfinite(ratio) and ratio > 0, section
    for section in ("mining", "lr_tower", "hr_tower", "encode", "encode_hd"):
        assert result[section]["rel_err"] < 1e-5, section
    assert result["decode"]["greedy_equal_to_bare"]
    assert result["bf16"]["encode_rel_err_vs_fp32"] < 0.05
