"""The documented compose commands, verbatim (README.md's "docker compose" and docs/deployment.md's publishing
section): the compose tier and the real-size tier run exactly these, and tests/docs/test_compose_commands.py checks
they are documented. One publish command, run in any TorchServe replica, moves every replica (served.json)."""

UP = "docker compose up -d --wait"
GENERATE = (
    """curl -s -X POST 127.0.0.1:8000/generate -H 'Content-Type: application/json' -d '{"passage": "I are a boy"}'"""
)
PREDICT = (
    """curl -s -X POST 127.0.0.1:8000/predict -H 'Content-Type: application/json' """
    """-d '{"text": "Great app, but it crashes"}'"""
)
TRAIN = "docker compose run --rm train --task cola"  # the tier appends a few-row flag set (conftest.FEW_ROWS)
PUBLISH = "docker compose exec torchserve python -m stack.publish "
LIST = PUBLISH + "list"
REGISTER = PUBLISH + "register cola-2.0.mar"
SET_DEFAULT = PUBLISH + "set-default cola 2.0"
ROLLBACK = PUBLISH + "rollback cola"
CANARY = PUBLISH + "canary cola 2.0 --percent 10"
PROMOTE = PUBLISH + "promote cola"
UNREGISTER_OLD = PUBLISH + "unregister cola 1.0"
SCALE = "docker compose up -d --wait --scale torchserve=2"
RESTART = "docker compose restart"
DOWN = "docker compose down"  # the volumes go in the fixtures' teardown (down -v)
COMMANDS = (
    UP, GENERATE, PREDICT, TRAIN, LIST, REGISTER, SET_DEFAULT, ROLLBACK, CANARY, PROMOTE, UNREGISTER_OLD, SCALE,
    RESTART, DOWN,
)  # fmt: skip
