"""`python -m mgm.zoo --out DIR`: same as `python -m mgm.zoo.tiny` (build the tiny model zoo)."""
from __future__ import annotations

from mgm.zoo.tiny import main

if __name__ == "__main__":
    raise SystemExit(main())
