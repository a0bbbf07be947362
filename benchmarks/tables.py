"""Plain markdown tables from pandas frames (no optional dependency such as tabulate)."""
from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd


def _fmt(x, digits: int) -> str:
    if isinstance(x, float):
        return "-" if math.isnan(x) else f"{x:.{digits}g}"
    return str(x)


def markdown_table(df: pd.DataFrame, cols: Sequence[str] | None = None, digits: int = 3) -> str:
    """``df[cols]`` (default: every column) as a markdown table, floats to ``digits`` significant digits."""
    cols = [c for c in (cols if cols is not None else df.columns) if c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r[c], digits) for c in cols) + " |" for _, r in df.iterrows()]
    return "\n".join(lines)
