"""Container healthcheck of TorchServe: exit 0 when every model the store serves (its ``served.json``; archives not
registered there are inert) has a READY worker, else 1.

Readiness is the worker status from the management API (with the management key from the run directory's key
file), not ``/ping``, which answers "Healthy" long before a worker can serve. Used by the Dockerfile's HEALTHCHECK
(and so by docker compose's ``depends_on: condition: service_healthy``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stack.management import Management, ManagementError
from torchserve_protocol.layout import default_model_store, default_run_dir_template, key_file_in, run_dir_of
from torchserve_protocol.store import StateFileError, read_state


def main() -> int:
    store = default_model_store()
    key_file = key_file_in(run_dir_of(default_run_dir_template()))  # this container's TorchServe, not $KEY_FILE
    try:
        state = read_state(store)
    except (OSError, StateFileError) as exc:
        print(f"not ready: {exc}")
        return 1
    names = sorted(state.models) if state is not None else []
    management = Management(os.environ.get("MANAGEMENT_URL", "http://127.0.0.1:8081"), key_file, timeout=3.0)
    try:
        status = management.ready(names)
    except ManagementError as exc:
        print(f"not ready: {exc}")
        return 1
    if names and all(status.values()):
        return 0
    print(f"not ready: {status or 'no served.json in ' + str(store)}")
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
