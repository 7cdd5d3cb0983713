"""How the lab writes quantities for people: bytes in binary units, durations, counts. One home for each."""

from __future__ import annotations


def format_bytes(n: float) -> str:
    """Binary units everywhere in the lab: 1536 -> '1.5 KiB', 134_515_008 * 4 -> '513.1 MiB'."""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def format_duration(seconds: float) -> str:
    """'42 s', '3 min 05 s', '2 h 07 min'."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, s = divmod(seconds, 60)
    return f"{minutes} min {s:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


def format_count(n: float) -> str:
    """A count short enough for a metric box, in SI steps: 405_853_388_800 -> '405.9 B', 134_515_008 ->
    '134.5 M', 12_288 -> '12.3 k', 576 -> '576'. B (billion) as in model names (8B, 405B)."""
    for div, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:,.1f} {unit}"
    return f"{n:,.0f}" if float(n).is_integer() else f"{n:,.3g}"


def plural(n: int, noun: str, many: str | None = None) -> str:
    """'1 character', '2 characters', '1,024 tokens': the count with its noun in the right number."""
    return f"{n:,} {noun if n == 1 else (many or noun + 's')}"
