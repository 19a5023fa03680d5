"""``edgeops-agent``: run the device agent, and look after its state directory.

Examples::

    edgeops-agent run --config /etc/edgeops-agent/agent.toml
    edgeops-agent status --config agent.toml
    edgeops-agent rollback --config agent.toml
    edgeops-agent predict --config agent.toml --json '{"rows": [{"temp": 21.5}]}'

Each command loads the configuration, calls one function of the library, and
turns its errors into a one-line message and a non-zero exit status (2 for a bad
configuration or usage, 1 otherwise). argparse only: nothing heavy on a device.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from collections.abc import Sequence
from typing import Any

from . import __version__
from .config import AgentConfig, load_config
from .errors import AgentError, ConfigError

__all__ = ["main"]

COMMANDS = {
    "run": "run the agent until stopped (SIGTERM or Ctrl-C)",
    "status": "print a summary of the state directory (active model, previous, deployment)",
    "rollback": "switch back to the previous model now; works offline, reported on next connect",
    "predict": "predict with the active model: --json '{\"rows\": [...]}' or '{\"features\": ...}'",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgeops-agent",
        description="The edgeops device agent: signed model deployments over MQTT.",
        epilog="example: edgeops-agent run --config /etc/edgeops-agent/agent.toml",
    )
    parser.add_argument("--version", action="version", version=f"edgeops-agent {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, text in COMMANDS.items():
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("--config", "-c", required=True, help="the agent's TOML file")
        if name == "run":
            p.add_argument(
                "--log-level",
                choices=["debug", "info", "warning", "error"],
                help="overrides log_level of the config",
            )
        if name == "status":
            p.add_argument("--json", action="store_true", help="print state.json as JSON")
        if name == "rollback":
            p.add_argument(
                "--reason",
                default="local rollback (edgeops-agent rollback)",
                help="the reason reported in the rolled_back event",
            )
        if name == "predict":
            p.add_argument(
                "--json",
                dest="body",
                required=True,
                help='request body: {"rows": [...]} or {"features": [[...]]}',
            )
    return parser


def _run(config: AgentConfig, args: argparse.Namespace) -> int:
    from .agent import Agent

    level = (args.log_level or config.log_level).upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    agent = Agent(config)

    def _stop(signum: int, frame: Any) -> None:
        agent.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    agent.run_forever()
    return 0


def _predict(config: AgentConfig, body_text: str) -> int:
    from .errors import PredictionError
    from .local import load_predictor

    try:
        body = json.loads(body_text)
    except ValueError as exc:
        raise ConfigError(f"--json is not valid JSON: {exc}") from exc
    if not isinstance(body, dict) or ("rows" in body) == ("features" in body):
        raise ConfigError('--json must be {"rows": [...]} or {"features": [[...]]}')
    predictor = load_predictor(config)
    try:
        if "rows" in body:
            out = predictor.predict_rows(body["rows"])
        else:
            out = predictor.predict_features(body["features"])
    except PredictionError as exc:
        raise AgentError(str(exc).splitlines()[0]) from exc
    model = predictor.model
    print(json.dumps({"model": model.ref() if model else None, "predictions": out}))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = load_config(args.config)
        if args.command == "run":
            return _run(config, args)
        if args.command == "predict":
            return _predict(config, args.body)
        from . import local

        if args.command == "status":
            state = local.status(config)
            if args.json:
                print(json.dumps(state, indent=1, sort_keys=True))
            else:
                print("\n".join(local.status_lines(config, state)))
            return 0
        old, new = local.rollback(config, args.reason)
        print(
            f"rolled back from {old['name']} v{old['version']} (seq {old['seq']}) to "
            f"{new['name']} v{new['version']} (seq {new['seq']})"
        )
        return 0
    except ConfigError as exc:
        print(f"edgeops-agent: error: {exc}", file=sys.stderr)
        return 2
    except AgentError as exc:
        print(f"edgeops-agent: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
