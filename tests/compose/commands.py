"""The documented compose commands, verbatim (README.md's "docker compose" and docs/deployment.md's publishing
section): the compose tier and the real-size tier run exactly these, and test_compose.py checks they are documented."""

UP = "docker compose up -d --wait"
GENERATE = (
    """curl -s -X POST 127.0.0.1:8000/generate -H 'Content-Type: application/json' -d '{"passage": "I are a boy"}'"""
)
PREDICT = (
    """curl -s -X POST 127.0.0.1:8000/predict -H 'Content-Type: application/json' """
    """-d '{"text": "Great app, but it crashes"}'"""
)
EACH_REPLICA = (
    'for i in $(seq "$(docker compose ps -q torchserve | wc -l)"); do docker compose exec --index "$i" torchserve '
)
REGISTER = EACH_REPLICA + "python -m stack.publish register cola-2.0.mar; done"
SET_DEFAULT = EACH_REPLICA + "python -m stack.publish set-default cola 2.0; done"
ROLLBACK = EACH_REPLICA + "python -m stack.publish rollback cola; done"
CANARY = "docker compose exec --index 1 torchserve python -m stack.publish canary cola 2.0 --percent 10"
PROMOTE = EACH_REPLICA + "python -m stack.publish promote cola; done"
UNREGISTER_OLD = EACH_REPLICA + "python -m stack.publish unregister cola 1.0; done"
SCALE = "docker compose up -d --wait --scale torchserve=2"
RESTART = "docker compose restart"
DOWN = "docker compose down"  # the volumes go in the fixtures' teardown (down -v)
COMMANDS = (
    UP, GENERATE, PREDICT, REGISTER, SET_DEFAULT, ROLLBACK, CANARY, PROMOTE, UNREGISTER_OLD, SCALE, RESTART, DOWN
)  # fmt: skip
