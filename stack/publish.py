"""Publish model versions: every command changes the model store's ``served.json`` (the state every replica follows,
:mod:`torchserve_protocol.store`) and waits until every live replica serves it (stack/reconcile.py applies it within
about a second of the change; stack/replica_reports.py reads each replica's report).

    python -m stack.publish list                                              # state, quality, replicas
    python -m stack.publish register model_store/cola-2.0.mar [--workers 1]   # checks it fits, waits until READY
    python -m stack.publish set-default cola 2.0                              # gated: recorded + served quality
    python -m stack.publish rollback cola                                     # back to the previous default
    python -m stack.publish unregister cola 2.0 [--delete-archive]            # refuses the default, canary, shadow
    python -m stack.publish scale cola 2.0 --workers 2
    python -m stack.publish canary cola 2.0 --percent 10                      # gated; 10% of unpinned traffic
    python -m stack.publish promote cola                                      # gated; the canary becomes default
    python -m stack.publish abort cola                                        # all traffic back to the default
    python -m stack.publish shadow cola 2.0 --percent 100                     # copies to 2.0, answers discarded
    python -m stack.publish shadow cola --off

An archive in the store is inert until ``register`` adds it to the state: never loaded, never served. A restart, a
new replica or ``--scale`` serves exactly the state. The gate (stack/gate.py) runs before ``set-default``,
``canary`` and ``promote`` send any client traffic to a version; ``--force`` skips its recorded-quality comparison.
The canary and shadow shares are read by every gateway from the same file (each checks it about once a second).

Every failure prints one line (``publish: error: ...``) to stderr and exits 1; the state is then as it was.
"""

from __future__ import annotations

import argparse
import os
import sys
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from stack import budget, served_state
from stack.management import Management, ManagementError
from stack.replica_reports import NotConverged, lag, live_replicas, wait_converged
from stack.served_state import StateError
from torchserve_protocol.archives import Archive, archive_name, parse_archive, version_key
from torchserve_protocol.layout import REPO, default_key_file, default_model_store, run_dir_of_key_file, temp_in
from torchserve_protocol.store import STATE_FILE, ModelState, Quality, Share, State
from torchserve_protocol.workers import read_report, workers_file_beside

HISTORY_LENGTH = 10


class PublishError(RuntimeError):
    """A request that cannot be carried out; the message is the one line the user sees."""


# --- the state ------------------------------------------------------------------------------------------------------


def current(store: Path) -> State:
    return current_version(store)[0]


def current_version(store: Path) -> tuple[State, str]:
    found = served_state.load_version(store)
    if found is None:
        raise PublishError(f"{store / STATE_FILE} does not exist: start the stack once (make serve, or compose's "
                           "models service), which writes it")  # fmt: skip
    return found


def model_of(state: State, name: str) -> ModelState:
    if name not in state.models:
        raise PublishError(f"model {name!r} is not served (served: {', '.join(sorted(state.models)) or 'none'})")
    return state.models[name]


def require_version(state: State, name: str, version: str) -> ModelState:
    model = model_of(state, name)
    if version not in model.versions:
        known = ", ".join(sorted(model.versions, key=version_key))
        raise PublishError(f"{name} has no version {version!r} registered (registered: {known}; "
                           f"`register {archive_name(name, version)}` adds it)")  # fmt: skip
    return model


def change(store: Path, edit: Callable[[State], State]) -> tuple[State, State]:
    """Apply ``edit`` to the state under the store's lock; returns (before, after)."""
    with served_state.locked(store):
        before = current(store)
        after = edit(before)
        served_state.save(store, after)
    return before, after


def with_default(model: ModelState, version: str) -> ModelState:
    """``version`` becomes the default; the one it replaces goes onto the history (for ``rollback``)."""
    history = [v for v in model.history if v not in (version, model.default)] + [model.default]
    return model.with_changes(default=version, history=tuple(history[-HISTORY_LENGTH:]))


def converge(args: argparse.Namespace, name: str, *, version: str | None = None) -> int:
    """Wait until every replica serves the state of ``name``; a replica that reports a problem with ``version``
    fails the command at once. Returns how many replicas serve it."""

    def failed(problems: list[str]) -> None:
        relevant = [p for p in problems if version is None or f" {name} {version} " in f" {p} " or STATE_FILE in p]
        if relevant:
            raise PublishError("; ".join(relevant))

    try:
        return len(wait_converged(args.key_file, lambda: current_version(args.model_store), name, timeout=args.timeout,
                                  failed=failed))  # fmt: skip
    except NotConverged as exc:
        raise PublishError(f"{exc} (the state is recorded; the replica follows when it can)") from None


# --- register: the archive and its memory ---------------------------------------------------------------------------


def archive_in_store(path_or_name: str, store: Path) -> Archive:
    """The archive as a file of the model store (TorchServe registers store files only: allowed_urls=^$)."""
    given = Path(path_or_name)
    candidates = [given] if given.parent != Path() else [store / given, given]
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        raise PublishError(f"no archive {path_or_name} (looked in {', '.join(str(p) for p in candidates)})")
    if found.resolve().parent != store.resolve():
        raise PublishError(f"{found} is not in the model store {store}; copy it there first (TorchServe only loads "
                           "archives from its store)")  # fmt: skip
    archive = parse_archive(found)
    if archive is None:
        raise PublishError(f"{found.name} is not named <name>-<version>.mar")
    return archive


def registration_cost(mgmt: Management, archive: Archive, workers: int | None) -> budget.Cost | None:
    """What registering ``archive`` will cost, from the workers running now (``None``: none this process can see)."""
    pids: dict[str, list[int]] = {}
    for name in mgmt.models():
        for description in mgmt.versions(name):
            pids.setdefault(name, []).extend(int(w["pid"]) for w in description.get("workers", []) if w.get("pid"))
    same = budget.resident_bytes(pids.get(archive.name, []))
    sizes = same or budget.resident_bytes([pid for group in pids.values() for pid in group])
    if not sizes:
        return None
    with zipfile.ZipFile(archive.path) as mar:
        unpacked = sum(info.file_size for info in mar.infolist())
    return budget.Cost(
        workers=workers or served_state.archive_workers(archive.path), per_worker=max(sizes), unpacked=unpacked
    )


def check_budget(mgmt: Management, archive: Archive, args: argparse.Namespace) -> None:
    """Refuse, before TorchServe starts anything, a version that would not fit this replica (docs/deployment.md,
    Sizing); ``--force`` skips the check."""
    if args.force:
        return
    cost = registration_cost(mgmt, archive, args.workers)
    if cost is None:
        print(f"note: no running worker visible from here: {archive.path.name}'s memory was not estimated",
              file=sys.stderr)  # fmt: skip
        return
    refusal = budget.verdict(cost, budget.current_budget(temp_in(run_dir_of_key_file(args.key_file))))
    if refusal is not None:
        raise PublishError(f"{archive.name} {archive.version}: {refusal} (--force skips this check)")


# --- the gate -------------------------------------------------------------------------------------------------------


def gated(args: argparse.Namespace, state: State, name: str, version: str) -> State:
    """Run the publish gate on ``version`` (against the current default) and record what it measured; a refusal
    raises :class:`PublishError` with its one line."""
    from stack import gate  # the validation split's readers come with training's code: only when a gate runs

    model = require_version(state, name, version)
    default = args.model_store / archive_name(name, model.default) if model.default != version else None
    try:
        result = gate.check(
            args.model_store / archive_name(name, version), default, inference_url=args.inference_url,
            key_file=args.key_file, data_dir=args.data_dir, margin=args.margin, force=args.force,
        )  # fmt: skip
    except gate.GateRefusal as exc:
        raise PublishError(str(exc)) from None
    if isinstance(result, gate.Skipped):
        print(f"gate: skipped (--force): {result.reason}", file=sys.stderr)
        return state
    for line in result.forced:
        print(f"gate: passed only by --force: {line}", file=sys.stderr)
    quality = Quality(metric=result.metric, recorded=result.recorded, served=result.served)
    print(f"gate: {name} {version} {quality.metric} recorded {quality.recorded:.4f}, served {quality.served:.4f}")
    _, after = change(args.model_store, lambda s: record_quality(s, name, version, quality))
    return after


def record_quality(state: State, name: str, version: str, quality: Quality) -> State:
    model = require_version(state, name, version)
    entry = model.versions[version]
    return state.with_model(
        name, model.with_changes(versions={**model.versions, version: replace(entry, quality=quality)})
    )


# --- commands -------------------------------------------------------------------------------------------------------


def cmd_list(args: argparse.Namespace) -> None:
    state, applied = current_version(args.model_store)
    local = read_report(workers_file_beside(args.key_file))
    rows = {(v.model, v.version): v for v in local.versions} if local else {}
    for name, model in sorted(state.models.items()):
        for version in sorted(model.versions, key=version_key):
            entry = model.versions[version]
            row = rows.get((name, version))
            statuses = ",".join(f"{s}:{n}" for s, n in sorted(row.statuses.items())) if row else "not running here"
            mark = ""
            if version == model.default:
                share = model.canary.percent if model.canary else 0.0
                mark = "  default" + (f" {100 - share:g}%" if model.canary else "")
            if model.canary and version == model.canary.version:
                mark += f"  canary {model.canary.percent:g}%"
            if model.shadow and version == model.shadow.version:
                mark += f"  shadow {model.shadow.percent:g}%"
            if row is not None:
                mark += f"  restarts={row.restarts}"  # a crash loop shows as restarts that keep growing
            if entry.quality is not None:
                q = entry.quality
                mark += f"  {q.metric} recorded={q.recorded:.4f} served={q.served:.4f}"
            print(f"{name:<16} {version:<8} workers={entry.workers} ({statuses}){mark}")
    for replica in live_replicas(args.key_file):
        lags = [why for name in sorted(state.models) if (why := lag(replica.report, name, state.models[name]))]
        if replica.report.applied != applied:
            lags.insert(0, f"has not applied {STATE_FILE} as it is now")
        problems = replica.report.problems
        verdict = "serves the state" if not lags and not problems else "NOT CONVERGED: " + "; ".join(lags + problems)
        print(f"replica {replica.name}: {verdict}")


def cmd_register(args: argparse.Namespace) -> None:
    archive = archive_in_store(args.archive, args.model_store)
    name, version = archive.name, archive.version
    state = current(args.model_store)
    if name in state.models and version in state.models[name].versions:
        raise PublishError(f"{name} {version} is already registered (unregister it, or package a new version)")
    check_budget(Management(args.management_url, args.key_file), archive, args)
    workers = args.workers if args.workers is not None else served_state.archive_workers(archive.path)
    change(args.model_store, lambda s: served_state.with_version(s, name, version, workers))
    try:
        replicas = converge(args, name, version=version)
    except PublishError as exc:  # a replica could not start it: no replica keeps trying
        change(args.model_store, lambda s: without_version(s, name, version))
        raise PublishError(f"{name} {version} did not start ({exc}); it was taken out of {STATE_FILE}, and the "
                           "versions that were serving kept their workers") from None  # fmt: skip
    default = current(args.model_store).models[name].default
    print(f"registered {name} {version}: READY on {replicas} replica(s) (default stays {default}; switch with "
          f"`set-default {name} {version}`)")  # fmt: skip


def without_version(state: State, name: str, version: str) -> State:
    model = state.models.get(name)
    if model is None or version not in model.versions:
        return state
    if set(model.versions) == {version}:  # its only version: the model goes
        return State(models={k: v for k, v in state.models.items() if k != name})
    return state.with_model(
        name,
        model.with_changes(
            versions={v: e for v, e in model.versions.items() if v != version},
            history=tuple(v for v in model.history if v != version),
        ),
    )


def cmd_set_default(args: argparse.Namespace) -> None:
    model = require_version(current(args.model_store), args.name, args.version)
    if model.default == args.version:
        raise PublishError(f"{args.name} {args.version} is already the default")
    gated(args, current(args.model_store), args.name, args.version)

    def edit(state: State) -> State:
        model = with_default(require_version(state, args.name, args.version), args.version)
        if model.canary and model.canary.version == args.version:
            model = model.with_changes(canary=None)
        return state.with_model(args.name, model)

    before, _ = change(args.model_store, edit)
    n = converge(args, args.name)
    print(f"{args.name}: default {before.models[args.name].default} -> {args.version} on {n} replica(s)")


def cmd_rollback(args: argparse.Namespace) -> None:
    model = model_of(current(args.model_store), args.name)
    if not model.history:
        raise PublishError(f"no previous default of {args.name} recorded in {args.model_store / STATE_FILE}")
    target = model.history[-1]

    def edit(state: State) -> State:
        model = model_of(state, args.name)
        return state.with_model(args.name, model.with_changes(default=target, history=model.history[:-1]))

    change(args.model_store, edit)
    n = converge(args, args.name)
    print(f"{args.name}: default {model.default} -> {target} (rolled back) on {n} replica(s)")


def cmd_unregister(args: argparse.Namespace) -> None:
    model = require_version(current(args.model_store), args.name, args.version)
    for role, version in (("the current default", model.default), ("the canary", model.canary and
                          model.canary.version), ("the shadow", model.shadow and model.shadow.version)):  # fmt: skip
        if version == args.version:
            raise PublishError(f"{args.name} {args.version} is {role}; "
                               + ("set another default first" if role.endswith("default") else
                                  f"end it first (`{'abort' if 'canary' in role else 'shadow --off'}`)"))  # fmt: skip
    archive = args.model_store / archive_name(args.name, args.version)
    if args.delete_archive and not os.access(args.model_store, os.W_OK):
        raise PublishError(f"cannot delete {archive}: the store is not writable by uid {os.getuid()}; nothing was "
                           "changed")  # fmt: skip
    change(args.model_store, lambda s: without_version(s, args.name, args.version))
    n = converge(args, args.name)  # each replica drains the version before it unregisters it
    if args.delete_archive:
        archive.unlink(missing_ok=True)
        print(f"unregistered {args.name} {args.version} on {n} replica(s) and deleted {archive}")
    else:
        print(f"unregistered {args.name} {args.version} on {n} replica(s) ({archive.name} stays in the store, "
              "inert: no start registers it again; --delete-archive removes it)")  # fmt: skip


def cmd_scale(args: argparse.Namespace) -> None:
    if args.workers < 0:
        raise PublishError(f"--workers must be 0 or more, not {args.workers}")
    require_version(current(args.model_store), args.name, args.version)

    def edit(state: State) -> State:
        model = require_version(state, args.name, args.version)
        entry = replace(model.versions[args.version], workers=args.workers)
        return state.with_model(args.name, model.with_changes(versions={**model.versions, args.version: entry}))

    change(args.model_store, edit)
    n = converge(args, args.name, version=args.version)
    print(f"{args.name} {args.version}: {args.workers} worker(s) on {n} replica(s)")


def cmd_canary(args: argparse.Namespace) -> None:
    if not 0 <= args.percent <= 100:
        raise PublishError(f"--percent must be from 0 to 100, not {args.percent:g}")
    model = require_version(current(args.model_store), args.name, args.version)
    if model.canary is not None:
        raise PublishError(f"{args.name} already has a canary ({model.canary.version} at {model.canary.percent:g}%); "
                           "promote or abort it first")  # fmt: skip
    if model.default == args.version:
        raise PublishError(f"{args.name} {args.version} is already the default; a canary must be another version")
    gated(args, current(args.model_store), args.name, args.version)
    share = Share(version=args.version, percent=round(args.percent, 2))
    change(args.model_store, lambda s: s.with_model(args.name, model_of(s, args.name).with_changes(canary=share)))
    print(f"{args.name}: canary {args.version} gets {args.percent:g}% of unpinned requests (gateways follow within "
          "about a second)")  # fmt: skip


def cmd_promote(args: argparse.Namespace) -> None:
    model = model_of(current(args.model_store), args.name)
    if model.canary is None:
        raise PublishError(f"{args.name} has no canary running (see `list`)")
    canary = model.canary
    gated(args, current(args.model_store), args.name, canary.version)
    # first every replica's default (the split still pins the canary's share to it), then the split ends
    change(args.model_store, lambda s: s.with_model(args.name, with_default(model_of(s, args.name), canary.version)))
    converge(args, args.name)
    change(args.model_store, lambda s: s.with_model(args.name, model_of(s, args.name).with_changes(canary=None)))
    print(f"{args.name}: canary {canary.version} promoted, default {model.default} -> {canary.version} (rollback: "
          f"`rollback {args.name}`)")  # fmt: skip


def cmd_abort(args: argparse.Namespace) -> None:
    model = model_of(current(args.model_store), args.name)
    if model.canary is None:
        raise PublishError(f"{args.name} has no canary running (see `list`)")
    change(args.model_store, lambda s: s.with_model(args.name, model_of(s, args.name).with_changes(canary=None)))
    print(f"{args.name}: canary {model.canary.version} aborted; all unpinned requests go to the default "
          f"({model.canary.version} stays registered)")  # fmt: skip


def cmd_shadow(args: argparse.Namespace) -> None:
    model = model_of(current(args.model_store), args.name)
    if args.off:
        if model.shadow is None:
            raise PublishError(f"{args.name} has no shadow (see `list`)")
        change(args.model_store, lambda s: s.with_model(args.name, model_of(s, args.name).with_changes(shadow=None)))
        print(f"{args.name}: shadow {model.shadow.version} off (it stays registered)")
        return
    if args.version is None or args.percent is None:
        raise PublishError("give a version and --percent, or --off")
    if not 0 <= args.percent <= 100:
        raise PublishError(f"--percent must be from 0 to 100, not {args.percent:g}")
    require_version(current(args.model_store), args.name, args.version)
    if model.default == args.version:
        raise PublishError(f"{args.name} {args.version} is the default; a shadow must be another version")
    share = Share(version=args.version, percent=round(args.percent, 2))
    change(args.model_store, lambda s: s.with_model(args.name, model_of(s, args.name).with_changes(shadow=share)))
    print(f"{args.name}: shadow {args.version} gets copies of {args.percent:g}% of unpinned requests (answers "
          "discarded; gateways follow within about a second)")  # fmt: skip


COMMANDS = {
    "list": cmd_list,
    "register": cmd_register,
    "set-default": cmd_set_default,
    "rollback": cmd_rollback,
    "unregister": cmd_unregister,
    "scale": cmd_scale,
    "canary": cmd_canary,
    "promote": cmd_promote,
    "abort": cmd_abort,
    "shadow": cmd_shadow,
}


def add_gate_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--force", action="store_true", help="skip the gate's comparison with the default's recorded quality"
    )
    parser.add_argument(
        "--margin", type=float, default=0.01, help="how far below the default's recorded metric the gate lets pass"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m stack.publish", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--management-url",
        default=os.environ.get("MANAGEMENT_URL", "http://127.0.0.1:8081"),
        help="this replica's TorchServe management API, for the memory check of register (env MANAGEMENT_URL)",
    )
    parser.add_argument(
        "--inference-url",
        default=os.environ.get("INFERENCE_URL", "http://127.0.0.1:8080"),
        help="this replica's TorchServe inference API, for the gate (env INFERENCE_URL)",
    )
    parser.add_argument(
        "--key-file",
        type=Path,
        default=default_key_file(),
        help="TorchServe's key_file.json (the management key is read from it); default: env KEY_FILE, else "
        "env RUN_DIR's torchserve/key_file.json, {ip} replaced by this host's address (RUN_DIR default: run)",
    )
    parser.add_argument(
        "--model-store",
        type=Path,
        default=default_model_store(),
        help="the .mar archives and served.json (env MODEL_STORE)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("DATA_DIR", REPO / "data")),
        help="the datasets, for the gate's validation split (env DATA_DIR)",
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for every replica")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the state: versions, defaults, canary, shadow, quality, and each replica")
    register = sub.add_parser("register", help="register an archive of the store and wait until it is READY")
    register.add_argument("archive", help="<name>-<version>.mar (a file name in the store, or its path)")
    register.add_argument("--workers", type=int, default=None, help="workers per replica (default: the archive's)")
    register.add_argument(
        "--force", action="store_true", help="skip the check that the new workers fit this replica's memory"
    )
    for command, text in (("set-default", "make a registered version the default (gated)"), ("unregister",
                          "remove a version that is not the default, canary or shadow")):  # fmt: skip
        p = sub.add_parser(command, help=text)
        p.add_argument("name", help="the model's name, e.g. cola")
        p.add_argument("version", help="a registered version, e.g. 2.0")
        if command == "unregister":
            p.add_argument("--delete-archive", action="store_true", help="also delete the .mar from the store")
        else:
            add_gate_options(p)
    sub.add_parser("rollback", help="go back to the previous default").add_argument("name", help="the model's name")
    scale = sub.add_parser("scale", help="set the number of workers of a version (per replica)")
    scale.add_argument("name", help="the model's name")
    scale.add_argument("version", help="a registered version")
    scale.add_argument("--workers", type=int, required=True, help="the number of workers")
    canary = sub.add_parser("canary", help="send a share of the unpinned requests to a registered version (gated)")
    canary.add_argument("name", help="the model's name")
    canary.add_argument("version", help="a registered version, not the default")
    canary.add_argument("--percent", type=float, required=True, help="0-100 (to 0.01) of the unpinned requests")
    add_gate_options(canary)
    promote = sub.add_parser("promote", help="make the canary the default and end the split (gated)")
    promote.add_argument("name", help="the model's name")
    add_gate_options(promote)
    sub.add_parser("abort", help="end the split: every unpinned request to the default").add_argument(
        "name", help="the model's name"
    )
    shadow = sub.add_parser("shadow", help="copy a share of the unpinned requests to a version, answers discarded")
    shadow.add_argument("name", help="the model's name")
    shadow.add_argument("version", nargs="?", help="a registered version, not the default")
    shadow.add_argument("--percent", type=float, help="0-100 (to 0.01) of the unpinned requests")
    shadow.add_argument("--off", action="store_true", help="stop the copies")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        COMMANDS[args.command](args)
    except (PublishError, ManagementError, StateError) as exc:
        print(f"publish: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
