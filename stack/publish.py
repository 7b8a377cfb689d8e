"""Publish model versions on a running TorchServe through its management API (with the management key).

    python -m stack.publish list
    python -m stack.publish register model_store/cola-2.0.mar [--workers 1]   # checks it fits, waits until READY
    python -m stack.publish set-default cola 2.0                              # recorded in defaults.json
    python -m stack.publish rollback cola                                     # back to the previous default
    python -m stack.publish unregister cola 2.0 [--delete-archive]            # refuses the current default
    python -m stack.publish scale cola 2.0 --workers 2
    python -m stack.publish canary cola 2.0 --percent 10                      # 10% of unpinned traffic to 2.0
    python -m stack.publish promote cola                                      # the canary becomes the default
    python -m stack.publish abort cola                                        # all traffic back to the default

The default version chosen here is written to ``<model_store>/defaults.json`` (atomically) *before* TorchServe is
told, and put back if TorchServe refuses, so the file and the running default never disagree; a store that cannot be
written fails the command with one line and TorchServe unchanged. The file keeps a short history for ``rollback``:
``{"cola": {"default": "2.0", "history": ["1.0"]}}``. TorchServe runs without snapshots
(``--ncs``); at every start the launcher re-registers each archive of the store and sets the defaults recorded in
that file (stack/management.py ``register_store``), so a restart serves the same versions and the same default.

The canary split lives in ``<model_store>/canary.json`` (:mod:`torchserve_protocol.store`), written atomically and
read by every gateway process (each checks it about once a second): TorchServe itself knows nothing of it.
``promote`` makes the canary TorchServe's default (through ``defaults.json`` as ``set-default`` does) and only then
ends the split, so no request is sent to a version that stopped serving.

Every failure prints one line (``publish: error: ...``) to stderr and exits 1.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from stack import budget
from stack.management import Management, ManagementError
from torchserve_protocol.archives import Archive, archive_name, parse_archive, version_key
from torchserve_protocol.layout import default_key_file, default_model_store, run_dir_of_key_file, temp_in
from torchserve_protocol.store import (
    DEFAULTS_FILE,
    SPLIT_FILE,
    Canary,
    ModelDefault,
    SplitFileError,
    read_split,
    write_split,
)
from torchserve_protocol.store import read_defaults as read_defaults_file
from torchserve_protocol.store import write_defaults as write_defaults_file
from torchserve_protocol.workers import read_workers, workers_file_beside

HISTORY_LENGTH = 10
Defaults = dict[str, ModelDefault]


class PublishError(RuntimeError):
    """A request that cannot be carried out; the message is the one line the user sees."""


# --- defaults.json: the operator's default per model and the previous ones (newest last) -----------------------


def read_defaults(store: Path) -> Defaults:
    try:
        return read_defaults_file(store)
    except OSError as exc:
        raise PublishError(f"cannot read {store / DEFAULTS_FILE} ({exc.strerror}; running as uid {os.getuid()}): "
                           "TorchServe was not changed; make the model store readable and writable for this "
                           "user") from None  # fmt: skip
    except ValueError as exc:
        raise PublishError(f"{store / DEFAULTS_FILE} is not valid ({exc}); fix or delete it") from None


def write_defaults(store: Path, defaults: Defaults) -> None:
    """Write ``defaults.json`` atomically; a store that cannot be written raises :class:`PublishError` (one line)."""
    try:
        write_defaults_file(store, defaults)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise PublishError(f"cannot write {store / DEFAULTS_FILE} ({reason}; running as uid {os.getuid()}): "
                           "TorchServe was not changed; make the model store writable for this user and run the "
                           "command again") from None  # fmt: skip


def switch_default(mgmt: Management, store: Path, name: str, version: str, defaults: Defaults) -> None:
    """Record ``defaults`` in the store first, then make ``version`` TorchServe's default; if TorchServe refuses,
    the store gets its old ``defaults.json`` back. The file and the running default never disagree."""
    before = read_defaults(store)
    write_defaults(store, defaults)
    try:
        mgmt.set_default(name, version)
    except BaseException:
        write_defaults(store, before)
        raise


def with_default(store: Path, name: str, version: str, *, previous: str | None) -> Defaults:
    """The store's defaults with ``version`` as the default of ``name``; ``previous`` (the one it replaces) goes
    onto the history."""
    defaults = read_defaults(store)
    entry = defaults.get(name, ModelDefault(default=version))
    history = [v for v in entry.history if v != version]
    if previous is not None and previous != version:
        history = [v for v in history if v != previous] + [previous]
    defaults[name] = ModelDefault(default=version, history=tuple(history[-HISTORY_LENGTH:]))
    return defaults


# --- management API helpers ---------------------------------------------------------------------------------------


def registered_versions(mgmt: Management, name: str) -> dict[str, dict[str, Any]]:
    try:
        return {str(v["modelVersion"]): v for v in mgmt.versions(name)}
    except ManagementError as exc:
        if exc.status == 404:
            raise PublishError(f"model {name!r} is not registered") from None
        raise


def require_version(mgmt: Management, name: str, version: str) -> dict[str, Any]:
    versions = registered_versions(mgmt, name)
    if version not in versions:
        known = ", ".join(sorted(versions, key=version_key))
        raise PublishError(f"{name} has no version {version!r} registered (registered: {known})")
    return versions[version]


def ready_workers(description: dict[str, Any]) -> int:
    return sum(1 for w in description.get("workers", []) if w.get("status") == "READY")


def wait_version_ready(mgmt: Management, name: str, version: str, *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while ready_workers(require_version(mgmt, name, version)) == 0:
        if time.monotonic() > deadline:
            raise PublishError(f"{name} {version} registered but no worker READY after {timeout:.0f}s")
        time.sleep(0.25)


def wait_drained(mgmt: Management, name: str, version: str, *, quiet_s: float, timeout: float) -> None:
    """Wait until ``version`` has had no pending request for ``quiet_s`` seconds (requests that resolved the old
    default just before a switch are still queued on it)."""
    deadline = time.monotonic() + timeout
    quiet_since = time.monotonic()
    while time.monotonic() - quiet_since < quiet_s:
        if time.monotonic() > deadline:
            raise PublishError(f"{name} {version} still has pending requests after {timeout:.0f}s; try again")
        queue = require_version(mgmt, name, version).get("jobQueueStatus", {})
        if int(queue.get("pendingRequests", 0)) > 0:
            quiet_since = time.monotonic()
        time.sleep(0.1)


# --- commands -------------------------------------------------------------------------------------------------------


def watched_restarts(key_file: Path) -> dict[tuple[str, str], int]:
    """Worker restarts per version from the launcher's ``workers.json`` beside the key file (none: not watched)."""
    reading = read_workers(workers_file_beside(key_file))
    return {(v.model, v.version): v.restarts for v in reading[1]} if reading else {}


def cmd_list(mgmt: Management, args: argparse.Namespace) -> None:
    names = mgmt.models()
    split = store_split(args.model_store)
    restarts = watched_restarts(args.key_file)
    if not names:
        print("no models registered")
    for name in sorted(names):
        default = mgmt.default_version(name)
        canary = split.get(name)
        share = canary.percent if canary else 0.0
        for version, desc in sorted(registered_versions(mgmt, name).items(), key=lambda kv: version_key(kv[0])):
            workers = ",".join(str(w.get("status")) for w in desc.get("workers", [])) or "none"
            mark = ("  default" + (f" {100 - share:g}%" if canary else "")) if version == default else ""
            if canary and version == canary.version:
                mark = f"  canary {share:g}%"
            if (name, version) in restarts:  # a crash loop shows as restarts that keep growing
                mark += f"  restarts={restarts[name, version]}"
            print(f"{name:<16} {version:<8} workers={workers}{mark}")


# --- the canary split (canary.json) ---------------------------------------------------------------------------------


def store_split(store: Path) -> dict[str, Canary]:
    try:
        return read_split(store)
    except SplitFileError as exc:
        raise PublishError(f"{exc}; fix or delete it") from None
    except OSError as exc:
        raise PublishError(f"cannot read {store / SPLIT_FILE} ({exc.strerror}; running as uid {os.getuid()})") from None


def save_split(store: Path, split: dict[str, Canary]) -> None:
    try:
        write_split(store, split)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise PublishError(f"cannot write {store / SPLIT_FILE} ({reason}; running as uid {os.getuid()}): the split "
                           "was not changed; make the model store writable") from None  # fmt: skip


def cmd_canary(mgmt: Management, args: argparse.Namespace) -> None:
    if not 0 <= args.percent <= 100:
        raise PublishError(f"--percent must be from 0 to 100, not {args.percent:g}")
    split = store_split(args.model_store)
    running = split.get(args.name)
    if running is not None:
        raise PublishError(f"{args.name} already has a canary ({running.version} at {running.percent:g}%); "
                           f"promote or abort it first")  # fmt: skip
    desc = require_version(mgmt, args.name, args.version)
    if mgmt.default_version(args.name) == args.version:
        raise PublishError(f"{args.name} {args.version} is already the default; a canary must be another version")
    if ready_workers(desc) == 0:
        raise PublishError(f"{args.name} {args.version} has no READY worker; scale it up first")
    save_split(args.model_store, {**split, args.name: Canary(version=args.version, percent=round(args.percent, 2))})
    print(f"{args.name}: canary {args.version} gets {args.percent:g}% of unpinned requests (gateways follow within "
          "about a second)")  # fmt: skip


def running_canary(store: Path, name: str) -> tuple[dict[str, Canary], Canary]:
    split = store_split(store)
    if name not in split:
        raise PublishError(f"{name} has no canary running (see `list`)")
    return split, split[name]


def cmd_promote(mgmt: Management, args: argparse.Namespace) -> None:
    split, canary = running_canary(args.model_store, args.name)
    desc = require_version(mgmt, args.name, canary.version)
    if ready_workers(desc) == 0:
        raise PublishError(f"canary {args.name} {canary.version} has no READY worker; scale it up or abort")
    previous = mgmt.default_version(args.name)
    if previous != canary.version:  # first TorchServe's default (both versions keep serving), then the split ends
        defaults = with_default(args.model_store, args.name, canary.version, previous=previous)
        switch_default(mgmt, args.model_store, args.name, canary.version, defaults)
    save_split(args.model_store, {k: v for k, v in split.items() if k != args.name})
    print(f"{args.name}: canary {canary.version} promoted, default {previous} -> {canary.version} (rollback: "
          f"`rollback {args.name}`)")  # fmt: skip


def cmd_abort(mgmt: Management, args: argparse.Namespace) -> None:
    split, canary = running_canary(args.model_store, args.name)
    save_split(args.model_store, {k: v for k, v in split.items() if k != args.name})
    print(f"{args.name}: canary {canary.version} aborted; all unpinned requests go to the default "
          f"({canary.version} stays registered)")  # fmt: skip


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


def archive_workers(path: Path) -> int:
    """The workers TorchServe starts for an archive: its ``model-config.yaml``'s ``minWorkers`` (1 without one)."""
    with zipfile.ZipFile(path) as mar:
        try:
            config = yaml.safe_load(mar.read("model-config.yaml")) or {}
        except KeyError:
            return 1
    return int(config.get("minWorkers", 1))


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
    return budget.Cost(workers=workers or archive_workers(archive.path), per_worker=max(sizes), unpacked=unpacked)


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


def cmd_register(mgmt: Management, args: argparse.Namespace) -> None:
    archive = archive_in_store(args.archive, args.model_store)
    name, version = archive.name, archive.version
    if name in mgmt.models() and version in registered_versions(mgmt, name):
        raise PublishError(f"{name} {version} is already registered (unregister it, or package a new version)")
    check_budget(mgmt, archive, args)
    try:
        mgmt.register(archive.path.name, workers=args.workers, timeout=args.timeout)
        wait_version_ready(mgmt, name, version, timeout=args.timeout)
    except ManagementError as exc:  # TorchServe unregisters a version whose workers failed to start
        raise PublishError(f"{name} {version} did not start ({exc}); TorchServe dropped it, and the versions that "
                           "were serving kept their workers") from None  # fmt: skip
    default = mgmt.default_version(name)
    print(f"registered {name} {version}: READY (default stays {default}; switch with `set-default {name} {version}`)")


def cmd_set_default(mgmt: Management, args: argparse.Namespace) -> None:
    desc = require_version(mgmt, args.name, args.version)
    if ready_workers(desc) == 0:
        raise PublishError(f"{args.name} {args.version} has no READY worker; scale it up before making it default")
    previous = mgmt.default_version(args.name)
    defaults = with_default(args.model_store, args.name, args.version, previous=previous)
    switch_default(mgmt, args.model_store, args.name, args.version, defaults)
    print(f"{args.name}: default {previous} -> {args.version}")


def cmd_rollback(mgmt: Management, args: argparse.Namespace) -> None:
    defaults = read_defaults(args.model_store)
    history = defaults[args.name].history if args.name in defaults else ()
    if not history:
        raise PublishError(f"no previous default of {args.name} recorded in {args.model_store / DEFAULTS_FILE}")
    target = history[-1]
    desc = require_version(mgmt, args.name, target)
    if ready_workers(desc) == 0:
        raise PublishError(f"previous default {args.name} {target} has no READY worker; scale it up first")
    current = mgmt.default_version(args.name)
    defaults[args.name] = ModelDefault(default=target, history=history[:-1])
    switch_default(mgmt, args.model_store, args.name, target, defaults)
    print(f"{args.name}: default {current} -> {target} (rolled back)")


def unregister_once(mgmt: Management, name: str, version: str, *, settle_s: float = 10.0) -> None:
    """``DELETE`` the version. Under load TorchServe 0.12 sometimes answers 500 "Interrupted while cleaning
    resources" (seen in the real-size tier) while the version goes all the same: what counts is whether it is gone,
    so a 500 is followed by a look, and one more ``DELETE`` only if it is still there after ``settle_s``."""
    try:
        mgmt.unregister(name, version)
        return
    except ManagementError as exc:
        if exc.status != 500:
            raise
    deadline = time.monotonic() + settle_s
    while time.monotonic() < deadline:
        if version not in registered_versions(mgmt, name):
            return
        time.sleep(0.25)
    mgmt.unregister(name, version)


def cmd_unregister(mgmt: Management, args: argparse.Namespace) -> None:
    require_version(mgmt, args.name, args.version)
    if mgmt.default_version(args.name) == args.version:
        raise PublishError(f"{args.name} {args.version} is the current default; set another default first")
    archive = args.model_store / archive_name(args.name, args.version)
    before = read_defaults(args.model_store)
    defaults = read_defaults(args.model_store)
    if args.name in defaults:  # a version that is gone is no rollback target; recorded first (the store may refuse)
        entry = defaults[args.name]
        defaults[args.name] = ModelDefault(entry.default, tuple(v for v in entry.history if v != args.version))
    changed = defaults != before
    if changed:
        write_defaults(args.model_store, defaults)
    if args.delete_archive and not os.access(args.model_store, os.W_OK):
        if changed:
            write_defaults(args.model_store, before)
        raise PublishError(f"cannot delete {archive}: the store is not writable by uid {os.getuid()}; TorchServe was "
                           "not changed")  # fmt: skip
    try:
        wait_drained(mgmt, args.name, args.version, quiet_s=args.drain_s, timeout=args.timeout)
        unregister_once(mgmt, args.name, args.version)
    except BaseException:
        if changed:
            write_defaults(args.model_store, before)
        raise
    if args.delete_archive:
        archive.unlink(missing_ok=True)
        print(f"unregistered {args.name} {args.version} and deleted {archive}")
    else:
        print(f"unregistered {args.name} {args.version} ({archive.name} stays in the store: the next TorchServe "
              "start registers it again; --delete-archive removes it)")  # fmt: skip


def cmd_scale(mgmt: Management, args: argparse.Namespace) -> None:
    require_version(mgmt, args.name, args.version)
    mgmt.scale(args.name, args.version, args.workers, timeout=args.timeout)
    if args.workers > 0:
        wait_version_ready(mgmt, args.name, args.version, timeout=args.timeout)
    print(f"{args.name} {args.version}: {args.workers} worker(s)")


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
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m stack.publish", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--management-url",
        default=os.environ.get("MANAGEMENT_URL", "http://127.0.0.1:8081"),
        help="TorchServe's management API (env MANAGEMENT_URL)",
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
        help="the .mar archives and defaults.json (env MODEL_STORE)",
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for workers / draining")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="models, versions, default, canary split and worker status")
    register = sub.add_parser("register", help="register an archive of the store and wait until it is READY")
    register.add_argument("archive", help="<name>-<version>.mar (a file name in the store, or its path)")
    register.add_argument("--workers", type=int, default=None, help="initial workers (default: the archive's)")
    register.add_argument(
        "--force", action="store_true", help="skip the check that the new workers fit this replica's memory"
    )
    for command, text in (("set-default", "make a registered version the default"), ("unregister", "remove a "
                          "version that is not the default")):  # fmt: skip
        p = sub.add_parser(command, help=text)
        p.add_argument("name", help="the model's name, e.g. cola")
        p.add_argument("version", help="a registered version, e.g. 2.0")
        if command == "unregister":
            p.add_argument("--drain-s", type=float, default=1.0, help="seconds without pending requests first")
            p.add_argument("--delete-archive", action="store_true", help="also delete the .mar from the store")
    sub.add_parser("rollback", help="go back to the previous default").add_argument("name", help="the model's name")
    scale = sub.add_parser("scale", help="set the number of workers of a version")
    scale.add_argument("name", help="the model's name")
    scale.add_argument("version", help="a registered version")
    scale.add_argument("--workers", type=int, required=True, help="the number of workers")
    canary = sub.add_parser("canary", help="send a share of the unpinned requests to a registered version")
    canary.add_argument("name", help="the model's name")
    canary.add_argument("version", help="a registered version, not the default")
    canary.add_argument("--percent", type=float, required=True, help="0-100 (to 0.01) of the unpinned requests")
    sub.add_parser("promote", help="make the canary the default and end the split").add_argument(
        "name", help="the model's name"
    )
    sub.add_parser("abort", help="end the split: every unpinned request to the default").add_argument(
        "name", help="the model's name"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    mgmt = Management(args.management_url, args.key_file, timeout=10.0)
    try:
        COMMANDS[args.command](mgmt, args)
    except (PublishError, ManagementError) as exc:
        print(f"publish: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
