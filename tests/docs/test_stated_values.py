"""Every default, limit and count that README.md and docs/ state in words, against the one place in the code that
sets it. A claim is the doc's own words with ``{}`` where the value goes; the test fails when the code's value, put
there, is not what the doc says (change the doc, or this table if only the wording changed)."""

from __future__ import annotations

import inspect
import re
import uuid

import pytest
import yaml

from gateway.__main__ import build_parser as gateway_parser
from gateway.canary import CLIENT_KEY_PATTERN
from gateway.http_server import uvicorn_options
from gateway.metrics import BUCKETS
from gateway.request_id import REQUEST_ID_PATTERN
from gateway.settings import Settings
from stack.gateway_limits import size
from stack.inference_key import InferenceKeyPublisher
from tests.docs import sources
from tests.docs.stated import (
    BASE_NAMES,
    MIB,
    WORDS,
    Stated,
    default,
    one_token,
    port,
    sci,
    seconds,
    stated,
)
from torchserve_protocol.layout import REPO
from torchserve_protocol.limits import HANDLER_MAX_CHARS, HANDLER_MAX_TEXTS, TORCHSERVE_MAX_REQUEST_BYTES
from training.arguments import parser as training_parser
from training.tasks import TASKS

SERVING = "training/package.py"  # ServingConfig: what every archive's model-config.yaml carries
HANDLER = sources.constant(SERVING, "ServingConfig.handler")
TS = sources.properties()
TRAINING = training_parser()
FUZZ = "tests/reliability/test_fuzz.py"
EXPIRY = "tests/integration/test_key_expiry.py"
COMPOSE = sources.compose()["services"]
SMOKE = REPO / "tests" / "benchmarks" / "test_smoke.py"
REVIEWS = REPO / "data" / "google_play_reviews" / "reviews.csv"

README = [
    stated("README.md", "[TorchServe](https://pytorch.org/serve/) {}", sources.pinned("runtime.txt", "torchserve")),
    stated(
        "README.md",
        "a probability moved by more than {}",
        sources.constant("stack/readme_examples.py", "TOLERANCE"),
    ),
    stated(
        "README.md",
        "Needs Python {} and Java {}",
        sources.found("pyproject.toml", r">=(\d+\.\d+)"),
        int(sources.found("Makefile", r"v\[1\] < (\d+)")),
    ),
    stated("README.md", "client ─► gateway (FastAPI, :{})", gateway_parser().get_default("port")),
    stated(
        "README.md",
        "TorchServe (:{} inference, :{} management, :{} metrics; loopback only)",
        port(TS["inference_address"]),
        port(TS["management_address"]),
        port(TS["metrics_address"]),
    ),
    stated(
        "README.md",
        "batches up to {} requests / {} ms per model",
        sources.constant(SERVING, "ServingConfig.batch_size"),
        sources.constant(SERVING, "ServingConfig.max_batch_delay_ms"),
    ),
    stated("README.md", "(up to `max_texts`, {})", HANDLER_MAX_TEXTS),
    stated("README.md", "Texts longer than `max_length` tokens ({})", HANDLER["max_length"]),
    stated("README.md", "on {} training texts", sources.constant("training/train.py", "CALIBRATION_ROWS")),
    stated("README.md", "alone, in a {}-text request", HANDLER_MAX_TEXTS),
    stated("README.md", "the worker uses `num_threads` threads ({}: single-threaded", HANDLER["num_threads"]),
    stated("README.md", "| {} | inference | 127.0.0.1 |", port(TS["inference_address"])),
    stated("README.md", "| {} | management | 127.0.0.1 |", port(TS["management_address"])),
    stated("README.md", "| {} | metrics (Prometheus text) | 127.0.0.1 |", port(TS["metrics_address"])),
    stated("README.md", "| {} / {} | gRPC", TS["grpc_inference_port"], TS["grpc_management_port"]),
    stated("README.md", "| {} | the gateway", gateway_parser().get_default("port")),
    stated("README.md", "keys expire after {} minutes", TS["token_expiration_min"]),
    stated(
        "README.md", "(tmpfs `/run/ts`, mode {})", sources.found("docker-compose.yml", r"- /run/ts:\S*mode=0?(\d+)")
    ),
    stated("README.md", "Bodies over {:g} MiB are refused by TorchServe", TORCHSERVE_MAX_REQUEST_BYTES / MIB),
    stated(
        "README.md",
        "(AdamW, weight decay {}, seed {}, batch {},",
        TRAINING.get_default("weight_decay"),
        TRAINING.get_default("seed"),
        TRAINING.get_default("batch_size"),
    ),
    stated(
        "README.md",
        "**cola on {}** ({} epochs, lr {}), **sentiment on {}** ({} epochs, lr {})",
        BASE_NAMES[TASKS["cola"].base_model],
        TASKS["cola"].recipes[TASKS["cola"].base_model].epochs,
        sci(TASKS["cola"].recipes[TASKS["cola"].base_model].lr),
        BASE_NAMES[TASKS["sentiment"].base_model],
        TASKS["sentiment"].recipes[TASKS["sentiment"].base_model].epochs,
        sci(TASKS["sentiment"].recipes[TASKS["sentiment"].base_model].lr),
    ),
    stated(
        "README.md",
        "{} PyPI packages joined",
        WORDS[sum(1 for line in (REPO / "requirements" / "mpnet.txt").read_text().splitlines() if "==" in line)],
    ),
    stated("README.md", "an {:,}-row re-scrape", sources.rows(REVIEWS)),
    stated("README.md", "an ETA every {} steps", TRAINING.get_default("log_every")),
    stated("README.md", "`--max-int8-drop` ({})", TRAINING.get_default("max_int8_drop")),
    stated("README.md", "(checked every {} s: `GATEWAY_SPLIT_CHECK_S`", seconds("split_check_s")),
    stated(
        "README.md",
        "Only the gateway's port is published (`127.0.0.1`, `GATEWAY_PORT`, default {})",
        sources.found("docker-compose.yml", r"GATEWAY_PORT:-(\d+)"),
    ),
    stated("README.md", "writable by uid {}", COMPOSE["torchserve"]["user"].split(":")[0]),
    stated("README.md", "({:,} fuzzed requests", sources.constant(FUZZ, "SLOW_EXAMPLES")),
    stated(
        "README.md",
        "{} single-threaded workers per model and a {} ms batch delay",
        WORDS[sources.constant(SERVING, "ServingConfig.min_workers")],
        sources.constant(SERVING, "ServingConfig.max_batch_delay_ms"),
    ),
    stated(
        "README.md",
        "({}- and {}-second runs:",
        *(WORDS[n] for n in sorted({int(d) for d in re.findall(r'"--duration", "(\d+)"', SMOKE.read_text())})),
    ),
]

RESPONSE_TIMEOUT_S = sources.constant(SERVING, "ServingConfig.response_timeout_s")
ID_LENGTHS, ID_CHARACTERS = one_token(REQUEST_ID_PATTERN.pattern.decode())
CLIENT_KEY = (*one_token(CLIENT_KEY_PATTERN)[0], one_token(CLIENT_KEY_PATTERN)[1])

GATEWAY = [
    stated("docs/gateway.md", "clients talk to (127.0.0.1:{})", gateway_parser().get_default("port")),
    stated("docs/gateway.md", "{} s graceful shutdown", uvicorn_options(Settings())["timeout_graceful_shutdown"]),
    stated(
        "docs/gateway.md",
        "exits with status {} and one line naming the variable",
        int(sources.found("gateway/__main__.py", r"except SettingsError.*?return (\d+)")),
    ),
    stated("docs/gateway.md", "`GATEWAY_ATTEMPT_TIMEOUT_S` ({} s,", seconds("attempt_timeout_s")),
    stated(
        "docs/gateway.md",
        "at most `GATEWAY_MAX_TEXT_CHARS` characters (default {}); longer-than-the-model inputs ({} tokens)",
        default("max_text_chars"),
        HANDLER["max_length"],
    ),
    stated("docs/gateway.md", "one value of {}-{} characters `{}`", *ID_LENGTHS, ID_CHARACTERS),
    stated("docs/gateway.md", "else a new one ({} hex digits)", len(uuid.uuid4().hex)),
    stated("docs/gateway.md", "`X-Request-ID` over {} characters", ID_LENGTHS[1]),
    stated("docs/gateway.md", "buckets {:g} ms .. {:g} s", BUCKETS[0] * 1000, BUCKETS[-1]),
    stated("docs/gateway.md", "Keys expire after `token_expiration_min` ({})", TS["token_expiration_min"]),
    stated(
        "docs/gateway.md",
        "whose keys live {:g} s (`token_expiration_min={}`",
        sources.constant(EXPIRY, "EXPIRY_MIN") * 60,
        sources.constant(EXPIRY, "EXPIRY_MIN"),
    ),
    stated("docs/gateway.md", "keys that expire every {:g} s", sources.constant(EXPIRY, "EXPIRY_MIN") * 60),
    stated(
        "docs/gateway.md",
        "**Character limit {}** (handler ceiling {}): the model keeps {} tokens",
        default("max_text_chars"),
        HANDLER_MAX_CHARS,
        HANDLER["max_length"],
    ),
    stated("docs/gateway.md", "**Batch limit {}** (the handler's `max_texts`)", default("max_batch_items")),
    stated(
        "docs/gateway.md",
        "**Body limit {:,} bytes**: under TorchServe's `max_request_size` ({:g} MiB)",
        default("max_body_bytes"),
        int(TS["max_request_size"]) / MIB,
    ),
    stated(
        "docs/gateway.md",
        "A batch of {} texts of {} four-byte characters does not fit",
        default("max_batch_items"),
        default("max_text_chars"),
    ),
    stated(
        "docs/gateway.md",
        "**Read timeout {} s**: above TorchServe's `responseTimeout` ({} s)",
        seconds("read_timeout_s"),
        RESPONSE_TIMEOUT_S,
    ),
    stated(
        "docs/gateway.md",
        "Connect timeout {} s (loopback) plus pool {} s for a free connection, write {} s.",
        seconds("connect_timeout_s"),
        seconds("pool_timeout_s"),
        seconds("write_timeout_s"),
    ),
    stated("docs/gateway.md", "**Retry-After {} s**", default("retry_after_s")),
    stated("docs/gateway.md", "a {} s hint brings", default("retry_after_s")),
]

COMPOSE_TIER = "tests/compose/conftest.py"
PUBLISHER = inspect.signature(InferenceKeyPublisher).parameters
KSERVE = yaml.safe_load((REPO / "deploy" / "kserve" / "inferenceservice.yaml").read_text())["spec"]["predictor"]
GATEWAY_DEPLOYMENT = next(
    d for d in yaml.safe_load_all((REPO / "deploy" / "gateway.yaml").read_text()) if d["kind"] == "Deployment"
)

DEPLOYMENT = [
    *(
        stated("docs/deployment.md", f"| `{service}` {{}} | {{}} |", *row)
        for service, row in {
            "models": ("(one-shot) | `bert-serving/train:local` (`train`)", COMPOSE["models"]["user"].split(":")[0]),
            "torchserve": (
                "(1..N) | `bert-serving/torchserve:local` (`torchserve`)",
                COMPOSE["torchserve"]["user"].split(":")[0],
            ),
            "gateway": ("| `bert-serving/gateway:local` (`gateway`)", COMPOSE["gateway"]["user"].split(":")[0]),
            "train": (
                "(profile `train`) | `bert-serving/train:local` (`train`)",
                COMPOSE["train"]["user"].split(":")[0],
            ),
        }.items()
    ),
    stated(
        "docs/deployment.md", "`/run/ts` (tmpfs, {}:", sources.found("docker-compose.yml", r"- /run/ts:\S*mode=0?(\d+)")
    ),
    stated("docs/deployment.md", "volume (created owned by uid {})", COMPOSE["torchserve"]["user"].split(":")[0]),
    stated("docs/deployment.md", "(`sudo chown -R {} model_store`)", COMPOSE["torchserve"]["user"]),
    stated(
        "docs/deployment.md",
        "`python -m gateway` on `{}` (the only published port)",
        COMPOSE["gateway"]["ports"][0].rsplit(":", 1)[0],
    ),
    stated(
        "docs/deployment.md",
        "(`mem_limit` {} TorchServe, {} gateway, {} training)",
        COMPOSE["torchserve"]["mem_limit"],
        COMPOSE["gateway"]["mem_limit"],
        COMPOSE["train"]["mem_limit"],
    ),
    stated(
        "docs/deployment.md",
        "(`stack/inference_key.py`, mode {:o}, atomic)",
        int(sources.found("torchserve_protocol/json_files.py", r"chmod\(tmp, (0o\d+)\)"), 8),
    ),
    stated("docs/deployment.md", "file changes (checked every {:g} s)", PUBLISHER["every_s"].default),
    stated(
        "docs/deployment.md",
        "(`POST /token?type=inference`) {:g} minutes before it expires",
        PUBLISHER["renew_before_s"].default / 60,
    ),
    stated("docs/deployment.md", "| `PYTHON_IMAGE` | `{}`", sources.found("Dockerfile", r"^ARG PYTHON_IMAGE=(\S+)")),
    stated(
        "docs/deployment.md",
        "| `TORCH_INDEX_URL` | `{}`",
        sources.found("Dockerfile", r"^ARG TORCH_INDEX_URL=(\S+)"),
    ),
    stated(
        "docs/deployment.md",
        "| `{}`, built by `../shared/docker/engine-up.sh`",
        sources.constant(COMPOSE_TIER, "LOCAL_PYTHON_IMAGE"),
    ),
    stated("docs/deployment.md", "| `TORCH_WHEELS` | empty | `{}`", sources.constant(COMPOSE_TIER, "WHEELS")),
    stated("docs/deployment.md", "`GATEWAY_SPLIT_CHECK_S` ({} s)", seconds("split_check_s")),
    stated("docs/deployment.md", "With `X-Client-Key` ({}-{} characters `{}`", *CLIENT_KEY),
    stated(
        "docs/deployment.md",
        "at most {} model-version pairs and {} labels per pair",
        sources.constant("gateway/model_metrics.py", "MAX_VERSIONS"),
        sources.constant("gateway/model_metrics.py", "MAX_LABELS"),
    ),
    stated("docs/deployment.md", "RawDeployment, {} to {} replicas", KSERVE["minReplicas"], KSERVE["maxReplicas"]),
    stated(
        "docs/deployment.md",
        "runs the gateway ({} replicas) against TorchServe's own inference API on port {}",
        GATEWAY_DEPLOYMENT["spec"]["replicas"],
        port(sources.properties("deploy/kserve/config.properties")["inference_address"]),
    ),
    stated(
        "docs/deployment.md",
        "`management_address={}`",
        sources.properties("deploy/kserve/config.properties")["management_address"],
    ),
    stated("docs/deployment.md", "`GATEWAY_REPLICA_REFRESH_S` ({} s)", seconds("replica_refresh_s")),
    stated(
        "docs/deployment.md",
        "with ports {}/{}",
        port(COMPOSE["gateway"]["environment"]["GATEWAY_INFERENCE_URL"]),
        port(COMPOSE["gateway"]["environment"]["GATEWAY_MANAGEMENT_URL"]),
    ),
    stated(
        "docs/deployment.md",
        "every request sent after it died ({} or more)",
        int(sources.found("tests/compose/test_compose.py", r"in results\) >= (\d+)")),
    ),
]

SOAK = sources.found("docs/reliability.md", r"<!-- soak:begin -->\nSoak: .*?\((\d{4}-\d\d-\d\d [\d:]+ UTC)\)")
OPERATIONS = len(sources.constant("tests/reliability/test_docs_browser.py", "OPERATIONS"))

RELIABILITY = [
    stated("docs/reliability.md", "real TorchServe {} started", sources.pinned("runtime.txt", "torchserve")),
    stated("docs/reliability.md", "make soak # {:g}-minute soak", int(sources.make_default("DURATION")) / 60),
    stated(
        "docs/reliability.md",
        "| `test_fuzz.py` | fast: {:,} requests; slow: {:,} |",
        sources.constant(FUZZ, "FAST_EXAMPLES"),
        sources.constant(FUZZ, "SLOW_EXAMPLES"),
    ),
    stated("docs/reliability.md", "schemathesis {} (an independent tool", sources.pinned("dev.txt", "schemathesis")),
    stated(
        "docs/reliability.md",
        "{} examples per operation and phase",
        sources.constant("tests/reliability/test_schemathesis.py", "EXAMPLES"),
    ),
    stated("docs/reliability.md", "all {} operations are listed", OPERATIONS),
    stated("docs/reliability.md", "exactly its {} operations", OPERATIONS),
    stated(
        "docs/reliability.md", "{} hand-written inputs", sources.length("tests/reliability/test_nasty.py", "CORPUS")
    ),
    stated("docs/reliability.md", "{:,} `é` (at the limit)", default("max_text_chars")),
    stated("docs/reliability.md", "a batch at the limit ({})", default("max_batch_items")),
    stated(
        "docs/reliability.md",
        "Slow loris: {} connections",
        sources.constant("tests/reliability/test_nasty.py", "SLOW_LORIS_CONNECTIONS"),
    ),
    stated("docs/reliability.md", "get 431 `headers_too_large` after {} while", size(default("max_header_bytes"))),
    stated("docs/reliability.md", "keys that live {:g} s", sources.constant(EXPIRY, "EXPIRY_MIN") * 60),
    stated(
        "docs/reliability.md",
        "(`tests/benchmarks/test_smoke.py`, {} s runs",
        sources.found("tests/benchmarks/test_smoke.py", r'"--rate", "\d+", "--duration", "(\d+)"'),
    ),
    stated(
        "docs/reliability.md",
        "defaults {} s and {}/s",
        sources.make_default("DURATION"),
        sources.make_default("RATE"),
    ),
    stated("docs/reliability.md", "`GATEWAY_BODY_TIMEOUT_S` (default {} s)", seconds("body_timeout_s")),
    stated(
        "docs/reliability.md",
        "at most {} characters per name",
        sources.found("gateway/errors.py", r"join\(part\[:(\d+)\] for part in loc\)"),
    ),
    stated("docs/reliability.md", "The run recorded below ({})", SOAK),
    stated(
        "docs/reliability.md", "capped at {} MiB (`vmargs`", sources.found("config.properties", r"^vmargs=.*-Xmx(\d+)m")
    ),
]

PERFORMANCE = [
    stated("docs/performance.md", "(`vmargs={}` in `config.properties`)", TS["vmargs"]),
    stated("docs/performance.md", "**The peer: BentoML {}**", sources.pinned("bench-peer.txt", "bentoml")),
    stated(
        "docs/performance.md",
        "(up to {} texts per call, adaptive window)",
        sources.constant("benchmarks/baselines/bentoml_service.py", "MAX_BATCH_TEXTS"),
    ),
    stated(
        "docs/performance.md",
        "{} single-threaded workers per model at {} ms (served now)",
        WORDS[sources.constant(SERVING, "ServingConfig.min_workers")],
        sources.constant(SERVING, "ServingConfig.max_batch_delay_ms"),
    ),
    stated(
        "docs/performance.md", "Batch size {} was not varied", sources.constant(SERVING, "ServingConfig.batch_size")
    ),
]

CLAIMS = [*README, *GATEWAY, *DEPLOYMENT, *RELIABILITY, *PERFORMANCE]


@pytest.mark.parametrize("claim", CLAIMS, ids=[f"{c.doc}: {c.text[:50]}" for c in CLAIMS])
def test_the_doc_states_the_code_s_value(claim: Stated) -> None:
    text = " ".join((REPO / claim.doc).read_text().split())
    assert claim.expected in text, f"{claim.doc} no longer says: {claim.expected}"


def test_the_archives_serve_single_threaded_workers() -> None:
    """The README's "single-threaded" (it states no number for it)."""
    assert HANDLER["num_threads"] == 1


def test_the_handler_section_lists_real_settings() -> None:
    """The keys the README lists for model-config.yaml's handler: section are the handler's settings."""
    from handlers.text_classification import Settings as HandlerSettings

    readme = " ".join((REPO / "README.md").read_text().split())
    listed = re.search(r"\(`handler:` section: (.*?)\)", readme)
    assert listed, "README.md no longer lists the handler: section's keys"
    assert set(re.findall(r"`(\w+)`", listed[1])) <= set(HandlerSettings.model_fields)
