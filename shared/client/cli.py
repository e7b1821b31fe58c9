"""The `restem` command line.

    restem up | down | status             the local stack
    restem run CONFIG [--watch]            start a run (validated here first)
    restem watch | status | cancel RUN     follow, inspect or stop a run
    restem list                            all runs
    restem report RUN [--json] [--out DIR] the report of a finished run (DIR gets its .md and plots)
    restem compare RUN RUN...              finished runs side by side
    restem demo                            the main job: up, run the arithmetic demo, report, down
    restem lineage | reverify | recover    provenance (see shared/client/provenance.py)
    restem run --from RUN --iteration N    fork a finished run from an iteration

Exit codes: 0 ok, 1 unexpected error, 2 invalid input (config, arguments), 3 not found,
4 wrong state (e.g. cancelling a finished run), 5 the coordinator is unreachable, 6 the run failed,
7 the API refused the bearer token (UNAUTHENTICATED), 8 `lineage --check` found an artifact changed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

EXIT_INVALID, EXIT_NOT_FOUND, EXIT_STATE, EXIT_UNAVAILABLE, EXIT_RUN_FAILED = 2, 3, 4, 5, 6
EXIT_UNAUTHENTICATED = 7
# The exit code of each gRPC status (by name), for the API's errors and the same errors found locally.
EXIT_CODES = {
    "INVALID_ARGUMENT": EXIT_INVALID,
    "NOT_FOUND": EXIT_NOT_FOUND,
    "ALREADY_EXISTS": EXIT_INVALID,
    "FAILED_PRECONDITION": EXIT_STATE,
    "UNAVAILABLE": EXIT_UNAVAILABLE,
    "UNAUTHENTICATED": EXIT_UNAUTHENTICATED,
}
DEMO_CONFIG = Path(__file__).resolve().parents[2] / "examples" / "arithmetic-demo.yaml"


class CliError(Exception):
    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def _console() -> Console:
    from rich.console import Console

    console = Console(highlight=False)
    if not console.is_terminal:
        # Piped output (grep, logs) must not wrap run ids across lines.
        console = Console(highlight=False, width=200)
    return console


def _address(args: argparse.Namespace) -> str:
    from shared.client.stack import load_stack

    if args.address:
        return str(args.address)
    if os.environ.get("RESTEM_ADDRESS"):
        return os.environ["RESTEM_ADDRESS"]
    stack = load_stack(args.state_dir)
    if stack is None:
        raise CliError(
            "no local stack is running: start one with `restem up`, or pass --address HOST:PORT",
            EXIT_UNAVAILABLE,
        )
    return stack.coordinator


def _token(args: argparse.Namespace) -> str | None:
    """--token-file, else $RESTEM_API_TOKEN_FILE / $RESTEM_API_TOKEN, else the local stack's token."""
    from shared.auth import TokenError, client_token
    from shared.client.stack import load_stack

    try:
        token = client_token(args.token_file)
        if token is None and not args.address and not os.environ.get("RESTEM_ADDRESS"):
            stack = load_stack(args.state_dir)
            if stack is not None and stack.token_file is not None:
                token = client_token(stack.token_file)
    except TokenError as exc:
        raise CliError(str(exc), EXIT_INVALID) from None
    return token


def _client(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from shared.client.client import RunClient

    return RunClient(_address(args), token=_token(args))


def validate_locally(path: Path) -> str:
    """Check a run config before anything starts: schema, base model, dataset files."""
    from shared.client.files import names_stored_files
    from shared.configio import ConfigError
    from shared.models import ModelNotFound, hub_id, resolve_model_source
    from shared.runconfig import load_run_config
    from shared.tasks import DatasetError, build_splits, build_transfer_sets

    try:
        cfg = load_run_config(path)
        stored = cfg.model.base.startswith(("sha256:", "s3://")) or hub_id(cfg.model.base)
        if not stored:  # a stored or Hub model: the coordinator and the trainer check it
            resolve_model_source(cfg.model.base)
        if not names_stored_files(path.read_text()):  # those the coordinator checks when the run starts
            build_splits(cfg.task)
            build_transfer_sets(cfg.evaluation)
    except (ConfigError, ModelNotFound, DatasetError) as exc:
        raise CliError(str(exc), EXIT_CODES[exc.status]) from None
    return path.read_text()


def with_mlflow(config_yaml: str, uri: str | None) -> str:
    """The config with `tracking.mlflow.tracking_uri` set to `uri` (`--mlflow`); unchanged without one."""
    if not uri:
        return config_yaml
    import yaml

    from shared.configio import ConfigError
    from shared.runconfig import parse_run_config

    doc = yaml.safe_load(config_yaml) or {}
    mlflow = doc.setdefault("tracking", {}).setdefault("mlflow", None) or {}
    doc["tracking"]["mlflow"] = {**mlflow, "tracking_uri": uri}
    text = yaml.safe_dump(doc, sort_keys=False)
    try:
        parse_run_config(text, source="--mlflow")
    except ConfigError as exc:
        raise CliError(str(exc), EXIT_CODES[exc.status]) from None
    return text


def report_location(args: argparse.Namespace, report_key: str) -> str:
    """Where a user opens the report: the Markdown file of a local stack's store, else the store URI."""
    from shared.client.stack import load_stack

    stack = None if args.address or os.environ.get("RESTEM_ADDRESS") else load_stack(args.state_dir)
    store = stack.info["store"] if stack is not None else {}
    markdown = report_key.rsplit("/", 1)[0] + "/report.md"
    if store.get("kind") == "local":
        return str(Path(store["root"]).joinpath(*markdown.split("/")))
    if store.get("kind") == "s3":
        return f"s3://{store['bucket']}/{markdown}"
    return f"{markdown} in the coordinator's store"


def _finish(args: argparse.Namespace, run_id: str) -> int:
    from shared.client.display import follow, iterations_table, status_name

    console = _console()
    with _client(args) as client:
        run = follow(client.watch_run(run_id), console)
        console.print()
        if run.report_key:
            console.print(iterations_table(client.report(run_id)))
            console.print(f"report: {report_location(args, run.report_key)} (restem report {run_id})")
        if status_name(run) != "succeeded":
            console.print(f"run {run_id} {status_name(run)}: {run.error}")
            return EXIT_RUN_FAILED
    return 0


def _fork_request(args: argparse.Namespace) -> dict[str, Any]:
    if not args.from_run:
        if args.config is None:
            raise CliError("give a run config (or --from RUN --iteration N to fork a run)", EXIT_INVALID)
        if args.iteration or args.reverification:
            raise CliError("--iteration and --reverification go with --from RUN", EXIT_INVALID)
        return {}
    if args.iteration < 1:
        raise CliError(
            "--from needs --iteration N (1 or more): the iteration to re-filter and retrain", EXIT_INVALID
        )
    return {
        "from_run": args.from_run,
        "from_iteration": args.iteration,
        "from_reverification": args.reverification,
    }


def cmd_run(args: argparse.Namespace) -> int:
    import grpc

    from shared.client.files import upload_files

    fork = _fork_request(args)
    config_yaml = validate_locally(args.config) if args.config is not None else ""
    config_yaml = with_mlflow(config_yaml, getattr(args, "mlflow", None)) if config_yaml else config_yaml
    with _client(args) as client:
        config_yaml, names = upload_files(config_yaml, client) if config_yaml else ("", {})
        try:
            run = client.start_run(config_yaml, **fork)
        except grpc.RpcError as exc:  # name uploaded files as the user knows them
            message = exc.details() or ""
            for name, path in names.items():
                message = message.replace(name, path)
            raise CliError(f"{message} ({exc.code().name})", EXIT_CODES.get(exc.code().name, 1)) from None
    print(f"started run {run.run_id}")
    return _finish(args, run.run_id) if args.watch else 0


def cmd_watch(args: argparse.Namespace) -> int:
    return _finish(args, args.run)


def cmd_status(args: argparse.Namespace) -> int:
    from rich.table import Table

    console = _console()
    if args.run is None:
        from shared.client.stack import status

        rows = status(args.state_dir)
        if not rows:
            print("the local stack is not running (start it with `restem up`)")
            return EXIT_UNAVAILABLE
        table = Table()
        for col in ("process", "pid", "address", "health", "metrics"):
            table.add_column(col)
        for r in rows:
            table.add_row(r["name"], r["pid"], r["address"], r["health"], r.get("metrics", ""))
        console.print(table)
        return 0 if all(r["health"] in ("SERVING", "RUNNING") for r in rows) else 1
    from google.protobuf.json_format import MessageToDict

    with _client(args) as client:
        run = client.get_run(args.run)
    doc = MessageToDict(run, preserving_proto_field_name=True)
    doc.pop("config_yaml", None)
    print(json.dumps(doc, indent=2))
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    from shared.client.display import status_name

    with _client(args) as client:
        run = client.cancel_run(args.run)
    print(f"run {run.run_id} {status_name(run)}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from shared.client.display import runs_table

    with _client(args) as client:
        runs = client.list_runs()
    if not runs:
        print("no runs yet (start one with `restem run CONFIG`)")
        return 0
    _console().print(runs_table(runs))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from shared.client.display import iterations_table, sampled_table

    with _client(args) as client:
        report, files = client.report_files(args.run)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        console = _console()
        console.print(iterations_table(report))
        sampled = sampled_table(report)
        if sampled is not None:
            console.print(sampled)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "report.json").write_text(json.dumps(report, indent=2))
        for name, data in files.items():
            (args.out / name).write_bytes(data)
        print(f"wrote report.json and {', '.join(sorted(files))} to {args.out}", file=sys.stderr)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from shared.client.display import compare_notes, compare_table

    with _client(args) as client:
        reports = [client.report(run) for run in args.runs]
    console = _console()
    console.print(compare_table(reports))
    for note in compare_notes(reports):
        console.print(note, markup=False)
    return 0


def _s3_from_args(args: argparse.Namespace) -> object:
    if not getattr(args, "s3_endpoint", None):
        return None
    from pydantic import ValidationError

    from shared.infra import StoreConfig

    try:
        return StoreConfig(kind="s3", endpoint=args.s3_endpoint, bucket=args.s3_bucket, secure=args.s3_secure)
    except ValidationError as exc:
        raise CliError(exc.errors()[0]["msg"].removeprefix("Value error, "), EXIT_INVALID) from None


def cmd_up(args: argparse.Namespace) -> int:
    from shared.client.stack import up

    stack = up(args.state_dir, s3=_s3_from_args(args), auth=args.auth, log_format=args.log_format)  # type: ignore[arg-type]
    print(f"local stack up (state in {stack.state_dir}); coordinator at {stack.coordinator}")
    if stack.token_file is not None:
        print(f"API bearer token in {stack.token_file} (this CLI sends it to the local stack)")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    from shared.client.stack import down

    print("local stack stopped" if down(args.state_dir) else "no local stack was running")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from shared.client.stack import down, load_stack, up

    started = load_stack(args.state_dir) is None
    print(
        "starting the local stack (nats-server, local store, five services)..."
        if started
        else "using the running local stack"
    )
    up(args.state_dir)
    try:
        args.watch = True
        return cmd_run(args)
    finally:
        if started and not args.keep_up:
            down(args.state_dir)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="restem", description="ReST-EM self-training: run and follow EM iterations."
    )
    parser.add_argument(
        "--address", help="coordinator host:port (default: $RESTEM_ADDRESS or the local stack)"
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="local stack state directory (default: $RESTEM_HOME or ./.restem)",
    )
    parser.add_argument(
        "--token-file",
        type=Path,
        default=None,
        help="file with the API bearer token (default: $RESTEM_API_TOKEN_FILE, $RESTEM_API_TOKEN "
        "or the local stack's)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_stack_commands(sub)
    _add_run_commands(sub)
    return parser


def _add_stack_commands(sub: Any) -> None:
    """The local stack: up, down, status, demo."""
    from shared.client.provenance import NOT_A_FORK

    p = sub.add_parser("up", help="start the local stack")
    p.add_argument(
        "--s3-endpoint", help="use this S3 endpoint (host:port) instead of a local directory store"
    )
    p.add_argument("--s3-bucket", default="restem", help="S3 bucket (default: restem; created if missing)")
    p.add_argument("--s3-secure", action="store_true", help="talk TLS to the S3 endpoint")
    p.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="service log lines: text (default) or json (one object per line with run and job ids)",
    )
    p.add_argument(
        "--auth",
        action="store_true",
        help="require a bearer token on every RPC (generated into the state dir)",
    )
    p.set_defaults(func=cmd_up)
    sub.add_parser("down", help="stop the local stack").set_defaults(func=cmd_down)
    p = sub.add_parser("status", help="health of the local stack, or the state of RUN")
    p.add_argument("run", nargs="?", help="a run id")
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("demo", help="ReST-EM on arithmetic with SmolLM2-135M on CPU, through the local stack")
    p.add_argument(
        "--config", type=Path, default=DEMO_CONFIG, help="run config (default: examples/arithmetic-demo.yaml)"
    )
    p.add_argument("--keep-up", action="store_true", help="leave the local stack running afterwards")
    p.add_argument(
        "--mlflow",
        metavar="URI",
        help="track the run in this MLflow server (sets tracking.mlflow.tracking_uri), e.g. http://127.0.0.1:5000",
    )
    p.set_defaults(func=cmd_demo, **NOT_A_FORK)


def _add_run_commands(sub: Any) -> None:
    """Runs on any coordinator: run, watch, cancel, list, report, compare."""
    from shared.client.provenance import add_commands, add_fork_arguments

    p = sub.add_parser("run", help="start a run from a YAML config, or fork one (--from)")
    p.add_argument("config", type=Path, nargs="?", help="run config (see examples/)")
    add_fork_arguments(p)
    p.add_argument(
        "--watch", action="store_true", help="follow progress until the run ends, then print its table"
    )
    p.add_argument(
        "--mlflow",
        metavar="URI",
        help="track the run in this MLflow server (sets tracking.mlflow.tracking_uri), e.g. http://127.0.0.1:5000",
    )

    p.set_defaults(func=cmd_run)
    for name, func, text in (("watch", cmd_watch, "follow a run"), ("cancel", cmd_cancel, "cancel a run")):
        p = sub.add_parser(name, help=text)
        p.add_argument("run", help="a run id")
        p.set_defaults(func=func)
    sub.add_parser("list", help="list runs").set_defaults(func=cmd_list)
    p = sub.add_parser("report", help="the report of a finished run")
    p.add_argument("run", help="a run id")
    p.add_argument("--json", action="store_true", help="print the JSON document")
    p.add_argument(
        "--out", type=Path, help="also write report.json, report.md and the PNG plots into this directory"
    )
    p.set_defaults(func=cmd_report)
    add_commands(sub, _client)
    p = sub.add_parser("compare", help="finished runs side by side")
    p.add_argument("runs", nargs="+", help="run ids")
    p.set_defaults(func=cmd_compare)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    import grpc

    from shared.client.stack import StackError

    try:
        code = args.func(args)
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = exc.code
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = EXIT_UNAVAILABLE
    except grpc.RpcError as exc:
        print(f"error: {exc.details()} ({exc.code().name})", file=sys.stderr)
        code = EXIT_CODES.get(exc.code().name, 1)
    except KeyboardInterrupt:
        print("interrupted (the run goes on; `restem watch RUN` to follow it again)", file=sys.stderr)
        code = 130
    sys.exit(code)
