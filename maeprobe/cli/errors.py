"""How a command ends on a user's mistake or on the environment: one line ``error: ...`` and exit status 2, the
allocation or path that failed named with the limit that bounds it; a bug keeps its traceback."""
from __future__ import annotations

import functools
import sys
import warnings
from typing import Optional

import typer

from .common import _one_line


def _friendly(fn=None, *, flags: bool = True):
    """Join the process group when launched by torchrun; print user errors (bad file, bad flag, no images)
    as one line and exit 2, no traceback; leave the process group on the way out. ``flags``: the message's API
    parameters are shown as the command's flags (``as_flags``); False for the training commands, whose messages
    name recipe keys (``mask_ratio`` there is ``model.mask_ratio=``, not the probes' ``--mask-ratio``)."""
    if fn is None:
        return functools.partial(_friendly, flags=flags)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import torch.distributed as dist

        from ..distributed import init_from_env, is_main
        from ..errors import MaeprobeError

        def show(message, category, filename, lineno, file=None, line=None):
            if is_main():
                print(f"warning: {_one_line(message)}", file=sys.stderr)

        warnings.showwarning = show
        joined = not (dist.is_available() and dist.is_initialized())
        try:
            init_from_env()
            return fn(*args, **kwargs)
        except MaeprobeError as exc:  # every process hits the same refusal; the main one prints it
            _refuse(as_flags(str(exc)) if flags else str(exc))
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None
        except RecursionError as exc:  # e.g. folders nested 1,000 deep walked by pathlib's recursive glob
            _refuse(f"an input is nested too deeply: {_where(exc)} reached Python's recursion limit; expected files "
                    "and folders nested at most a few hundred levels")
        except (MemoryError, OSError, RuntimeError) as exc:
            message = _environment_error(exc)
            if message is None:  # a bug: its traceback is what a report needs
                raise
            _refuse(message)
        finally:
            if joined and dist.is_available() and dist.is_initialized():
                dist.destroy_process_group()

    return wrapper


# The API's parameters that a message may name and the flags that set them on the command line (metric options:
# their declared flags, added by ``_flags``). ``layers`` is left as it is: ``run`` sets decoder layers by
# --decoder-layers, and the message names the module.
PARAMETER_FLAGS = {
    "reference": "--ref", "ref_num_heads": "--ref-num-heads", "img_size": "--img-size",
    "block_queries": "--block-queries", "mask_ratio": "--mask-ratio", "mask_ratios": "--mask-ratios",
    "decoder_layers": "--decoder-layers", "batch_size": "--batch-size", "num_workers": "--num-workers",
    "num_heads": "--num-heads", "decoder_num_heads": "--decoder-num-heads", "resample_by": "--resample-by",
    "bootstrap": "--bootstrap", "seed": "--seed", "encoder": "--encoder", "queries": "--query",
}


def _flags() -> dict[str, str]:
    """API parameter -> flag: the probe settings above and every registered metric option."""
    from ..metrics import registry

    flags = dict(PARAMETER_FLAGS)
    for spec in registry.metrics().values():
        for field in spec.fields():
            flags.setdefault(field.name, field.metadata.get("flag") or "--" + field.name.replace("_", "-"))
    return flags


def as_flags(message: str) -> str:
    """A library message (which names API parameters, e.g. ``reference='dino'``, ``block_queries=0``,
    ``img_size=64``, ``encoder=True``, or ``tau:`` / ``eps must`` at its start) in the command line's words
    (``--ref dino``, ``--block-queries 0``, ``--img-size 64``, ``--encoder``, ``--tau:``). A parameter whose flag
    the message already names (``--decoder-num-heads N (decoder_num_heads=N in Python)``) is left as it is."""
    import re

    flags = {name: flag for name, flag in _flags().items() if flag not in message}
    if not flags:
        return message
    names = "|".join(sorted(map(re.escape, flags), key=len, reverse=True))

    def assignment(match: re.Match) -> str:
        flag, value = flags[match.group(1)], match.group(3) if match.group(3) is not None else match.group(2)
        return flag if value == "True" else f"{flag} {value}"

    # not inside a path or a quoted name ('runs/seed=3/x.pth')
    message = re.sub(rf"(?<![\w./\\'\"=-])({names})=(?:'([^'\s]*)'|([^\s,;:()']+))", assignment, message)
    return re.sub(rf"^({names})(:| must )", lambda m: flags[m.group(1)] + m.group(2), message)


def _refuse(message) -> None:
    """``error: <message>`` as one line, printed by the main process, and exit status 2."""
    from ..distributed import is_main

    if is_main():
        typer.echo(f"error: {_one_line(message)}", err=True)
    raise typer.Exit(2) from None


def _shown_path(name) -> str:
    """A path from an OSError as one escaped line, its middle cut when it is very long (a path of 6,000
    characters stays recognisable by its start and its end)."""
    import os

    text = _one_line(os.fsdecode(name) if isinstance(name, (bytes, os.PathLike)) else name)
    return text if len(text) <= 300 else f"{text[:150]}...{text[-120:]}"


def _frames(exc: BaseException) -> list[str]:
    """``module.function`` of maeprobe's own frames in ``exc``'s traceback, outermost first (the CLI left out)."""
    out, tb = [], exc.__traceback__
    while tb is not None:
        module = tb.tb_frame.f_globals.get("__name__", "")
        if module.startswith("maeprobe.") and not module.startswith("maeprobe.cli"):
            out.append(f"{module}.{tb.tb_frame.f_code.co_name}")
        tb = tb.tb_next
    return out


def _where(exc: BaseException) -> str:
    frames = _frames(exc)
    return frames[-1] if frames else "maeprobe"


# Where an allocation failed -> the step and the limits (maeprobe/limits.py) that bound its size. A checkpoint
# anywhere in the stack is the reading; otherwise the innermost of maeprobe's modules decides.
_MEMORY_STEPS = (
    ("maeprobe.data", "while decoding images", ("MAEPROBE_MAX_IMAGE_PIXELS",)),
    ("maeprobe.results", "while reading a result table", ("MAEPROBE_MAX_TABLE_BYTES", "MAEPROBE_MAX_TABLE_ROWS")),
    ("maeprobe.plots", "while drawing figures", ("MAEPROBE_MAX_TABLE_BYTES", "MAEPROBE_MAX_TABLE_ROWS")),
    ("maeprobe.train", "while training", ("MAEPROBE_MAX_MODEL_BYTES", "MAEPROBE_MAX_BATCH_BYTES")),
    ("maeprobe.", "while computing the metrics", ("MAEPROBE_MAX_METRIC_MEMORY", "MAEPROBE_MAX_PATCHES",
                                                  "MAEPROBE_MAX_ATTENTION")),
)


def _environment_error(exc: BaseException) -> Optional[str]:
    """The one line for an error of the environment rather than of maeprobe's code: an allocation that failed
    (an address-space or container cap), a path the system refused (too long, no permission, a loop of links),
    a full disk; None for anything else (a bug)."""
    import errno
    import re

    from ..errors import out_of_memory

    if out_of_memory(exc):
        frames = _frames(exc)
        if any(f.startswith("maeprobe.checkpoints.") for f in frames):
            step, names = "while reading the checkpoint", ("MAEPROBE_MAX_INFLATE",)
        else:
            innermost = frames[-1] if frames else "maeprobe."
            step, names = next((s, n) for prefix, s, n in _MEMORY_STEPS if innermost.startswith(prefix))
            if innermost.startswith("maeprobe.models") and _where(exc).endswith(("__init__", "build_mae")):
                step, names = "while building the model", ("MAEPROBE_MAX_MODEL_BYTES", "MAEPROBE_MAX_DEPTH")
        want = re.search(r"allocate (\d+) bytes", str(exc)[:2000])
        size = f", {int(want.group(1)):,} bytes at once" if want else ""
        bound = (f"lower {' or '.join(names)} to refuse such inputs before the work starts, "
                 if names else "use a smaller batch, ")
        return (f"ran out of memory {step} (in {_where(exc)}{size}): this process may allocate less than "
                f"maeprobe's limits allow; {bound}or give the process more memory")
    if isinstance(exc, OSError) and exc.filename is not None:
        shown = _shown_path(exc.filename)
        if exc.filename2 is not None:
            shown += f" -> {_shown_path(exc.filename2)}"
        return f"{shown}: cannot use this path ({exc.strerror or type(exc).__name__})"
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return f"cannot write ({exc.strerror}) in {_where(exc)}; free some space or write elsewhere"
    return None
