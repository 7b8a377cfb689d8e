"""Gateway settings: one typed class read from ``GATEWAY_*`` environment variables (or a ``.env``-free override).

Every field is described; a bad value fails :func:`load_settings` (called by the app factory at start-up) with a
message naming the environment variable, never later at request time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from torchserve_protocol.archives import MODEL_NAME_PATTERN
from torchserve_protocol.layout import REPO, key_file_in
from torchserve_protocol.limits import HANDLER_MAX_CHARS, HANDLER_MAX_TEXTS, TORCHSERVE_MAX_REQUEST_BYTES

ENV_PREFIX = "GATEWAY_"

Seconds = Annotated[float, Field(gt=0, le=600)]
HOST_PLACEHOLDER = "{host}"  # in key_file when replicas are discovered: replaced by each replica's address


def _from_repo(path: Path) -> Path:
    return path if path.is_absolute() else REPO / path


class SettingsError(RuntimeError):
    """The environment holds a missing or bad ``GATEWAY_*`` value; the message names each one."""


class ReplicaSettings(BaseModel):
    """One TorchServe replica given explicitly (an item of ``GATEWAY_REPLICAS``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    inference_url: AnyHttpUrl = Field(description="The replica's inference API base URL.")
    management_url: AnyHttpUrl = Field(description="The replica's management API base URL.")
    key_file: Path = Field(description="The replica's own key_file.json (relative: from the repository root).")

    @field_validator("key_file")
    @classmethod
    def _from_repo_root(cls, value: Path) -> Path:
        return _from_repo(value)


class Settings(BaseSettings):
    """Everything the gateway reads from its environment (prefix ``GATEWAY_``, e.g. ``GATEWAY_READ_TIMEOUT_S=20``)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True, validate_default=True)

    inference_url: AnyHttpUrl = Field(
        default=AnyHttpUrl("http://127.0.0.1:8080"), description="TorchServe inference API base URL."
    )
    management_url: AnyHttpUrl = Field(
        default=AnyHttpUrl("http://127.0.0.1:8081"),
        description="TorchServe management API base URL (readiness: worker status; renewing expired keys).",
    )
    key_file: Path = Field(
        default=key_file_in(REPO / "run"),
        description="TorchServe's key_file.json (keys 'inference', 'management', 'API'); a relative path is taken "
        "from the repository root. It may be missing at start-up: requests answer 503 until TorchServe writes it.",
    )
    generate_model: str = Field(
        default="cola", pattern=MODEL_NAME_PATTERN, description="TorchServe model behind POST /generate (labels must "
        "include 'acceptable')."
    )  # fmt: skip
    predict_model: str = Field(
        default="sentiment", pattern=MODEL_NAME_PATTERN, description="TorchServe model behind POST /predict (labels "
        "'negative', 'neutral', 'positive')."
    )  # fmt: skip
    max_text_chars: int = Field(
        default=5_000,
        ge=1,
        le=HANDLER_MAX_CHARS,
        description="Characters per text (passage). The handler keeps 128 tokens (~500-1000 characters) and "
        "truncates the rest, so 5000 leaves room for any real sentence or review while bounding the work; must be "
        f"<= the handler's max_chars ({HANDLER_MAX_CHARS}).",
    )
    max_batch_items: int = Field(
        default=64,
        ge=1,
        le=HANDLER_MAX_TEXTS,
        description=f"Texts per batch request; must be <= the handler's max_texts ({HANDLER_MAX_TEXTS}).",
    )
    max_body_bytes: int = Field(
        default=1_000_000,
        ge=1_024,
        le=TORCHSERVE_MAX_REQUEST_BYTES,
        description="Request bodies over this many bytes answer 413 before they are parsed. Must be <= "
        "TorchServe's max_request_size (1 MiB): the body forwarded is never larger than the one received.",
    )
    body_timeout_s: Seconds = Field(
        default=30.0,
        description="The whole request body must arrive within this many seconds of the request start, else 408 and "
        "the connection is closed (a client that sends headers and then stalls, slow-loris style, holds nothing).",
    )
    max_buffered_bytes: int = Field(
        default=32 * 1_048_576,
        ge=1_024,
        le=1_073_741_824,
        description="Request-body bytes all connections together may hold in the gateway at once (bodies are "
        "buffered whole before parsing); a request that would go over it answers 503 + Retry-After and its "
        "connection is closed. Must be >= max_body_bytes.",
    )
    max_header_bytes: int = Field(
        default=16_384,
        ge=1_024,
        le=1_048_576,
        description="Request line plus headers, in bytes (uvicorn's h11_max_incomplete_event_size, h11's default); "
        "over it uvicorn answers 400 and closes the connection. The edge in front holds the tighter bounds (header "
        "size and count, 431).",
    )
    max_headers: int = Field(
        default=100,
        ge=1,
        le=10_000,
        description="Header lines in one request; over it the gateway answers 431 headers_too_large (JSON) before the "
        "app reads anything. nginx bounds the head's bytes but cannot count its lines, so the gateway does.",
    )
    keep_alive_timeout_s: int = Field(
        default=5, ge=1, le=600,
        description="An idle keep-alive connection is closed after this many seconds (uvicorn's timeout_keep_alive).",
    )  # fmt: skip
    max_client_connections: int = Field(
        default=256,
        ge=1,
        le=100_000,
        description="Open client connections, or requests in progress, per gateway process (uvicorn's "
        "limit_concurrency): past it a new request is answered 503 by uvicorn. The edge in front bounds connections "
        "per client address.",
    )
    connect_timeout_s: Seconds = Field(
        default=2.0, description="Opening a connection to TorchServe (loopback); past it -> 503 + Retry-After."
    )
    read_timeout_s: Seconds = Field(
        default=35.0,
        description="Waiting for TorchServe's answer; past it -> 504. Above TorchServe's responseTimeout (30 s), so "
        "a stuck worker is reported by TorchServe itself first; below the 60 s that proxies and most clients wait, "
        "so the client gets the 504 rather than a dropped connection.",
    )
    attempt_timeout_s: Seconds = Field(
        default=10.0,
        description="Inference is idempotent: an attempt still unanswered after this many seconds is sent once more "
        "(to the next replica) while the first keeps waiting, and the first answer wins; an attempt answered "
        "'Worker died' or cut mid-request is sent again at once. Either way at most two attempts, and the client "
        "is answered by read_timeout_s (504 past it). Far above a normal answer (~10-100 ms, ~1 s under heavy "
        "queueing): it catches a request TorchServe lost with a dead worker.",
    )

    pool_timeout_s: Seconds = Field(
        default=2.0, description="Waiting for a free pooled connection; past it -> 503 (gateway saturated)."
    )
    max_connections: int = Field(
        default=64, ge=1, le=1_000, description="Pooled connections to TorchServe (per gateway worker process)."
    )
    retry_after_s: int = Field(
        default=5, ge=1, le=3_600, description="Retry-After (seconds) sent with every 503 answer."
    )
    key_refresh_wait_s: float = Field(
        default=1.0,
        ge=0,
        le=30,
        description="After TorchServe rejects a key, how long to poll the key file for a new one (TorchServe "
        "switches keys in memory before it rewrites the file) before the single retry.",
    )
    ready_probe: Literal["management", "inference"] = Field(
        default="management",
        description="How /ready asks each replica: 'management' reads the default version's worker status (needs "
        "the management key); 'inference' sends one real prediction per model (the inference key alone is enough: "
        "compose, where the gateway holds no other key).",
    )
    renew_expired_keys: bool = Field(
        default=True,
        description="When the key in the file has itself expired (TorchServe keys live token_expiration_min, 60 "
        "min), ask TorchServe for a new one (POST /token with the API key) instead of failing every request.",
    )

    model_store: Path | None = Field(
        default=None,
        description="The model store, read only: its state file served.json (the canary split, the shadow and the "
        "catalogue of GET /models, with each archive's labels and validation metrics). Unset: no canary split and "
        "GET /models answers 503. A relative path is taken from the repository root.",
    )
    split_check_s: float = Field(
        default=1.0,
        ge=0,
        le=60,
        description="How often the store's state file (served.json: the canary split and the shadow) is checked "
        "for a change (one stat; re-read only when it changed): every gateway process follows a new split or "
        "shadow within this many seconds.",
    )
    shadow_timeout_s: Seconds = Field(
        default=2.0,
        description="How long a shadow copy (a copy of an unpinned request sent to the store's shadow version "
        "after the client's answer) may wait for its answer; past it the copy is dropped and counted. Well above a "
        "normal answer (~10-100 ms, ~1 s under heavy queueing) and far below read_timeout_s: a slow shadow holds a "
        "pooled connection and an in-flight slot no longer than this.",
    )
    shadow_max_in_flight: int = Field(
        default=8,
        ge=1,
        le=1_000,
        description="Shadow copies in flight at most (per gateway process); one more is dropped and counted, never "
        "queued. 8 is one TorchServe batch (the archives' batchSize) and an eighth of the default max_connections: "
        "a slow or stuck shadow can take no more than that from the clients' connections. Never more than half "
        "of max_connections is used (the rest stay the clients').",
    )

    replicas: list[ReplicaSettings] | None = Field(
        default=None,
        min_length=1,
        description='Several TorchServe replicas given explicitly, as JSON: [{"inference_url": ..., '
        '"management_url": ..., "key_file": ...}, ...]. Unset: the one replica of inference_url, '
        "management_url and key_file. Requests are spread round-robin over the replicas that are not down.",
    )
    discover_replicas: bool = Field(
        default=False,
        description="Find the replicas in DNS instead: the host of inference_url is resolved to all its addresses "
        "(docker compose --scale: one address per replica) every replica_refresh_s; each address is one replica "
        f"with the ports of inference_url and management_url, and key_file must contain {HOST_PLACEHOLDER}, "
        "replaced by the address. A failed resolution keeps the replicas last found.",
    )
    replica_refresh_s: Seconds = Field(default=5.0, description="How often discovery resolves the host again.")
    replica_down_s: Seconds = Field(
        default=5.0,
        description="A replica that refused a connection (or whose key file cannot be read) gets no requests for "
        "this many seconds while another replica is up; the request itself is sent to the next replica.",
    )

    @field_validator("key_file")
    @classmethod
    def _from_repo_root(cls, value: Path) -> Path:
        return _from_repo(value)

    @field_validator("model_store")
    @classmethod
    def _store_from_repo_root(cls, value: Path | None) -> Path | None:
        return None if value is None else _from_repo(value)

    @model_validator(mode="after")
    def _distinct_models(self) -> Settings:
        if self.generate_model == self.predict_model:
            raise ValueError("generate_model and predict_model must name different models")
        return self

    @model_validator(mode="after")
    def _buffer_holds_a_body(self) -> Settings:
        if self.max_buffered_bytes < self.max_body_bytes:
            raise ValueError("max_buffered_bytes must be >= max_body_bytes")
        return self

    @model_validator(mode="after")
    def _one_way_to_name_replicas(self) -> Settings:
        templated = HOST_PLACEHOLDER in str(self.key_file)
        if self.discover_replicas and self.replicas is not None:
            raise ValueError("give either replicas or discover_replicas, not both")
        if self.discover_replicas and not templated:
            raise ValueError(f"discover_replicas needs a key_file containing {HOST_PLACEHOLDER} (one per replica)")
        if templated and not self.discover_replicas:
            raise ValueError(f"key_file contains {HOST_PLACEHOLDER} but discover_replicas is off")
        return self

    @property
    def inference_base(self) -> str:
        return str(self.inference_url).rstrip("/")

    @property
    def management_base(self) -> str:
        return str(self.management_url).rstrip("/")


def load_settings() -> Settings:
    """Read :class:`Settings` from the environment; raise :class:`SettingsError` naming every bad variable."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_url=False, include_input=False):
            field = ".".join(str(part) for part in error["loc"])
            where = f"{ENV_PREFIX}{field.upper()}" if field else "settings"
            problems.append(f"{where}: {error['msg']}")
        raise SettingsError("invalid gateway settings: " + "; ".join(problems)) from None
