"""Option dataclasses: fields that declare their flag (help, choices, checks), the shared checks, and the Click
options and argparse arguments generated from the fields, so each default and each rule is written once.

    @dataclass(frozen=True)
    class ServeLimits(Options):
        max_queue: int = option(256, "Most requests waiting (else 429 + Retry-After).", checks=[positive])

    @click_options(ServeLimits)            # --max-queue INTEGER  ...  [default: 256]
    def serve(**flags): limits = ServeLimits.from_flags(**flags)

`ServeLimits(max_queue=0)` raises `OptionError("--max-queue must be >= 1, got 0")`. Standard library only (Click is
imported by `click_options` alone), so any stage module can declare its options here.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, ClassVar, TypeVar

# What is wrong with a value ("must be >= 1"), or None when it is fine. A value of None is never checked.
Check = Callable[[Any], "str | None"]
TYPES: dict[str, type] = {"int": int, "float": float, "str": str, "bool": bool}
T = TypeVar("T", bound="Options")


class OptionError(ValueError):
    """An option value that cannot work; the message names the flag: "--max-queue must be >= 1, got 0"."""


# --- the shared checks ----------------------------------------------------------------------------------------


def positive(value: float) -> str | None:
    """Whole numbers >= 1; other numbers > 0."""
    if isinstance(value, int):
        return None if value >= 1 else "must be >= 1"
    return None if value > 0 else "must be > 0"


def non_negative(value: float) -> str | None:
    return None if value >= 0 else "must be >= 0"


def positive_ints(values: Sequence[int]) -> str | None:
    """A non-empty list of whole numbers >= 1 (thread counts, batch sizes)."""
    if not values or any(not isinstance(n, int) or n < 1 for n in values):
        return "must be whole numbers >= 1"
    return None


def in_range(low: float, high: float, *, high_open: bool = False) -> Check:
    """low <= value <= high, or < high with `high_open`; the message names the interval: [low, high] or [low, high)."""
    interval = f"[{low}, {high}{')' if high_open else ']'}"

    def check(value: float) -> str | None:
        below_high = value < high if high_open else value <= high
        return None if low <= value and below_high else f"must be in {interval}"

    return check


def split_commas(text: str, flag: str) -> list[str]:
    """'a, b,' -> ['a', 'b']: a flag that takes comma-separated names (the checks judge an empty list)."""
    return [part.strip() for part in text.split(",") if part.strip()]


# --- fields ---------------------------------------------------------------------------------------------------


def option(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    choices: Sequence[str] | None = None,
    checks: Iterable[Check] = (),
    flags: Sequence[str] = (),
    negatable: bool = False,
    show_default: bool | None = None,
    parse: Callable[[str, str], Any] | None = None,
    cli_default: Callable[[], Any] | None = None,
) -> Any:
    """A dataclass field that is also a flag, `--` + its name with dashes unless `flags` names it.

    choices: the values it takes. checks: run by `Options.__post_init__`, each a `Check`. negatable: a boolean flag
    with a --no- form (always so when it defaults to True). show_default: whether --help shows the default (by
    default: when it is not None and not a boolean). parse(text, flag): the flag takes text that becomes the value
    (e.g. comma-separated numbers); a list default is shown comma-separated. cli_default(): the flag's default
    when the command line's differs from the library's (e.g. one worker per core); --help then shows none.
    A field without a default is still an optional flag: the command decides what its absence means.
    """
    metadata = {"help": help, "choices": tuple(choices) if choices else None, "checks": tuple(checks)}
    metadata |= {"flags": tuple(flags), "negatable": negatable, "show_default": show_default}
    metadata |= {"parse": parse, "cli_default": cli_default}
    return dataclasses.field(default=default, metadata=metadata)


def nested(options: type[Options]) -> Any:
    """A field holding another options dataclass, whose flags appear in its place (e.g. serve's limits)."""
    return dataclasses.field(default_factory=options, metadata={"nested": options})


def flag_fields(cls: type) -> Iterator[dataclasses.Field]:
    """The fields of `cls` that are flags or nested options, in declaration order."""
    return (spec for spec in dataclasses.fields(cls) if "help" in spec.metadata or "nested" in spec.metadata)


def flag_of(spec: dataclasses.Field) -> str:
    return (spec.metadata.get("flags") or ("--" + spec.name.replace("_", "-"),))[0]


def base_type(spec: dataclasses.Field) -> type:
    return TYPES.get(str(spec.type).removesuffix(" | None"), str)


def shown(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(list(value) if isinstance(value, (list, tuple)) else value)


# --- the dataclasses ------------------------------------------------------------------------------------------


class Options:
    """Base of the option dataclasses: construction runs every field's choices and checks, raising `error`."""

    error: ClassVar[type[ValueError]] = OptionError

    def __post_init__(self) -> None:
        for spec in flag_fields(type(self)):
            if "help" in spec.metadata:
                self.check_value(spec.name, getattr(self, spec.name))

    @classmethod
    def check_value(cls, name: str, value: Any) -> None:
        """Raise `cls.error` naming the flag if field `name` may not hold `value`."""
        spec = next(spec for spec in dataclasses.fields(cls) if spec.name == name)
        choices = spec.metadata["choices"]
        if value is None:
            return
        if choices and value not in choices:
            raise cls.error(f"{flag_of(spec)} must be one of {', '.join(choices)}, got {shown(value)}")
        for check in spec.metadata["checks"]:
            if problem := check(value):
                raise cls.error(f"{flag_of(spec)} {problem}, got {shown(value)}")

    @classmethod
    def flag_values(cls, **flags: Any) -> dict[str, Any]:
        """The field values a command's flags give: texts parsed, a flag not given (None) left to the field's
        default or to its `cli_default`, nested options built. Names that are not flags of `cls` are ignored."""
        values: dict[str, Any] = {}
        for spec in flag_fields(cls):
            if "nested" in spec.metadata:
                values[spec.name] = spec.metadata["nested"].from_flags(**flags)
                continue
            value = flags.get(spec.name)
            if value is None and spec.metadata["cli_default"]:
                value = spec.metadata["cli_default"]()
            elif isinstance(value, str) and spec.metadata["parse"]:
                value = spec.metadata["parse"](value, flag_of(spec))
            if value is not None:
                values[spec.name] = value
        return values

    @classmethod
    def from_flags(cls: type[T], **flags: Any) -> T:
        """The options a command's flags (as `click_options` passes them) ask for."""
        return cls(**cls.flag_values(**flags))


# --- generated parsers ----------------------------------------------------------------------------------------


def click_options(cls: type, *, only: Sequence[str] | None = None, exclude: Sequence[str] = ()) -> Callable:
    """Decorator: a Click option per flag field of `cls` (nested options expanded in place), in declaration order;
    `only` picks some, in its order, `exclude` leaves some out (to place a hand-written option between)."""
    specs = {spec.name: spec for spec in flag_fields(cls)}
    names = [name for name in (only if only is not None else specs) if name not in exclude]

    def decorate(function: Callable) -> Callable:
        for name in reversed(names):
            spec = specs[name]
            if "nested" in spec.metadata:
                function = click_options(spec.metadata["nested"])(function)
            else:
                function = click_option(spec)(function)
        return function

    return decorate


def click_option(spec: dataclasses.Field) -> Callable:
    import click

    meta, kind = spec.metadata, base_type(spec)
    default = None if spec.default is dataclasses.MISSING or meta["cli_default"] else spec.default
    flags = list(meta["flags"] or (flag_of(spec),))
    if kind is bool:
        if meta["negatable"] or default:
            flags[0] += f"/--no-{flags[0][2:]}"
        return click.option(
            *flags,
            spec.name,
            is_flag=True,
            default=bool(default),
            show_default=bool(meta["show_default"]),
            help=meta["help"],
        )
    show = default is not None if meta["show_default"] is None else meta["show_default"]
    if meta["parse"]:
        kind = str
        default = ",".join(map(str, default)) if isinstance(default, (list, tuple)) else default
    return click.option(
        *flags,
        spec.name,
        type=click.Choice(meta["choices"]) if meta["choices"] else kind,
        default=default if show else None,
        show_default=show,
        help=meta["help"],
    )


def add_arguments(parser: argparse.ArgumentParser, cls: type) -> argparse.ArgumentParser:
    """An argparse option per field of `cls` (a flat dataclass: TrainConfig), its help ending in the default;
    booleans get a --no- form."""
    for spec in flag_fields(cls):
        help_text = f"{spec.metadata['help']} (default: {spec.default})"
        if base_type(spec) is bool:
            parser.add_argument(
                flag_of(spec), action=argparse.BooleanOptionalAction, default=spec.default, help=help_text
            )
        else:
            parser.add_argument(
                flag_of(spec),
                type=base_type(spec),
                default=spec.default,
                choices=spec.metadata["choices"],
                help=help_text,
            )
    return parser


# The --variant flag's help, shared by `predict` and `serve`.
VARIANT_HELP = (
    "Bundle variant: fp32, optimized, int8, static-int8, openvino-f32, openvino-bf16 (with OpenVINO installed). "
    "Default: the fastest on this CPU (by export-onnx's "
    "timings; re-timed at load on another CPU) of those whose scores do not depend on the batch, static-int8 only "
    "when >10% faster than fp32/optimized; dynamic int8, whose scores move with batch mates, only by name."
)
