"""Command line (typer): thin commands that parse, call the API and print. One module per group of commands:

* ``probe``: one command per registered metric (``maeprobe/metrics/registry.py``) and ``run``;
* ``inspect``: ``info``, ``render-attn``, ``figures``;
* ``train``: ``pretrain`` and the ``recipe`` group;
* ``findings``: ``reproduce`` and ``demo``;
* ``common``: one-line errors, printing on the main process, the shared options.

Heavy imports happen inside the commands, so that ``maeprobe --help`` stays fast.
"""
from __future__ import annotations

import sys

import typer

try:  # newer typer carries its own copy of click: its exceptions are the ones raised
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover - typer on the real click
    from click import exceptions as click_errors
from typer.core import TyperGroup

from . import findings, inspect, probe, train
from .common import _echo, _fail, _friendly  # noqa: F401  (tests and plug-ins use them)


class OneLineErrors(TyperGroup):
    """Command-line mistakes (unknown option, a value of the wrong type or out of range, a missing argument) end
    with one line ``error: ...`` and exit status 2, like every other refusal, instead of click's usage block."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            code = super().main(args=args, prog_name=prog_name, complete_var=complete_var, standalone_mode=False,
                                **extra)
        except click_errors.NoArgsIsHelpError as exc:  # a bare group prints its help, as before
            typer.echo(exc.ctx.get_help() if exc.ctx else str(exc))
            code = 2
        except click_errors.UsageError as exc:
            hint = f" (see {exc.ctx.command_path} --help)" if exc.ctx is not None else ""
            _fail(exc.format_message() + hint)
        except click_errors.ClickException as exc:
            _fail(exc.format_message())
        except KeyboardInterrupt:  # outside a command (inside, ``_friendly`` says the same)
            typer.echo("interrupted", err=True)
            code = 130
        if not standalone_mode:
            return code
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(cls=OneLineErrors, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  rich_markup_mode=None,  # plain click help: rich's panels print "<bool>" beside every flag
                  help="Look inside pretrained MAE / ViT checkpoints.")


def _version(value: bool) -> None:
    if value:
        from .. import __version__

        typer.echo(f"maeprobe {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """Look inside pretrained MAE / ViT checkpoints."""


probe.register_commands(app)
for _group in (inspect, findings, train):
    app.registered_commands += _group.app.registered_commands
app.add_typer(train.recipe_app, name="recipe", short_help="Bundled pretraining and evaluation recipes.")


def main() -> None:
    app()
