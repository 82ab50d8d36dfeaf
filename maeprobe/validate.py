"""Checks of user-supplied settings (CLI options and their Python twins), each failing with one line that names
the setting and what was expected; the checkers of declared settings (``number``, ``choice``, ``flag``, ``text``,
``pair``: recipe keys are declared with them in ``train.config.KEYS``); and ``printable`` for text from files and paths
shown on a terminal."""
from __future__ import annotations

import math
import numbers
import os
import re

from .errors import MaeprobeError

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def printable(text, *, keep_newlines: bool = True) -> str:
    """``text`` with terminal control characters (escape sequences, bidi overrides) shown as escapes, so a file
    name or a string from a checkpoint cannot rewrite the terminal. Newlines and tabs stay unless
    ``keep_newlines`` is False (a one-line message)."""
    text = str(text)

    def escape(match: re.Match) -> str:
        char = match.group(0)
        return repr(char)[1:-1] if ord(char) < 0x100 else f"\\u{ord(char):04x}"

    text = _CONTROL.sub(escape, text)
    if not keep_newlines:
        text = text.replace("\r", "\\r").replace("\n", "\\n").replace("\t", " ")
    return text


def one_line(text, limit: int | None = None) -> str:
    """``text`` (any value: its ``str``) as one printable line for a message: escapes control characters and
    newlines; containers get a bounded ``repr`` (``short``); cut at ``limit`` characters."""
    if isinstance(text, (list, tuple, dict, set, frozenset)):  # containers may be huge or share themselves
        return short(text, limit or 80)
    line = printable(os.fspath(text) if isinstance(text, os.PathLike) else str(text), keep_newlines=False)
    return line if limit is None else line[:limit]


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (its type name when empty), printable and bounded."""
    text = str(exc).strip()
    return one_line(text.splitlines()[0], limit) if text else type(exc).__name__


def short(value, limit: int = 80) -> str:
    """A bounded, printable ``repr`` of any value, even a huge or self-sharing structure (a list nested 60 deep
    in itself would have a repr of 2^60 items): at most ``limit`` characters, built in bounded time."""
    import reprlib

    shower = reprlib.Repr()
    shower.maxlevel, shower.maxlist, shower.maxtuple, shower.maxdict = 3, 4, 4, 4
    shower.maxstring, shower.maxother, shower.maxlong = limit, limit, 40
    text = printable(shower.repr(value), keep_newlines=False)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def integer(name: str, value, lo: int | None = None, hi: int | None = None, *, allow_none: bool = False):
    """``value`` as an int within [lo, hi] (bools and fractions are refused)."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise MaeprobeError(f"{name}: expected a whole number{_range(lo, hi)}, got {value!r}")
    value = int(value)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise MaeprobeError(f"{name}: expected a whole number{_range(lo, hi)}, got {value}")
    return value


def real(name: str, value, lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
         hi_open: bool = False, allow_none: bool = False):
    """``value`` as a finite float within the bounds (open or closed)."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise MaeprobeError(f"{name}: expected a number{_range(lo, hi, lo_open, hi_open)}, got {value!r}")
    value = float(value)
    bad = not math.isfinite(value)
    bad |= lo is not None and (value <= lo if lo_open else value < lo)
    bad |= hi is not None and (value >= hi if hi_open else value > hi)
    if bad:
        raise MaeprobeError(f"{name}: expected a finite number{_range(lo, hi, lo_open, hi_open)}, got {value!r}")
    return value


def _range(lo, hi, lo_open: bool = False, hi_open: bool = False) -> str:
    if lo is None and hi is None:
        return ""
    if hi is None:
        return f" {'>' if lo_open else '>='} {lo}"
    if lo is None:
        return f" {'<' if hi_open else '<='} {hi}"
    return f" in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"


def mask_ratio(value, num_patches: int | None = None, name: str = "mask ratio") -> float:
    """A mask ratio in [0, 1) that leaves at least one visible patch of ``num_patches``."""
    value = real(name, value, 0.0, 1.0, hi_open=True)
    if num_patches is not None and int(num_patches * (1 - value)) < 1:
        raise MaeprobeError(f"{name}: {value:g} leaves no visible patch of {num_patches}; use a ratio below "
                            f"{1 - 1 / num_patches:.4g}")
    return value


def device(value):
    """A torch.device that exists here: 'cpu', 'cuda', 'cuda:N' (N below the number of GPUs), 'mps', or None."""
    if value is None:
        return None
    import torch

    if isinstance(value, torch.device):
        dev = value
    else:
        text = str(value).strip()
        try:
            dev = torch.device(text)
        except (RuntimeError, ValueError, TypeError):
            raise MaeprobeError(f"--device: {printable(text, keep_newlines=False)!r} is not a device; expected "
                                "cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise MaeprobeError(f"--device {dev}: CUDA is not available on this machine; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise MaeprobeError(f"--device {dev}: this machine has {torch.cuda.device_count()} GPU(s)")
    elif dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise MaeprobeError(f"--device {dev}: MPS is not available on this machine; use --device cpu")
    elif dev.type != "cpu":
        raise MaeprobeError(f"--device {dev}: expected cpu, cuda, cuda:N or mps")
    return dev


# --------------------------------------------------------------------------- checkers of declared settings
# Each factory returns ``check(name, value) -> value``, the check of one declared setting (a recipe key, whose
# ``name`` the caller gives as "recipe key optim.epochs"): the value as stored, or one line naming the setting.
def number(lo=None, hi=None, *, lo_open=False, hi_open=False, whole=False, none=False):
    """A number in bounds; text that spells one (a value a program passes as a string) is read as it, as a whole
    number first (no float rounding of a long seed). Returns a plain int or float (never a subclass, such as the
    numbers a recipe file's YAML loader keeps their text on)."""
    def check(name, value):
        if value is None and none:
            return None
        if isinstance(value, str):
            for parse in (int, float):
                try:
                    value = parse(value.strip())
                    break
                except (ValueError, OverflowError):
                    continue
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok and isinstance(value, float):
            ok = math.isfinite(value)
        if ok and whole and not isinstance(value, int):
            ok = value.is_integer()
            value = int(value) if ok else value
        if ok:  # int and float compare exactly, whatever the size of the int
            ok = not ((lo is not None and (value <= lo if lo_open else value < lo))
                      or (hi is not None and (value >= hi if hi_open else value > hi)))
        if not ok:
            kind = "a whole number" if whole else "a number"
            shown = value if not isinstance(value, int) or abs(value) < 10**30 else \
                f"a number of about {int(abs(value).bit_length() * 0.30103) + 1} digits"
            raise MaeprobeError(f"{name}: expected {kind}{_range(lo, hi, lo_open, hi_open)}"
                                f"{' or null' if none else ''}, got {one_line(shown, 300)!r}")
        return int(value) if isinstance(value, int) else float(value)
    return check


def choice(*choices, none=False):
    """One of ``choices`` (text), or None when ``none``."""
    def check(name, value):
        if value is None and none:
            return None
        if not isinstance(value, str) or value not in choices:
            raise MaeprobeError(f"{name}: expected one of {', '.join(choices)}{' or null' if none else ''}, got "
                                f"{one_line(value, 300)!r}")
        return value
    return check


def flag(name, value):
    """true or false (YAML's own booleans; 'yes' or 1 are refused, not guessed)."""
    if not isinstance(value, bool):
        raise MaeprobeError(f"{name}: expected true or false, got {one_line(value, 300)!r}")
    return value


def text(none=False, max_len=4096):
    """Non-blank text without NUL of at most ``max_len`` characters. A number is taken as the text it was written
    as (its ``text`` attribute when the YAML loader kept it: ``0123`` stays '0123')."""
    def check(name, value):
        if value is None and none:
            return None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = getattr(value, "text", None) or str(value)
        if isinstance(value, str):
            value = str(value)
        if not isinstance(value, str) or not value.strip() or len(value) > max_len or "\x00" in value:
            raise MaeprobeError(f"{name}: expected text{' or null' if none else ''}, got {one_line(value, 300)!r}")
        return value
    return check


def pair(lo, hi, *, ordered=False):
    """Two numbers in [lo, hi] (as a list); ``ordered``: the first at most the second."""
    def check(name, value):
        if not isinstance(value, (list, tuple)) or len(value) != 2:
            raise MaeprobeError(f"{name}: expected two numbers in [{lo}, {hi}], got {one_line(value, 300)!r}")
        out = [number(lo, hi)(name, v) for v in value]
        if ordered and out[0] > out[1]:
            raise MaeprobeError(f"{name}: expected [low, high], got {out}")
        return out
    return check
