"""`backline models ...`: look at versions, compare them, move the champion.

    backline models list
    backline models show fraud              # every version, and the aliases
    backline models show fraud@champion     # one version: files, lineage, metrics, gate
    backline models diff fraud 3 champion
    backline models promote fraud 4 --reason "weekly retrain"
    backline models rollback fraud --reason "precision dropped after release"
    backline models audit fraud --json

`backline.cli.build_parser` calls `add_commands(subparsers)`. Each command returns an exit code and raises
a BacklineError for anything the user can fix; the CLI prints that on one line and exits 2.

This is the command line, the top layer, not part of the registry: `models gate` builds the
holdout (`backline.train`) and runs the gate (`backline.pipeline.gate`), neither of which the
registry itself may import.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from rich.markup import escape
from rich.table import Table

from backline.cli.common import _open
from backline.core.actor import audit_actor
from backline.core.console import out
from backline.registry.records import parse_model_spec

if TYPE_CHECKING:
    from backline.registry.store import Registry


def add_commands(subparsers: Any) -> argparse.ArgumentParser:
    """Add the `models` command group to the top-level subparsers; returns its parser."""
    models = subparsers.add_parser(
        "models", help="model registry: versions, lineage, aliases, promotion, audit log"
    )
    sub = models.add_subparsers(dest="models_command", metavar="COMMAND")

    p = sub.add_parser("list", help="every registered model with its version count and aliases")
    _json_flag(p)
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("show", help="the versions of a model, or one version in detail")
    p.add_argument(
        "spec",
        metavar="MODEL[:VERSION|@ALIAS]",
        help="a model (lists its versions), or one version: fraud:3, fraud:latest, fraud@champion",
    )
    _json_flag(p)
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("diff", help="what changed between two versions: metrics, lineage, files")
    p.add_argument("model", metavar="MODEL", help="model name")
    p.add_argument("a", metavar="A", help="the older side: a version number, alias or 'latest'")
    p.add_argument("b", metavar="B", help="the newer side: a version number, alias or 'latest'")
    _json_flag(p)
    p.set_defaults(func=cmd_diff)

    p = sub.add_parser("promote", help="make a version the champion (its gate must have passed)")
    p.add_argument("model", metavar="MODEL", help="model name")
    p.add_argument("version", metavar="VERSION", help="version number or alias to promote")
    p.add_argument(
        "--force",
        action="store_true",
        help="promote although the gate did not pass; needs --reason, logged as force-promote",
    )
    p.add_argument(
        "--reason", default="", help="why; kept in the audit log (required with --force)"
    )
    _actor_flag(p)
    _json_flag(p)
    p.set_defaults(func=cmd_promote)

    p = sub.add_parser(
        "gate", help="evaluate a version against the champion on the holdout; exit 1 if it fails"
    )
    p.add_argument("model", metavar="MODEL", help="model name")
    p.add_argument("version", metavar="VERSION", help="version number or alias to evaluate")
    p.add_argument(
        "--remeasure",
        action="store_true",
        help="time one request again here instead of using the latency measured at packaging "
        "(done anyway when that figure is over gate.max_latency_ms)",
    )
    _json_flag(p)
    p.set_defaults(func=cmd_gate)

    p = sub.add_parser("rollback", help="move the champion back to the previous champion")
    p.add_argument("model", metavar="MODEL", help="model name")
    p.add_argument("--reason", required=True, help="why; kept in the audit log")
    _actor_flag(p)
    _json_flag(p)
    p.set_defaults(func=cmd_rollback)

    p = sub.add_parser("alias", help="point an alias other than champion at a version")
    p.add_argument("model", metavar="MODEL", help="model name")
    p.add_argument("alias", metavar="ALIAS", help="alias name, e.g. challenger")
    p.add_argument("version", metavar="VERSION", help="version number or alias to point at")
    p.add_argument("--reason", default="", help="why; kept in the audit log")
    _actor_flag(p)
    _json_flag(p)
    p.set_defaults(func=cmd_alias)

    p = sub.add_parser("aliases", help="where each alias of a model points now")
    p.add_argument("model", metavar="MODEL", help="model name")
    _json_flag(p)
    p.set_defaults(func=cmd_aliases)

    p = sub.add_parser("audit", help="the append-only log of every alias move of a model")
    p.add_argument("model", metavar="MODEL", help="model name")
    p.add_argument("--alias", help="only moves of this alias, e.g. champion")
    _json_flag(p)
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser("gc", help="delete stored files no version references (crash leftovers)")
    _json_flag(p)
    p.set_defaults(func=cmd_gc)

    def models_help(_args: argparse.Namespace) -> int:
        models.print_help()
        return 2

    models.set_defaults(func=models_help)
    return models


def _json_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")


def _actor_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--actor",
        default=None,
        help="who does this, for the audit log (default: $BACKLINE_ACTOR, else your login name)",
    )


# ---------------------------------------------------------------------------------------------
# commands


def cmd_list(args: argparse.Namespace) -> int:
    with _registry(args) as registry:
        summaries = registry.list_models()
    if args.json:
        return _print_json([_jsonable(m) for m in summaries])
    if not summaries:
        out.print("no models registered yet")
        return 0
    table = Table("model", "versions", "latest", "aliases", "created", box=None, padding=(0, 2))
    for m in summaries:
        table.add_row(
            escape(m.name),
            str(m.versions),
            f"v{m.latest_version}",
            escape(", ".join(f"{a.alias}=v{a.version}" for a in m.aliases)),
            _when(m.created_at),
        )
    out.print(table)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    model, ref = parse_model_spec(args.spec)
    with _registry(args) as registry:
        if ref is None:
            return _show_model(registry, model, args.json)
        mv = registry.get(model, ref)
        gate = registry.gate_of(model, mv.version)
        pointing = [a.alias for a in registry.aliases(model) if a.version == mv.version]
    if args.json:
        return _print_json({"version": _jsonable(mv), "aliases": pointing, "gate": _jsonable(gate)})
    lin = mv.lineage
    tags = f"  [bold green]({escape(', '.join(pointing))})[/]" if pointing else ""
    out.print(f"[bold]{escape(mv.model)} v{mv.version}[/]{tags}")
    facts = Table(box=None, show_header=False, padding=(0, 2))
    facts.add_row("registered", f"{_when(mv.created_at)} by {escape(mv.actor)}")
    if mv.description:
        facts.add_row("description", escape(mv.description))
    facts.add_row("content digest", mv.content_digest)
    facts.add_row("training set", escape(lin.training_set_digest))
    facts.add_row("data range", f"{_when(lin.data_start)} .. {_when(lin.data_end)}")
    facts.add_row("code commit", escape(lin.code_commit or "(not a git checkout)"))
    facts.add_row("config hash", escape(lin.config_hash))
    facts.add_row("checkpoint", escape(lin.checkpoint_id or "-"))
    facts.add_row(
        "features",
        escape(", ".join(f"{v}={ver}" for v, ver in sorted(lin.feature_versions.items())) or "-"),
    )
    facts.add_row(
        "libraries",
        escape(", ".join(f"{k} {v}" for k, v in sorted(lin.library_versions.items())) or "-"),
    )
    profile = lin.reference_profile
    facts.add_row(
        "reference profile",
        f"{len(profile.features)} features, {profile.row_count} rows"
        + (", scores" if profile.score else "")
        if profile
        else "-",
    )
    out.print(facts)
    files = Table("artifact", "bytes", "sha256", box=None, padding=(0, 2))
    for a in mv.artifacts:
        files.add_row(escape(a.name), f"{a.size:,}", a.sha256[:16])
    out.print(files)
    if lin.metrics:
        metrics = Table("metric", "value", box=None, padding=(0, 2))
        for name, value in sorted(lin.metrics.items()):
            metrics.add_row(escape(name), f"{value:.6g}")
        out.print(metrics)
    if gate is None:
        out.print("gate: [yellow]not evaluated[/]")
    else:
        verdict = "[green]passed[/]" if gate.passed else "[red]failed[/]"
        against = f"v{gate.champion_version}" if gate.champion_version else "no champion"
        out.print(
            f"gate: {verdict} at {_when(gate.evaluated_at)} against {against} "
            f"(evaluation set {escape(gate.eval_set_digest)})"
        )
        out.print(_checks_table(gate.checks))
    return 0


def _show_model(registry: Registry, model: str, as_json: bool) -> int:
    versions = registry.list_versions(model)
    pointers = registry.aliases(model)
    if as_json:
        return _print_json(
            {"model": model, "versions": _jsonable(versions), "aliases": _jsonable(pointers)}
        )
    by_version: dict[int, list[str]] = {}
    for a in pointers:
        by_version.setdefault(a.version, []).append(a.alias)
    metric_names = sorted({k for mv in versions for k in mv.lineage.metrics})[:4]
    table = Table(
        "version", "aliases", "registered", "by", *metric_names, "digest", box=None, padding=(0, 2)
    )
    for mv in versions:
        table.add_row(
            f"v{mv.version}",
            escape(", ".join(by_version.get(mv.version, []))),
            _when(mv.created_at),
            escape(mv.actor),
            *(
                f"{mv.lineage.metrics[m]:.4g}" if m in mv.lineage.metrics else "-"
                for m in metric_names
            ),
            mv.content_digest[:12],
        )
    out.print(f"[bold]{escape(model)}[/]")
    out.print(table)
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    with _registry(args) as registry:
        d = registry.diff(args.model, args.a, args.b)
    if args.json:
        return _print_json(_jsonable(d))
    out.print(f"[bold]{escape(d.model)} v{d.a} -> v{d.b}[/]")
    if d.metrics:
        table = Table("metric", f"v{d.a}", f"v{d.b}", "delta", box=None, padding=(0, 2))
        for m in d.metrics:
            delta = "-" if m.delta is None else f"{m.delta:+.6g}"
            table.add_row(escape(m.name), _num(m.a), _num(m.b), delta)
        out.print(table)
    changes = [(f"feature {c.field}", c) for c in d.features] + [(c.field, c) for c in d.lineage]
    if changes:
        table = Table("changed", f"v{d.a}", f"v{d.b}", box=None, padding=(0, 2))
        for label, c in changes:
            table.add_row(escape(label), escape(c.a or "-"), escape(c.b or "-"))
        out.print(table)
    if d.artifacts:
        table = Table("artifact", "change", f"v{d.a}", f"v{d.b}", box=None, padding=(0, 2))
        for a in d.artifacts:
            table.add_row(
                escape(a.name), a.status, (a.a_sha256 or "-")[:12], (a.b_sha256 or "-")[:12]
            )
        out.print(table)
    else:
        out.print("artifacts: identical")
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    with _registry(args) as registry:
        event = registry.promote(
            args.model, args.version, actor=_actor(args), reason=args.reason, force=args.force
        )
    return _print_event(event, args.json)


def cmd_gate(args: argparse.Namespace) -> int:
    """Exit 0 when the gate passes and 1 when it fails, so CI can use it."""
    from backline.pipeline.gate import gate_version
    from backline.train.dataset import build_training_set

    with _open(args) as project:
        cfg = project.config
        holdout = build_training_set(cfg, service=cfg.train.service).holdout
        record = gate_version(
            cfg,
            project.registry,
            args.model,
            args.version,
            holdout,
            remeasure=args.remeasure or None,
        )
    if args.json:
        _print_json(_jsonable(record))
    else:
        verdict = "[bold green]PASSED[/]" if record.passed else "[bold red]FAILED[/]"
        against = f"v{record.champion_version}" if record.champion_version else "no champion"
        out.print(
            f"gate {verdict} for {escape(args.model)} {escape(str(args.version))} (against {against})"
        )
        out.print(_checks_table(record.checks))
    return 0 if record.passed else 1


def cmd_rollback(args: argparse.Namespace) -> int:
    with _registry(args) as registry:
        event = registry.rollback(args.model, actor=_actor(args), reason=args.reason)
    return _print_event(event, args.json)


def cmd_alias(args: argparse.Namespace) -> int:
    with _registry(args) as registry:
        event = registry.set_alias(
            args.model, args.alias, args.version, actor=_actor(args), reason=args.reason
        )
    return _print_event(event, args.json)


def cmd_aliases(args: argparse.Namespace) -> int:
    with _registry(args) as registry:
        pointers = registry.aliases(args.model)
    if args.json:
        return _print_json(_jsonable(pointers))
    if not pointers:
        out.print(f"{escape(args.model)} has no aliases yet")
        return 0
    table = Table("alias", "version", "since", "by", box=None, padding=(0, 2))
    for a in pointers:
        table.add_row(escape(a.alias), f"v{a.version}", _when(a.updated_at), escape(a.actor))
    out.print(table)
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    with _registry(args) as registry:
        events = registry.audit(args.model, args.alias)
    if args.json:
        return _print_json(_jsonable(events))
    if not events:
        out.print(f"no alias moves recorded for {escape(args.model)}")
        return 0
    table = Table("#", "time", "alias", "action", "from", "to", "actor", "reason", box=None)
    for e in events:
        table.add_row(
            str(e.seq),
            _when(e.at),
            escape(e.alias),
            e.action,
            f"v{e.old_version}" if e.old_version else "-",
            f"v{e.new_version}" if e.new_version else "-",
            escape(e.actor),
            escape(e.reason),
        )
    out.print(table)
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    with _registry(args) as registry:
        result = registry.gc()
    if args.json:
        return _print_json(_jsonable(result))
    out.print(
        f"removed {result.orphan_files} unreferenced files and {result.temp_files} stale "
        "partial copies"
    )
    return 0


# ---------------------------------------------------------------------------------------------
# helpers


@contextmanager
def _registry(args: argparse.Namespace) -> Iterator[Registry]:
    """The registry of the project handle, closed with it at the end of the block."""
    with _open(args) as project:
        yield project.registry


def _checks_table(checks: Any) -> Table:
    """A gate record's checks, one row each: what `models show` and `models gate` print."""
    table = Table("check", "value", "threshold", "result", "detail", box=None, padding=(0, 2))
    for c in checks:
        table.add_row(
            escape(c.name),
            f"{c.value:.6g}",
            f"{c.threshold:.6g}",
            "[green]pass[/]" if c.passed else "[red]FAIL[/]",
            escape(c.detail),
        )
    return table


def _actor(args: argparse.Namespace) -> str:
    return audit_actor(args.actor)


def _print_event(event: Any, as_json: bool) -> int:
    if as_json:
        return _print_json(_jsonable(event))
    old = f"v{event.old_version}" if event.old_version else "(none)"
    out.print(
        f"{escape(event.model)}: {escape(event.alias)} {old} -> v{event.new_version} "
        f"({event.action} by {escape(event.actor)})"
    )
    return 0


def _jsonable(value: object) -> Any:
    from backline.registry.records import to_jsonable

    return to_jsonable(value)


def _print_json(value: object) -> int:
    print(json.dumps(value, indent=None, sort_keys=False))
    return 0


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%SZ") if value is not None else "-"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.6g}"
