"""`mgm kernels`: this CPU, its ISA flags and the linear kernel chosen per dtype and row class.

Arguments are parsed before torch is imported, so `--help` answers at once; the probing lives in
`mgm.model.cpu_probe`.
"""
from __future__ import annotations

import argparse

from mgm.program import program_name


def main(argv: list[str] | None = None) -> int:
    """Print the CPU, its ISA flags and the plan per dtype (from the cache, or measured with --reprobe)."""
    parser = argparse.ArgumentParser(prog=program_name("mgm kernels"), description=__doc__.splitlines()[0][15:])
    parser.add_argument("--reprobe", action="store_true", help="measure again and overwrite the cached plan")
    args = parser.parse_args(argv)
    from mgm.model import cpu_probe

    print(cpu_probe.describe())
    for dtype in cpu_probe.PROBED_DTYPES:
        result = cpu_probe.reprobe(dtype) if args.reprobe else cpu_probe.probe_result(dtype)
        times = "; ".join(f"{row}: " + ", ".join(f"{k} {v:.3g} ms" for k, v in result["ms"].get(row, {}).items())
                          for row in cpu_probe.ROW_CLASSES)
        plan = ", ".join(f"{row} row(s) -> {kernel}" for row, kernel in result["plan"].items())
        print(f"{str(dtype).removeprefix('torch.'):9s} {plan}   [{times}]")
    print(f"cache: {cpu_probe.cache_file() or 'off (MGM_CPU_PROBE_CACHE=0)'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
