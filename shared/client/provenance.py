"""The provenance commands of the `restem` CLI: lineage, reverify, recover (and `run --from`).

    restem lineage RUN [--iteration N] [--json] [--check]   where each checkpoint came from
    restem reverify RUN [--iteration N] [--no-wait]           re-judge with today's checkers
    restem recover                                            rebuild runs from the store
    restem run --from RUN --iteration N [CONFIG]              fork a run from an iteration

`lineage --check` exits 8 when an artifact no longer matches its recorded sha256.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any

EXIT_MISMATCH = 8


def _short(sha: str) -> str:
    return sha[:12] if sha else "(not recorded)"


def render_lineage(doc: dict[str, Any]) -> list[str]:
    """The lineage document as lines a person reads, one artifact per line."""
    base = doc["base_model"]
    lines = [f"run {doc['run_id']} ({doc['task']})"]
    if "forked_from" in doc:
        f = doc["forked_from"]
        how = f"reverification {f['reverification']}" if f["reverification"] else "its own verdicts"
        lines.append(f"  forked from {f['run_id']} at iteration {f['iteration']}, with {how}")
    lines.append(f"base model   {base.get('source', '')}  {base['key']}  sha256 {_short(base['sha256'])}")
    for i in doc["iterations"]:
        owner = "" if i["run_id"] == doc["run_id"] else f"  (from run {i['run_id']})"
        m = i["m_step"]
        lines += [
            f"iteration {i['iteration']}{owner}",
            f"  policy      {i['policy']['key']}  sha256 {_short(i['policy']['sha256'])}",
            f"  samples     {i['samples']['prefix']}  {len(i['samples']['sha256'])} shards",
            f"  verdicts    {i['verdicts']['prefix']}  {len(i['verdicts']['sha256'])} shards"
            f"  checkers {', '.join(i['verdicts']['checker_versions']) or '(not recorded)'}",
            f"  kept        {i['kept']['key']}  {i['kept']['count']} samples  sha256 {_short(i['kept']['sha256'])}",
            "  M-step      skipped (nothing kept): the policy carried over"
            if m["skipped"]
            else f"  M-step      from the base, {m['steps']} steps, epoch {m['epoch_kept']} of {m['epochs']} kept",
            f"  checkpoint  {i['checkpoint']['key']}  sha256 {_short(i['checkpoint']['sha256'])}",
        ]
    lines.append(f"checkers: {', '.join(doc['checker_versions']) or '(none recorded)'}")
    return lines


def cmd_lineage(args: argparse.Namespace) -> int:
    with args.connect(args) as client:
        resp = client.lineage(args.run, args.iteration, check=args.check)
    doc = json.loads(resp.lineage_json)
    if args.json:
        if args.check:
            doc["check"] = {"artifacts_checked": resp.artifacts_checked, "mismatches": list(resp.mismatches)}
        print(json.dumps(doc, indent=2))
    else:
        print("\n".join(render_lineage(doc)))
        if args.check:
            for line in resp.mismatches:
                print(f"MISMATCH {line}")
            verdict = f"{len(resp.mismatches)} mismatches" if resp.mismatches else "all match"
            print(f"checked {resp.artifacts_checked} artifacts: {verdict}")
    return EXIT_MISMATCH if args.check and resp.mismatches else 0


def _changes_lines(rv: Any) -> list[str]:
    lines = [f"reverification {rv.number}: {rv.summary or 'in progress'}"]
    for p in rv.iterations:
        lines.append(
            f"  iteration {p.iteration}: checkers {', '.join(p.checkers_before) or '?'} -> "
            f"{', '.join(p.checkers_after) or '?'}; correct {p.correct_samples}/{p.samples}; "
            f"flipped {p.flipped_to_correct} to correct, {p.flipped_to_wrong} to wrong; "
            f"kept {p.kept}, {p.kept_sets_differ} problems' kept sets differ"
        )
    if rv.changes_key:
        lines.append(f"  details: {rv.changes_key}")
    return lines


def cmd_reverify(args: argparse.Namespace) -> int:
    with args.connect(args) as client:
        resp = client.reverify(args.run, args.iteration)
        print(f"run {args.run}: reverification {resp.number} started", file=sys.stderr)
        if args.no_wait:
            return 0
        while True:
            run = client.get_run(args.run)
            rv = next(r for r in run.reverifications if r.number == resp.number)
            if rv.done:
                break
            time.sleep(1.0)
    print("\n".join(_changes_lines(rv)))
    if rv.summary.startswith("failed"):
        return 1
    print(f"fork a run from an iteration with these verdicts: restem run --from {args.run} --iteration N")
    return 0


def cmd_recover(args: argparse.Namespace) -> int:
    from shared.client.display import status_name

    with args.connect(args) as client:
        resp = client.recover()
    for run in resp.recovered:
        print(f"recovered {run.run_id} ({status_name(run)}, iteration {run.iteration})")
    print(f"{len(resp.recovered)} runs recovered from the store; {len(resp.present)} were already in NATS")
    return 0


def add_commands(sub: Any, connect: Callable[[argparse.Namespace], Any]) -> None:
    """The subcommands; `connect(args)` opens a RunClient from the global options."""
    p = sub.add_parser(
        "lineage", help="where each checkpoint of a run came from (--check: re-hash everything)"
    )
    p.add_argument("run", help="a run id")
    p.add_argument(
        "--iteration", type=int, default=0, help="only the chain up to this iteration's checkpoint"
    )
    p.add_argument("--json", action="store_true", help="print the JSON document")
    p.add_argument(
        "--check",
        action="store_true",
        help="read every artifact again and compare sha256s (exit 8 on a mismatch)",
    )
    p.set_defaults(func=cmd_lineage, connect=connect)
    p = sub.add_parser("reverify", help="re-judge a finished run's samples with today's checkers")
    p.add_argument("run", help="a run id")
    p.add_argument("--iteration", type=int, default=0, help="only this iteration (default: all)")
    p.add_argument("--no-wait", action="store_true", help="start it and return (GetRun shows progress)")
    p.set_defaults(func=cmd_reverify, connect=connect)
    p = sub.add_parser("recover", help="rebuild run records from the store after the NATS volume was lost")
    p.set_defaults(func=cmd_recover, connect=connect)


NOT_A_FORK = {"from_run": None, "iteration": 0, "reverification": 0}
"""`add_fork_arguments`' values when none is given: for commands that start a run but never fork
one (`restem demo`), so `cmd_run` reads the same fields."""


def add_fork_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--from", dest="from_run", metavar="RUN", help="fork this finished run (CONFIG optional)")
    p.add_argument(
        "--iteration", type=int, default=0, help="with --from: the iteration to re-filter and retrain"
    )
    p.add_argument(
        "--reverification", type=int, default=0, help="with --from: whose verdicts (default: the latest)"
    )
