"""benchmarks/bench_multiturn.py --quick runs end to end (so the benchmark cannot rot): both paths, base and
HD, identical tokens with the caches on and off, and the caches-on runs reuse the earlier turns."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quick_mode_runs_both_paths_and_variants(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("bench_multiturn", ROOT / "benchmarks" / "bench_multiturn.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "multiturn.json"
    assert bench.main(["--quick", "--max-tokens", "6", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    for variant in ("base", "hd"):
        for path in ("v1", "cli"):
            assert result[variant][path]["identical_tokens"]
            assert result[variant]["off"][path]["caches"] is None
            caches = result[variant]["on"][path]["caches"]
            # turns 2-4 and the new conversation hit; the image is encoded once
            assert caches["prefix_kv"]["hits"] == 4 and caches["image_features"]["misses"] == 1
    assert "turns 2-4 / turn 1 with caches" in capsys.readouterr().out
