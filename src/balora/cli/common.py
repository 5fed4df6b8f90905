"""What every subcommand shares: YAML configs, exit codes, one-line errors (the only argv/YAML reader)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from ..errors import ConfigError

EXIT_OK = 0
EXIT_FAILURE = 1  # an unexpected error (a bug or the environment): rerun with --debug for the traceback
EXIT_USAGE = 2  # bad input: options, config, data, model (the message says what to change)
EXIT_NONFINITE = 3  # the loss became NaN/inf; the last good checkpoint is kept
EXIT_INTERRUPTED = 130  # SIGINT/SIGTERM; a checkpoint was written when training

logger = logging.getLogger("balora")


class DeprecatedAlias(argparse.Action):
    """An old option name that still works for one release, with a warning naming the new one."""

    def __init__(self, *args: Any, new: str, **kwargs: Any) -> None:
        self.new = new
        super().__init__(*args, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        logger.warning("%s is deprecated and goes in the next release; use %s", option_string, self.new)
        setattr(namespace, self.dest, values)


def add_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", type=Path, default=None,
        help="YAML file whose keys are this command's options (dashes or underscores); "
             "options given on the command line win.",
    )


def apply_yaml_config(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parse ``argv`` with defaults taken from ``--config`` (if any); unknown YAML keys are errors."""
    config_path, command = _peek(argv)
    if config_path is not None:
        values = read_yaml(config_path)
        parser = _chosen_subparser(parser, command)
        known = {action.dest: action for action in parser._actions}
        aliases = {option.lstrip("-").replace("-", "_"): action for action in parser._actions
                   if isinstance(action, DeprecatedAlias) for option in action.option_strings}
        defaults: dict[str, Any] = {}
        for key, value in values.items():
            name = str(key).replace("-", "_")
            if name in aliases:  # an old key: still read for one release, with a warning
                logger.warning("config key %r is deprecated and goes in the next release; use %r", key,
                               aliases[name].new.lstrip("-").replace("-", "_"))
                name = aliases[name].dest
            if name not in known or name in ("help", "config"):
                options = sorted(d for d in known if d not in ("help", "config"))
                raise ConfigError(f"config key {key!r} in {config_path} does not exist; "
                                  f"the keys are: {', '.join(options)}.")
            defaults[name] = _coerce(known[name], value, key)
        parser.set_defaults(**defaults)
        for action in parser._actions:  # required options may come from the YAML file
            if action.dest in defaults:
                action.required = False
    return top.parse_args(argv) if (top := getattr(parser, "_balora_top", None)) else parser.parse_args(argv)


def _peek(argv: list[str]) -> tuple[Path | None, str | None]:
    """(--config value, subcommand) read before parsing: required options may live in the YAML file."""
    config = command = None
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            config = Path(argv[i + 1])
        elif arg.startswith("--config="):
            config = Path(arg.split("=", 1)[1])
        elif command is None and not arg.startswith("-"):
            command = arg
    return config, command


def _chosen_subparser(parser: argparse.ArgumentParser, command: str | None) -> argparse.ArgumentParser:
    """The subcommand's own parser (its options are the valid YAML keys), linked back to the top parser."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and command in action.choices:
            sub = action.choices[command]
            sub._balora_top = parser
            return sub
    return parser


def _coerce(action: argparse.Action, value: Any, key: str) -> Any:
    if value is None:
        return None
    try:
        if action.nargs in ("*", "+") or isinstance(action, argparse._AppendAction):
            if isinstance(value, dict):  # a mapping for a list option: KEY=V1,V2 entries (compare's --grid)
                value = [f"{k}={','.join(map(str, v if isinstance(v, list) else [v]))}" for k, v in value.items()]
            items = value if isinstance(value, list) else [value]
            return [action.type(v) if action.type else v for v in items]
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            if not isinstance(value, bool):
                raise ValueError("expected true or false")
            return value
        converted = action.type(value) if action.type else value
    except argparse.ArgumentTypeError as exc:  # the settings schema's own message
        raise ConfigError(f"config key {key!r}: {str(exc).rstrip('.')}.") from exc
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"config key {key!r}: {value!r} is not valid ({exc}).") from exc
    if action.choices is not None and converted not in action.choices:
        raise ConfigError(f"config key {key!r}: {value!r} is not one of {', '.join(map(str, action.choices))}.")
    return converted


def read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist.")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of option: value.")
    return data


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {value}")
    return value
