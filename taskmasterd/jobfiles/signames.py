"""Signal names as an operator types them. Tiny on purpose: taskmasterctl checks a name with it."""
from __future__ import annotations

import signal


def signal_number(text: str) -> int | None:
    """`HUP`, `SIGHUP`, `hup` or `1` → 1; None for anything that is not a signal."""
    if text.isascii() and text.isdigit():
        number = int(text)
        return number if number in signal.valid_signals() else None
    name = text.upper()
    member = signal.Signals.__members__.get(name if name.startswith("SIG") else "SIG" + name)
    return int(member) if member is not None else None


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
