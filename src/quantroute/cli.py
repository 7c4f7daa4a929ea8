"""The ``quantroute`` command: parse arguments, load config, call one function. No logic here."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from quantroute import __version__
from quantroute.errors import ConfigError
from quantroute.extras import MissingExtra, require


def _serve(args: argparse.Namespace) -> int:
    from quantroute.serve import serve

    return serve(
        args.config,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        workers=args.workers,
    )


def _check_config(args: argparse.Namespace) -> int:
    from quantroute.serve import check_config

    return check_config(args.config)


def _simulate(args: argparse.Namespace) -> int:
    from quantroute.sim.command import simulate_main

    return simulate_main(args.config, args.time_scale, args.seed)


def _demo(args: argparse.Namespace) -> int:
    if args.traffic:
        require("demo", "demo --traffic", "openai")
    from quantroute.demo import demo_main

    return demo_main(
        port=args.port, traffic=args.traffic, time_scale=args.time_scale, duration_s=args.duration
    )


def _check_vllm_args(args: argparse.Namespace) -> int:
    from quantroute.preflight import check_vllm_args_main

    return check_vllm_args_main(list(args.vllm_args), args.gateway_config, args.fail_on)


def _gen_key(args: argparse.Namespace) -> int:
    from quantroute.access.keygen import gen_key_main

    return gen_key_main(args.name, raw=args.raw, admin=args.admin)


def _hash_key(args: argparse.Namespace) -> int:
    from quantroute.access.keygen import hash_key_main

    return hash_key_main()


def _parser(command: str = "") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="quantroute", description="Route OpenAI-compatible traffic across a vLLM fleet."
    )
    parser.add_argument("--version", action="version", version=f"quantroute {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the gateway")
    p.add_argument("--config", required=True, help="gateway YAML file")
    p.add_argument("--host", default=None, help="override listen.host")
    p.add_argument("--port", type=int, default=None, help="override listen.port")
    p.add_argument("--log-level", default="info")
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="gateway processes sharing the port (SO_REUSEPORT), each with its own state",
    )
    p.set_defaults(func=_serve)

    p = sub.add_parser("check-config", help="validate a gateway config and print it resolved")
    p.add_argument("config")
    p.set_defaults(func=_check_config)

    p = sub.add_parser("simulate", help="run simulated vLLM backends on loopback")
    p.add_argument("--config", default=None, help="fleet YAML (default: the packaged fleet)")
    p.add_argument("--time-scale", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.set_defaults(func=_simulate)

    p = sub.add_parser("demo", help="simulated fleet + gateway on 127.0.0.1, no GPU needed")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument(
        "--traffic", action="store_true", help="drive a mixed workload, show a live view"
    )
    p.add_argument("--time-scale", type=float, default=1.0)
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    p.set_defaults(func=_demo)

    p = sub.add_parser("check-vllm-args", help="pre-flight check of `vllm serve` arguments")
    p.add_argument("--gateway-config", default=None)
    p.add_argument(
        "--fail-on",
        choices=("warning", "error"),
        default="warning",
        help="exit non-zero on warnings (default) or only on errors (init containers)",
    )
    p.add_argument("vllm_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=_check_vllm_args)

    p = sub.add_parser("gen-key", help="make a new API key and print its keys.yaml entry")
    p.add_argument("--name", default="my-key", help="the key's name (metric label, logs)")
    p.add_argument("--raw", action="store_true", help="print only the key (e.g. for a Secret)")
    p.add_argument("--admin", action="store_true", help="an admin key for every model")
    p.set_defaults(func=_gen_key)

    p = sub.add_parser("hash-key", help="read a key on stdin, print its SHA-256 for keys.yaml")
    p.set_defaults(func=_hash_key)

    _add_optional(sub, command)
    return parser


def _add_optional(sub: argparse._SubParsersAction[argparse.ArgumentParser], command: str) -> None:
    """`profile` and `matrix` register their own arguments. Their heavy imports (the OpenAI client,
    matplotlib) belong to the optional `profiler` extra and load only when a command runs, so the
    gateway's commands and every `--help` work without it."""
    if command == "tune":
        from quantroute.tune.command import register as register_tune

        register_tune(sub)
    else:
        sub.add_parser(
            "tune", help="replay a decision log under candidate policies (quantroute tune -h)"
        )
    if command in ("profile", "matrix"):
        from quantroute.profiler.command import register

        register(sub)
        return
    sub.add_parser("profile", help="measure every variant and write the capability matrix")
    sub.add_parser("matrix", help="show or plot a capability matrix (matrix show|plot FILE)")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser(argv[0] if argv else "").parse_args(argv)
    if getattr(args, "vllm_args", None) and args.vllm_args[0] == "--":
        args.vllm_args = args.vllm_args[1:]
    try:
        result: int = args.func(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except MissingExtra as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return result


if __name__ == "__main__":
    sys.exit(main())
