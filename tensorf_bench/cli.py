"""`tensorf-bench`: one CLI with subcommands, built with tyro.

Each subcommand is a dataclass (its docstring is the description, its field docstrings are the
option help) with a ``run()`` method, defined in ``tensorf_bench/commands/``. A subcommand class may
define ``defaults_from_argv(argv)`` to choose its defaults from the command line before parsing
(used for ``--preset``: the preset's values become the defaults that ``--help`` shows and that
options override).

Errors caused by bad input (``tensorf_common.errors.USER_ERRORS``) are printed as one line and the
process exits with status 2; nothing is half-written by the commands.
"""

from __future__ import annotations

import importlib
import sys
from typing import Optional, Sequence

# name -> (module, class). Kept as strings so that `tensorf-bench --help` imports nothing heavy.
COMMANDS: dict[str, tuple[str, str]] = {
    "make-scene": ("tensorf_bench.commands.data", "MakeScene"),
    "inspect": ("tensorf_bench.commands.data", "Inspect"),
    "train": ("tensorf_bench.commands.train", "Train"),
    "eval": ("tensorf_bench.commands.train", "Eval"),
    "render": ("tensorf_bench.commands.train", "Render"),
    "metrics": ("tensorf_bench.commands.metrics", "Metrics"),
    "convert": ("tensorf_bench.commands.convert", "Convert"),
    "parity": ("tensorf_bench.commands.parity", "Parity"),
    "bench": ("tensorf_bench.commands.report", "Bench"),
    "report": ("tensorf_bench.commands.report", "Report"),
    "compare": ("tensorf_bench.commands.report", "Compare"),
}


def _load(name: str):
    module, cls = COMMANDS[name]
    return getattr(importlib.import_module(module), cls)


def _summary(cls) -> str:
    doc = (cls.__doc__ or "").strip()
    return doc.splitlines()[0] if doc else ""


def _usage() -> str:
    lines = [
        "usage: tensorf-bench COMMAND [OPTIONS]",
        "",
        "A PyTorch-interoperable comparison benchmark suite for TensoRF (JAX vs the official",
        "PyTorch semantics). Run `tensorf-bench COMMAND --help` for the options of a command.",
        "",
        "commands:",
    ]
    for name in COMMANDS:
        try:
            summary = _summary(_load(name))
        except (ImportError, AttributeError) as exc:  # a command module that failed to import
            summary = f"(unavailable: {exc})"
        lines.append(f"  {name:<11} {summary}")
    return "\n".join(lines)


SINGLE_OPTIONS = ("--preset",)
"""Options refused when given twice: a preset chooses the defaults before parsing (from its first
value) while the parser keeps the last, so a repeat would train one preset and label it another."""


def _refuse_repeats(argv: Sequence[str]) -> None:
    from tensorf_common.config import ConfigError

    for option in SINGLE_OPTIONS:
        values = [argv[i + 1] if a == option and i + 1 < len(argv) else a.partition("=")[2]
                  for i, a in enumerate(argv) if a == option or a.startswith(option + "=")]
        if len(values) > 1:
            raise ConfigError(f"{option}: given {len(values)} times ({', '.join(values)}); give it once")


def main(argv: Optional[Sequence[str]] = None) -> int:
    import tyro

    from tensorf_common.errors import USER_ERRORS

    if argv is None:  # a real process start: run under the suite's allocator (tensorf_common.runtime)
        from tensorf_common.runtime import reexec_with_allocator

        reexec_with_allocator([sys.executable, "-m", "tensorf_bench.cli", *sys.argv[1:]])
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}; choose one of: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    cls = _load(name)
    try:
        _refuse_repeats(rest)
        default = cls.defaults_from_argv(rest) if hasattr(cls, "defaults_from_argv") else None
        cmd = tyro.cli(
            cls,
            args=rest,
            prog=f"tensorf-bench {name}",
            description=(cls.__doc__ or "").strip(),
            default=default,
        )
        code = cmd.run()
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # tensorf_common.interrupt.TrainingInterrupted says where the run stands
        print(f"error: {exc}" if str(exc) else "error: interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
