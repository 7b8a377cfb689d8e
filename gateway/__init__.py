"""The FastAPI gateway: the one service clients talk to; validates, maps the legacy contracts, forwards to TorchServe.

Run it with ``python -m gateway`` or ``uvicorn --factory gateway.app:create_app`` (see docs/gateway.md).
"""
