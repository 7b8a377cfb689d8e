"""``python -m stack {serve,start,stop,status,torchserve}``: run the whole stack with local processes.

* ``serve``      foreground: train each default model the store lacks, start TorchServe, apply the store's
                 ``served.json`` (written first when the store has none), wait until every worker is READY, start
                 the gateway (loopback ``--gateway-internal-port``) and the edge in front of it (nginx on
                 ``--gateway-host``:``--gateway-port``: the client-facing bounds, docs/gateway.md), then keep
                 TorchServe following ``served.json`` (stack/reconcile.py); Ctrl-C stops it all.
* ``start``      train what is missing, then run ``serve`` in the background (pid file ``stack.pid`` and log
                 ``stack.log`` in the run directory); returns once the gateway is ready.
* ``stop``       stop the launcher, the edge, the gateway and TorchServe (frontend and every worker); safe when
                 nothing runs.
* ``status``     what runs, and each model's versions, default and workers.
* ``torchserve`` foreground, TorchServe only, following ``served.json`` (the TorchServe container's command); with
                 ``INFERENCE_KEY_FILE`` set, keeps a copy of the inference key alone there (stack/inference_key.py),
                 for the gateway.
* ``models``     train each default model the store lacks, write ``served.json`` if the store has none, then exit
                 (compose's one-shot ``models``).

The Makefile and the Dockerfiles call these; nothing else starts TorchServe.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from stack import served_state
from stack.edge import Edge
from stack.gateway import Gateway
from stack.inference_key import InferenceKeyPublisher
from stack.management import Management, ManagementError
from stack.reconcile import Reconciler
from stack.torchserve import Ports, StackError, TorchServe, pid_from, stop_process_group, wait_http
from stack.worker_watch import WorkerWatch
from torchserve_protocol.archives import archives_in
from torchserve_protocol.layout import IP_PLACEHOLDER, REPO, default_model_store, default_run_dir_template, run_dir_of
from torchserve_protocol.workers import workers_file_beside

DEFAULT_TASKS = ("cola", "sentiment")


def ports_arg(value: str) -> Ports:
    try:
        return Ports(*(int(p) for p in value.split(",")))
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected 5 comma-separated ports, got {value!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m stack", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "command",
        choices=["serve", "start", "stop", "status", "torchserve", "models"],
        help="what to do (the list above)",
    )
    parser.add_argument(
        "--model-store",
        type=Path,
        default=default_model_store(),
        help="the .mar archives and served.json (env MODEL_STORE)",
    )
    parser.add_argument(
        "--run-dir",
        type=run_dir_of,
        default=default_run_dir_template(),
        help=f"pid files, key file and logs (env RUN_DIR); {IP_PLACEHOLDER} is replaced by this host's address",
    )
    parser.add_argument(
        "--host", default=os.environ.get("TS_HOST", "127.0.0.1"), help="TorchServe bind address (env TS_HOST)"
    )
    parser.add_argument(
        "--ts-ports",
        type=ports_arg,
        default=ports_arg(os.environ.get("TS_PORTS", "8080,8081,8082,7070,7071")),
        help="TorchServe's inference,management,metrics,grpc-inference,grpc-management ports (env TS_PORTS)",
    )
    parser.add_argument(
        "--gateway-host",
        default=os.environ.get("GATEWAY_HOST", "127.0.0.1"),
        help="the address clients use: the edge (nginx) listens there (env GATEWAY_HOST)",
    )
    parser.add_argument(
        "--gateway-port",
        type=int,
        default=int(os.environ.get("GATEWAY_PORT", "8000")),
        help="the port clients use: the edge's (env GATEWAY_PORT)",
    )
    parser.add_argument(
        "--gateway-internal-port",
        type=int,
        default=int(os.environ.get("GATEWAY_INTERNAL_PORT", "0")),
        help="the gateway's own port on 127.0.0.1, behind the edge; 0: a free one, chosen at start "
        "(env GATEWAY_INTERNAL_PORT)",
    )
    parser.add_argument(
        "--inference-key-file",
        type=run_dir_of,
        default=os.environ.get("INFERENCE_KEY_FILE") or None,
        help=f"torchserve: publish the inference key alone here (env INFERENCE_KEY_FILE; {IP_PLACEHOLDER} as above)",
    )
    parser.add_argument("--no-train", action="store_true", help="fail instead of training a missing default model")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for readiness")
    return parser


def missing_models(store: Path) -> list[str]:
    """The default models with no archive in the store (any version counts)."""
    present = {archive.name for archive in archives_in(store)}
    return [task for task in DEFAULT_TASKS if task not in present]


def training_plan(tasks: Sequence[str]) -> str:
    """One line: what will be trained on which base, and how long that took on the reference 2-core CPU."""
    from training.tasks import get_task  # imported only when there is something to train

    parts, bases, total = [], [], 0.0
    for name in tasks:
        task = get_task(name)
        base = os.environ.get("BASE_MODEL") or task.base_model
        minutes = task.recipe(base).minutes
        total += minutes or 0
        bases.append(f"{name} on {base}")
        parts.append(f"{name} on {base} (~{minutes:.0f} min)" if minutes else f"{name} on {base}")
    if extra_flags():  # flags of the user's: the recipe's time no longer applies
        return f"training {', '.join(bases)} with TRAIN_ARGS={shlex.join(extra_flags())}"
    return f"training {', '.join(parts)}: about {total:.0f} minutes on a 2-core CPU (docs/training.md)"


def extra_flags() -> list[str]:
    """``$TRAIN_ARGS`` split as a shell would: flags appended to each ``python -m training.train`` of a missing default
    model (``--max-train-rows 64 --epochs 1`` for a smoke run; the flags: docs/configuration.md)."""
    try:
        return shlex.split(os.environ.get("TRAIN_ARGS", ""))
    except ValueError as exc:
        raise StackError(f"TRAIN_ARGS: {exc}") from None


def ensure_models(store: Path, *, train: bool) -> None:
    """Train and package each default model that has no archive in the store (the first `make serve`, or a store
    where one model was removed); the archives already there are kept."""
    store.mkdir(parents=True, exist_ok=True)
    missing = missing_models(store)
    if not missing:
        return
    if not train:
        raise StackError(f"no {' or '.join(missing)} archive in {store}: run `make train TASK={missing[0]}` first")
    if not os.access(store, os.W_OK):
        raise StackError(f"{store} lacks {', '.join(missing)} and is not writable by uid {os.getuid()}: make it "
                         "writable (chown) or train elsewhere and copy the .mar files in")  # fmt: skip
    print(f"[stack] {store} has no {' or '.join(missing)} model: {training_plan(missing)}", flush=True)
    for task in missing:
        print(f"[stack] training the default {task} model (progress with ETA below)", flush=True)
        cmd = [sys.executable, "-m", "training.train", "--task", task, "--model-store", str(store), *extra_flags()]
        if subprocess.run(cmd, cwd=REPO, check=False).returncode != 0:
            raise StackError(f"training {task} failed; see the output above")


def bring_up_torchserve(ts: TorchServe, args: argparse.Namespace) -> Reconciler:
    """Start TorchServe and apply the store's state to it; the returned reconciler keeps it applied."""
    ts.start()
    ts.wait_up(timeout=args.timeout)
    management = Management(ts.management_url, ts.key_file)
    # workers.json beside each key file: TorchServe's (publish list, the local gateway) and, in compose, the
    # inference key's copy that the gateway and every replica's publish read
    copies = [args.inference_key_file] if args.inference_key_file is not None else []
    watch = WorkerWatch(management, *(workers_file_beside(k) for k in [ts.key_file, *copies]))
    reconciler = Reconciler(management, ts.model_store, watch, timeout=args.timeout)
    reconciler.tick()
    if reconciler.problems:
        raise StackError("; ".join(reconciler.problems))
    state = served_state.load(ts.model_store)
    assert state is not None  # ensured before TorchServe started
    management.wait_ready(state.models, timeout=args.timeout)
    defaults = {name: model.default for name, model in state.models.items()}
    print(f"[stack] TorchServe ready on {ts.inference_url}: {defaults}", flush=True)
    return reconciler


def launcher_pid_file(run_dir: Path) -> Path:
    return run_dir / "stack.pid"


def start_in_background(args: argparse.Namespace, argv: Sequence[str], edge: Edge) -> int:
    """``serve`` as a background process of its own session (so the store keeps being followed after ``start``
    returns); waits until the gateway is ready, else prints the end of its log and stops it."""
    pid_file = launcher_pid_file(args.run_dir)
    if pid_from(pid_file, marker="stack") is not None:
        raise StackError(f"the stack already runs from {args.run_dir} (pid file {pid_file}); `make stop` first")
    args.run_dir.mkdir(parents=True, exist_ok=True)
    log = args.run_dir / "stack.log"
    cmd = [sys.executable, "-m", "stack", *["serve" if a == "start" else a for a in argv], "--no-train"]
    with log.open("ab") as out:
        process = subprocess.Popen(cmd, cwd=REPO, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)  # fmt: skip
    pid_file.write_text(str(process.pid))
    try:
        wait_http(f"{edge.url}/ready", timeout=3 * args.timeout, process=process)
    except StackError:
        stop_process_group(process.pid, timeout=30)
        pid_file.unlink(missing_ok=True)
        tail = log.read_text(errors="replace").splitlines()[-20:]
        print("\n".join(tail), file=sys.stderr)
        raise StackError(f"the stack did not start; its log: {log}") from None
    print(f"[stack] gateway ready on {edge.url} (launcher pid {process.pid}, log {log})", flush=True)
    return 0


def stop_all(args: argparse.Namespace, ts: TorchServe, gateway: Gateway, edge: Edge) -> None:
    pid_file = launcher_pid_file(args.run_dir)
    pid = pid_from(pid_file, marker="stack")
    if pid is not None:  # the launcher stops what it started; the two below catch whatever it left
        stop_process_group(pid, timeout=60)
    pid_file.unlink(missing_ok=True)
    edge.stop()
    gateway.stop()
    ts.stop()


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def gateway_for(ts: TorchServe, args: argparse.Namespace) -> Gateway:
    """The gateway on loopback only: clients reach it through the edge. Its port is nobody's business but the
    edge's, so by default it is a free one (two stacks, or a test beside ``make serve``, never collide on it)."""
    if args.gateway_internal_port == args.gateway_port:
        raise StackError(f"--gateway-internal-port {args.gateway_internal_port} is the edge's port: choose another")
    port = args.gateway_internal_port or (free_loopback_port() if args.command in ("serve", "start") else 0)
    return Gateway(torchserve=ts, host="127.0.0.1", port=port)


def edge_for(gateway: Gateway, args: argparse.Namespace) -> Edge:
    return Edge(run_dir=args.run_dir, upstream=f"{gateway.host}:{gateway.port}", host=args.gateway_host,
                port=args.gateway_port)  # fmt: skip


def wait_for_signal(*processes: subprocess.Popen[bytes] | None, ticks: Sequence[Callable[[], None]] = ()) -> None:
    """Block until SIGINT/SIGTERM or until one of the processes exits on its own; call each of ``ticks`` meanwhile."""
    stop = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    while not stop:
        for proc in processes:
            if proc is not None and proc.poll() is not None:
                print(f"[stack] process {proc.pid} exited with {proc.returncode}; stopping", flush=True)
                return
        for tick in ticks:
            tick()
        time.sleep(0.5)


def status(ts: TorchServe, gateway: Gateway, edge: Edge) -> int:
    print(f"TorchServe: {'running pid ' + str(ts.running_pid()) if ts.running_pid() else 'not running'}")
    print(f"gateway:    {'running pid ' + str(gateway.running_pid()) if gateway.running_pid() else 'not running'}")
    print(f"edge:       {'running pid ' + str(edge.running_pid()) if edge.running_pid() else 'not running'}"
          f" (nginx on {edge.url})")  # fmt: skip
    if ts.running_pid() is None:
        return 1
    try:
        management = Management(ts.management_url, ts.key_file)
        for name in management.models():
            default = management.default_version(name)
            for v in management.versions(name):
                workers = ",".join(w["status"] for w in v.get("workers", [])) or "none"
                mark = " (default)" if v["modelVersion"] == default else ""
                print(f"  {name} {v['modelVersion']}{mark}: workers {workers}")
    except ManagementError as exc:
        print(f"  management API: {exc}")
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    ts = TorchServe(model_store=args.model_store, run_dir=args.run_dir, host=args.host, ports=args.ts_ports)
    try:
        gateway = gateway_for(ts, args)
        edge = edge_for(gateway, args)
        if args.command == "stop":
            stop_all(args, ts, gateway, edge)
            print("[stack] stopped", flush=True)
            return 0
        if args.command == "status":
            return status(ts, gateway, edge)
        if args.command in ("serve", "start"):
            gateway.check_environment()  # before anything starts
            edge.check()  # nginx is there and loads the config
        ensure_models(args.model_store, train=not args.no_train and args.command != "torchserve")
        state = served_state.ensure(args.model_store, DEFAULT_TASKS)
        if args.command == "models":
            served = ", ".join(f"{name} {m.default}" for name, m in sorted(state.models.items()))
            print(f"[stack] models in {args.model_store}: serving {served}")
            return 0
        if args.command == "start":
            return start_in_background(args, argv, edge)
        return run_foreground(args, ts, gateway, edge)
    except (StackError, ManagementError, served_state.StateError) as exc:
        print(f"[stack] error: {exc}", file=sys.stderr)
        return 1


def run_foreground(args: argparse.Namespace, ts: TorchServe, gateway: Gateway, edge: Edge) -> int:
    """``serve`` and ``torchserve``: bring everything up, follow the store until a signal, stop everything."""
    stop = None
    try:
        reconciler = bring_up_torchserve(ts, args)
        _thread, stop = reconciler.start()
        ticks = []
        if args.command == "torchserve" and args.inference_key_file is not None:
            publisher = InferenceKeyPublisher(ts.key_file, args.inference_key_file, ts.management_url)
            publisher.tick()
            ticks.append(publisher.tick)
        if args.command == "serve":
            gateway.start()
            gateway.wait_ready(timeout=args.timeout)
            edge.start()
            edge.wait_up(path="/ready", timeout=args.timeout)
            print(f"[stack] gateway ready on {edge.url} (the edge; the gateway itself on {gateway.url})", flush=True)
        wait_for_signal(ts.process, gateway.process, edge.process, ticks=ticks)
        return 0
    finally:
        if stop is not None:
            stop.set()
        edge.stop()
        gateway.stop()
        ts.stop()
        print("[stack] stopped", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
