"""One table of options per daemon, read from flags, ``ZPS_*`` variables and a TOML file.

Precedence: command-line flag > environment variable > TOML file (``--config``) > default.
Every mistake becomes a ``UsageError`` with one line that says how to fix it; the entry
points print it and exit with status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import math
import sys
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn


class UsageError(Exception):
    """A command-line, environment or config-file mistake; the message is one line."""


@dataclass(frozen=True, slots=True)
class Option:
    """A setting: its flag name (``--name``), parser, default, help and allowed values."""

    name: str
    parse: Callable[[str], Any]
    default: Any
    help: str
    choices: tuple[str, ...] | None = None
    flag_only: bool = False

    @property
    def dest(self) -> str:
        return self.name.replace("-", "_")

    @property
    def env(self) -> str:
        return "ZPS_" + self.dest.upper()


MAX_INT = (1 << 63) - 1  # sizes and counts: what msgpack and ZeroMQ's int64 options carry


def positive_int(text: str) -> int:
    value = int(text)
    if not 1 <= value <= MAX_INT:
        raise ValueError(f"must be a positive integer (at most {MAX_INT})")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not (value >= 0 and math.isfinite(value)):
        raise ValueError("must be a finite number >= 0")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not (value > 0 and math.isfinite(value)):
        raise ValueError("must be a finite number > 0")
    return value


def checked(parse_fn: Callable[[str], Any]) -> Callable[[str], str]:
    """A value parser that keeps the text but refuses what ``parse_fn`` refuses."""

    def check(text: str) -> str:
        parse_fn(text)
        return text

    return check


def boolean(text: str) -> bool:
    lowered = str(text).strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be true or false")


_KINDS: dict[Callable[[str], Any], str] = {
    int: "an integer",
    float: "a number",
    positive_int: f"a positive integer (at most {MAX_INT})",
    positive_float: "a finite number > 0",
    non_negative_float: "a finite number >= 0",
    boolean: "true or false",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)")


def parse(
    prog: str,
    description: str,
    options: Sequence[Option],
    argv: Sequence[str] | None,
    environ: Mapping[str, str],
    sources: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Resolve every option to a value; raises ``UsageError`` on any mistake. ``sources``,
    if given, is filled with where each value came from (a flag, a variable, the config
    file, or ``default``)."""
    parser = _Parser(prog=prog, description=description)
    parser.add_argument("--config", metavar="FILE",
                        help="TOML file with settings (keys as the long flags, '-' or '_'); "
                             "env: ZPS_CONFIG")
    for opt in options:
        text = opt.help if opt.flag_only else f"{opt.help}; env: {opt.env}"
        if opt.parse is bool:
            parser.add_argument(f"--{opt.name}", dest=opt.dest, action="store_const",
                                const="true", default=None, help=f"{text} [{opt.default}]")
            continue
        shown = "" if opt.default is None else f" [{opt.default}]"
        parser.add_argument(f"--{opt.name}", dest=opt.dest, default=None,
                            choices=opt.choices, help=f"{text}{shown}",
                            metavar=opt.dest.upper() if not opt.choices else None)
    args = parser.parse_args(argv)
    file_values = _read_toml(args.config or environ.get("ZPS_CONFIG"), options)
    values: dict[str, Any] = {}
    for opt in options:
        raw, source = getattr(args, opt.dest), f"--{opt.name}"
        if raw is None and not opt.flag_only and opt.env in environ:
            raw, source = environ[opt.env], opt.env
        if raw is None and opt.dest in file_values:
            raw, source = file_values[opt.dest], f"{opt.name} in the config file"
        values[opt.dest] = opt.default if raw is None else _convert(opt, raw, source)
        if sources is not None:
            sources[opt.dest] = "default" if raw is None else source
    return values


def _convert(opt: Option, raw: Any, source: str) -> Any:
    parse_fn = boolean if opt.parse is bool else opt.parse
    try:
        value = parse_fn(raw) if isinstance(raw, str) else parse_fn(str(raw))
    except (TypeError, ValueError) as exc:
        expected = _KINDS.get(parse_fn)
        if expected is None:  # a parser of its own: its message says what is expected
            raise UsageError(f"{source}: {exc}") from None
        raise UsageError(f"{source}: invalid value {raw!r}, expected {expected}") from None
    if opt.choices and value not in opt.choices:
        raise UsageError(f"{source}: {value!r} is not one of {', '.join(opt.choices)}")
    return value


def _read_toml(path: str | None, options: Sequence[Option]) -> dict[str, Any]:
    if not path:
        return {}
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except OSError as exc:
        raise UsageError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"config file {path} is not valid TOML: {exc}") from None
    known = {opt.dest for opt in options}
    values = {key.replace("-", "_"): value for key, value in data.items()}
    unknown = sorted(set(values) - known)
    if unknown:
        raise UsageError(f"config file {path}: unknown setting {unknown[0]!r}")
    return values


def run_cli(prog: str, main: Callable[[], int]) -> NoReturn:
    """Run ``main``; a ``UsageError`` becomes one line on stderr and exit status 2."""
    try:
        code = main()
    except UsageError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        code = 2
    except OSError as exc:  # a file or socket the user pointed us at
        print(f"{prog}: error: {exc}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)
