"""Rows as an aligned text table, as the terminal commands and the end-of-run summary print them."""

from __future__ import annotations


def format_table(rows: list[dict], columns: list[str]) -> str:
    """A header, a rule, and one line per row; a missing value is blank."""
    widths = {c: max([len(c), *(len(str(r.get(c, ""))) for r in rows)]) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns), "  ".join("-" * widths[c] for c in columns)]
    lines += ["  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(lines)
