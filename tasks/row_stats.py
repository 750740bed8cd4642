"""How the data steps sum up rows: the length percentiles in their reports, and the bad rows an error lists."""

from __future__ import annotations

MAX_LISTED = 20  # problems listed in an error; the total is always given


def listed_problems(problems: list[str], total: int) -> str:
    """The first MAX_LISTED problems, one per indented line, and how many more there are."""
    more = total - min(len(problems), MAX_LISTED)
    return "\n".join(f"  {p}" for p in problems[:MAX_LISTED]) + (f"\n  ... and {more} more" if more > 0 else "")


def percentiles(values: list[int | float]) -> dict:
    """min, p50, p90, p99 and max of `values` ({} for none)."""
    if not values:
        return {}
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"min": ordered[0], "p50": pick(0.5), "p90": pick(0.9), "p99": pick(0.99), "max": ordered[-1]}
