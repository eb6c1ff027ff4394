"""Every setting of the service, declared once and read from the environment in one place.

Each field of `Settings` is one environment variable (its name upper-cased), which the file
`SETTINGS_FILE` may also set. The field declares its default, unit, meaning and whether a
SIGHUP may change it; `load_settings()` parses and validates them, and `settings_table()`
renders the README's configuration table from the same declarations, so the documentation
cannot drift from the code. Nothing else in the project reads `os.environ` for configuration.

A process's settings are `current_settings()`: the master's, resolved at start and after each
SIGHUP (`reload_settings`), are what every worker it forks then inherits.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from service.version_policy import LayoutError, VersionPolicy, parse_labels


class SettingsError(ValueError):
    """A setting has a value the service cannot run with; the message names it."""


def _setting(
    default,
    meaning: str,
    unit: str = "",
    choices: tuple = (),
    minimum=None,
    maximum=None,
    reloadable: bool = False,
    per_model: bool = False,
):
    """One setting's declaration; `reloadable` ones take effect at a SIGHUP (in the workers it starts), `per_model`
    ones may differ between the models of one server (service/catalog.py, a model's `settings.env`)."""
    metadata = {"meaning": meaning, "unit": unit, "choices": choices, "minimum": minimum, "maximum": maximum}
    return field(default=default, metadata={**metadata, "reloadable": reloadable, "per_model": per_model})


@dataclass(frozen=True)
class Settings:
    # Model
    model_path: str = _setting(
        "models/digits.keras",
        "Keras `.keras` file, SavedModel directory or `.onnx` file to serve (the demo model by default).",
    )
    model_backend: str = _setting(
        "auto",
        "Runtime that serves the model: `auto` chooses by the path (`.onnx`: onnx, else tensorflow); "
        "`scripts/convert_to_onnx.py` converts a Keras model or SavedModel (docs/backends.md).",
        choices=("auto", "tensorflow", "onnx"),
        per_model=True,
    )
    model_name: str = _setting(
        "", "Name in the `/v1/models/<name>` routes; empty means the file name's stem (the base path's name)."
    )
    model_version: int = _setting(1, "Version number of the model at `MODEL_PATH`.", minimum=1)
    model_base_path: str = _setting(
        "",
        "Directory of numeric version subdirectories, TF Serving's layout (`<base>/1/`, `<base>/2/`, each a "
        "SavedModel or one `.keras` or `.onnx` file), served instead of `MODEL_PATH`: new versions are served "
        "without a restart (docs/versions.md). Empty means `MODEL_PATH`.",
    )
    model_version_policy: str = _setting(
        "latest",
        "With `MODEL_BASE_PATH`: the versions served: `latest` (the highest), `latest:N` (the N highest), `all`, "
        "or `specific:1,3`. Requests that name no version get the highest served.",
        reloadable=True,
        per_model=True,
    )
    model_version_labels: str = _setting(
        "",
        "Version labels, e.g. `stable=1,canary=2`, routable as `/v1/models/<name>/labels/<label>:predict` and "
        "in gRPC's `version_label`; a label whose version is not served answers 404.",
        reloadable=True,
        per_model=True,
    )
    model_poll_s: float = _setting(
        1.0,
        "With `MODEL_BASE_PATH`: how often each worker looks for new, changed or removed versions (TF Serving's "
        "default); 0 means only at start.",
        "s",
        minimum=0,
        reloadable=True,
    )
    model_config_file: str = _setting(
        "",
        "TF Serving's model config file (`model_config_list { config { name base_path ... } }`, text format): "
        "serve every model it lists, each in the versions layout of `MODEL_BASE_PATH` (docs/models.md). "
        "Replaces `MODEL_PATH` and `MODEL_BASE_PATH`; empty means one model.",
    )
    model_repository: str = _setting(
        "",
        "Triton's model repository: a directory whose subdirectories are models, each named by its directory and in "
        "the versions layout of `MODEL_BASE_PATH` (docs/models.md). Replaces `MODEL_PATH` and `MODEL_BASE_PATH`; "
        "empty means one model.",
    )
    model_config_poll_s: float = _setting(
        5.0,
        "With `MODEL_CONFIG_FILE` or `MODEL_REPOSITORY`: how often each worker reads it again to serve the models "
        "added and let go of the ones removed, without touching the others (TF Serving's "
        "`--model_config_file_poll_wait_seconds`); 0 means only at start and through the repository APIs.",
        "s",
        minimum=0,
    )

    model_memory_mb: int = _setting(
        0,
        "With `MODEL_CONFIG_FILE` or `MODEL_REPOSITORY`: the memory each worker gives its models (their measured "
        "footprints). Models then load on their first request, and the least recently used idle ones are unloaded "
        "to make room (docs/models.md). 0: every model stays loaded if they all fit a worker's share of RAM; if "
        "not, the planner sets this budget from the RAM (the plan block says so).",
        "MB",
        minimum=0,
    )
    cpu_lanes: int = _setting(
        0,
        "With `MODEL_CONFIG_FILE` or `MODEL_REPOSITORY`, on CPU: 0 runs every model's TensorFlow ops in the worker's "
        "one thread pool; 2 to 8 splits the CPU into that many devices, each with a pool of its own, the models "
        "spread over them (service/backends/lanes.py). Lanes halve a light model's p50 while a heavy one is "
        "flooded, but cost the heavy one about 15% of its throughput and collapse when every model is busy "
        "(docs/models.md), so they are off by default.",
        minimum=0,
        maximum=8,
    )

    # Network and processes
    host: str = _setting("127.0.0.1", "Address to bind; use 0.0.0.0 only inside a container.")
    port: int = _setting(8000, "Port to bind.", minimum=1, maximum=65535)
    grpc_port: int = _setting(
        8500,
        "Port of the gRPC APIs (TF Serving's, the Open Inference Protocol's, grpc.health.v1; TF Serving's own "
        "default), bound by every worker with SO_REUSEPORT; 0 turns gRPC off.",
        minimum=0,
        maximum=65535,
    )
    grpc_max_connection_age_s: float = _setting(
        60.0,
        "A gRPC connection is closed after this long (its calls in flight finish first) and the client reconnects, "
        "so long-lived channels spread over the workers again (docs/protocols.md); 0 means never.",
        "s",
        minimum=0,
    )
    workers: int = _setting(0, "Gunicorn worker processes; 0 lets the planner choose (see Sizing).", minimum=0)
    worker_class: str = _setting(
        "gevent",
        "Gunicorn worker class; gevent spends less CPU per request, HTTP or gRPC (BENCHMARKS.md, Protocols).",
        choices=("gevent", "gthread"),
    )
    threads: int = _setting(
        0,
        "Request threads per gthread worker; 0 means `MAX_QUEUE` + `CONCURRENT_BATCHES` x `MAX_BATCH_SIZE` + 16, "
        "so the queue, not the threads, bounds what waits and refusals are answered at once.",
        minimum=0,
    )
    worker_connections: int = _setting(
        0,
        "Requests one gevent worker serves at once; connections idle or still sending are not counted (a worker "
        "keeps up to 10,000 open, fewer under a lower open-file limit). 0 means max(1000, 2 x `MAX_BATCH_SIZE`).",
        minimum=0,
    )
    intra_op_threads: int = _setting(0, "TensorFlow threads inside one op; 0 means cores // workers.", minimum=0)
    inter_op_threads: int = _setting(
        0, "TensorFlow ops run in parallel; 0 means `CONCURRENT_BATCHES`, so each forward pass runs an op.", minimum=0
    )
    compute_niceness: int = _setting(
        10,
        "Linux niceness of a worker's TensorFlow and batcher threads, above its request threads, so requests are read "
        "and answered while passes run (BENCHMARKS.md); 0 keeps them equal.",
        minimum=0,
        maximum=19,
    )
    worker_timeout_s: int = _setting(
        120, "Gunicorn heartbeat timeout: a worker silent this long is killed (not a request timeout).", "s", minimum=1
    )
    keepalive_s: int = _setting(
        5,
        "How long an idle keep-alive connection stays open; raise it above your load balancer's idle timeout.",
        "s",
        minimum=0,
    )
    read_timeout_s: float = _setting(
        30.0,
        "Slow clients: a request's head must arrive within this of its first byte and its body may pause at most "
        "this long (nginx's `client_header_timeout`/`client_body_timeout`), else 408 and the connection closes; a new "
        "connection that sends nothing closes after max(this, `KEEPALIVE_S`). A stalled client holds only its "
        "connection, never a thread. Lower frees connections sooner; too low cuts off clients on lossy links "
        "(30 s outlasts seven TCP retransmissions of one segment).",
        "s",
        minimum=1,
    )
    graceful_timeout_s: int = _setting(30, "Time a worker has to finish its requests after SIGTERM.", "s", minimum=1)
    max_requests: int = _setting(
        0,
        "Recycle a worker after this many requests, to bound slow leaks: it finishes them, exits, and a new one "
        "loads (the other workers serve meanwhile); 0 means never.",
        minimum=0,
    )
    max_requests_jitter: int = _setting(
        0, "Up to this many more requests per worker, at random, so workers do not all recycle at once.", minimum=0
    )

    # Batching
    batch_policy: str = _setting(
        "adaptive",
        "When a partial batch is sent: `fixed` after `BATCH_TIMEOUT_MS`; `adaptive` when waiting for the requests "
        "it expects stops saving latency, from the pass costs and arrivals it measures (docs/design.md).",
        choices=("fixed", "adaptive"),
        per_model=True,
    )
    max_batch_size: int = _setting(
        32,
        "Most instances in one forward pass; on a GPU the warm-up may lower it to what fits.",
        "instances",
        minimum=1,
        per_model=True,
    )
    batch_timeout_ms: float = _setting(
        1.0,
        "`fixed` policy: longest time the oldest request of a batch waits for more to join it.",
        "ms",
        minimum=0,
        reloadable=True,
        per_model=True,
    )
    latency_slo_ms: float = _setting(
        0.0,
        "Latency objective you choose: when set, a request that would wait and whose predicted wait and pass exceed "
        "it (or its own deadline) is refused with 503, `/readyz` answers 503 while new requests would be, and under "
        "`adaptive` no request is held back past it. 0 means none: only a full queue or a request's own deadline "
        "refuses, and `adaptive` holds a batch at most one full pass (docs/reliability.md, Overload).",
        "ms",
        minimum=0,
        reloadable=True,
        per_model=True,
    )
    batch_sizes: str = _setting(
        "",
        "Padded batch sizes compiled and warmed up, comma-separated; empty means powers of two up to the maximum.",
        per_model=True,
    )
    concurrent_batches: int = _setting(
        2,
        "Forward passes one worker runs at once; beyond the first, only full batches (BENCHMARKS.md).",
        "batches",
        minimum=1,
        maximum=8,
        per_model=True,
    )
    max_queue: int = _setting(
        256,
        "Instances waiting in one worker's queue before new requests get 503.",
        "instances",
        minimum=1,
        per_model=True,
    )
    request_timeout_ms: float = _setting(
        0.0,
        "Deadline of a predict request from its arrival: one still queued when it passes is answered 504 without "
        "being run. A client's `X-Request-Timeout-Ms` header sets its own, at most this when set. 0 means none.",
        "ms",
        minimum=0,
        reloadable=True,
        per_model=True,
    )
    max_body_bytes: int = _setting(10 * 1024 * 1024, "Largest request body accepted (413 beyond).", "bytes", minimum=1)
    max_request_instances: int = _setting(
        10_000,
        "Most instances in one predict request (400 beyond; `MAX_BODY_BYTES` bounds it too). A request larger than "
        "a batch is split into passes that share the worker with other requests; identical instances are computed "
        "once.",
        "instances",
        minimum=1,
        per_model=True,
    )
    api_keys: str = _setting(
        "",
        "Comma-separated API keys; when set, every route but the health checks (`/healthz`, `/readyz`, "
        "`/v2/health/*`) and the API docs needs one, as "
        "`Authorization: Bearer <key>` or `X-API-Key` (401 without, 403 with a wrong one). Empty means no keys.",
        reloadable=True,
    )

    # Result cache and background jobs (docs/operations.md)
    cache_max_bytes: int = _setting(
        0,
        "Result cache: bytes of answers one worker keeps, least recently used first out (keys, arrays and their "
        "overhead count); 0 turns the cache off. Identical instances of any request are then answered from it, "
        "without a pass (docs/operations.md, Result cache).",
        "bytes",
        minimum=0,
    )
    cache_ttl_s: float = _setting(
        0.0, "Result cache: an answer older than this is computed again, in both tiers; 0 means never.", "s", minimum=0
    )
    redis_url: str = _setting(
        "",
        "Redis for the result cache's shared second tier (when `CACHE_MAX_BYTES` is set) and for background jobs' "
        "queue and results (instead of `JOBS_DB`), e.g. `redis://127.0.0.1:6379/0`; empty means none.",
    )
    jobs_db: str = _setting(
        "",
        "SQLite file of background jobs (huey's queue, the jobs and their results) when `REDIS_URL` is not set; "
        "empty means `~/.local/state/tf-model-server/jobs-<model name>-<port>.sqlite3`.",
    )
    max_job_instances: int = _setting(
        100_000, "Most instances in one background job (400 beyond).", "instances", minimum=1
    )
    max_job_body_bytes: int = _setting(
        256 * 1024 * 1024,
        "Largest body of `POST /v1/models/<name>/jobs` (413 beyond); received whole before the app reads it, as "
        "predict's are.",
        "bytes",
        minimum=1,
    )
    job_retries: int = _setting(
        2, "Times huey runs a job again after a part of it failed, resuming where it stopped.", minimum=0
    )
    job_results_ttl_s: float = _setting(
        86_400.0, "How long a finished job and its results are kept (not deleted on reading).", "s", minimum=1
    )
    job_lease_s: float = _setting(
        30.0,
        "A running job's worker renews its claim at every batch; a job whose claim is this old (its worker died) "
        "is resumed by another worker, where it stopped.",
        "s",
        minimum=1,
    )

    # Sizing
    ram_headroom: float = _setting(
        0.2, "Fraction of available RAM kept free when sizing workers.", "fraction", minimum=0, maximum=0.95
    )
    footprint_cache: str = _setting(
        "~/.cache/tf-model-server/footprints.json", "Where measured model footprints are cached, keyed by file hash."
    )
    gpu_memory_headroom: float = _setting(
        0.1, "Fraction of each GPU's memory left out of the workers' limits.", "fraction", minimum=0, maximum=0.95
    )
    gpu_memory_limit_mb: int = _setting(
        0, "TensorFlow memory limit per GPU worker; 0 splits the GPU between its workers.", "MB", minimum=0
    )
    gpu_process_overhead_mb: int = _setting(
        1024, "GPU memory a worker uses outside TF's allocator (CUDA context, cuDNN workspaces).", "MB", minimum=0
    )
    workers_per_gpu: int = _setting(1, "Workers placed on each GPU when `WORKERS` is 0.", minimum=1)

    # Operations
    log_level: str = _setting(
        "info", "Log level; `info` logs one access event per request.", choices=("debug", "info", "warning", "error")
    )
    log_format: str = _setting(
        "text",
        "`json` writes one JSON object a line (for log collectors; the container image sets it); `text` is for people.",
        choices=("text", "json"),
    )
    log_file: str = _setting(
        "", "Write logs to this file instead of stderr, rotated at midnight, keeping 7 days; empty means stderr."
    )
    metrics_dir: str = _setting(
        "",
        "Directory where workers keep their Prometheus metric files, emptied at start; empty means a new "
        "temporary directory.",
    )
    settings_file: str = _setting(
        "",
        "File of `NAME=value` lines (`#` comments), read over the environment at start and again at each SIGHUP, "
        "when the reloadable settings (marked ↻) change and the workers are replaced one at a time; a file that "
        "does not parse or validate is logged and ignored (docs/operations.md, Reloading settings).",
    )

    def __post_init__(self):
        for spec in dataclasses.fields(self):
            _check(spec, getattr(self, spec.name))
        if self.max_queue < self.max_batch_size:
            raise SettingsError(
                f"MAX_QUEUE={self.max_queue} is smaller than MAX_BATCH_SIZE={self.max_batch_size}: "
                "a full batch could never be queued. Raise MAX_QUEUE."
            )
        try:
            VersionPolicy.parse(self.model_version_policy)
            parse_labels(self.model_version_labels)
        except LayoutError as error:
            raise SettingsError(str(error)) from None
        sources = [name for name in _MODEL_SOURCES if getattr(self, name.lower())]
        if len(sources) > 1:
            raise SettingsError(f"{' and '.join(sources)} are set together: set one of them, the models to serve")
        if self.grpc_port == self.port:
            raise SettingsError(f"GRPC_PORT={self.grpc_port} is PORT too; give gRPC its own port, or 0 to turn it off")
        self.padded_batch_sizes()  # validates BATCH_SIZES

    @property
    def served_model_name(self) -> str:
        if self.model_name:
            return self.model_name
        if self.model_config_file:  # several models: the jobs' file and queue are named after their config
            return Path(self.model_config_file).stem
        if self.model_repository:
            return Path(self.model_repository.rstrip("/")).name
        if self.model_base_path:
            return Path(self.model_base_path.rstrip("/")).name
        return Path(self.model_path.rstrip("/")).stem

    @property
    def jobs_db_path(self) -> Path:
        """The jobs' SQLite file: one per model and port, so services on one host never run each other's jobs."""
        if self.jobs_db:
            return Path(self.jobs_db).expanduser()
        return Path(f"~/.local/state/tf-model-server/jobs-{self.served_model_name}-{self.port}.sqlite3").expanduser()

    @property
    def latency_slo_s(self) -> float | None:
        """The operator's latency objective in seconds, None when there is none."""
        return self.latency_slo_ms / 1000 if self.latency_slo_ms else None

    @property
    def bind(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def request_threads(self) -> int:
        """gthread threads: a request waiting for its answer holds one, so fewer would cap the queue.

        Enough for a full queue, the passes running and a few more to refuse, answer probes and
        read the next requests: a request that finds no thread waits unread, unbounded and unrefused.
        """
        return self.threads or self.max_queue + self.concurrent_batches * self.max_batch_size + 16

    @property
    def gevent_connections(self) -> int:
        return self.worker_connections or max(1000, 2 * self.max_batch_size)

    def padded_batch_sizes(self) -> tuple[int, ...]:
        """The batch sizes compiled and warmed up; every batch is padded up to one of them."""
        if self.batch_sizes.strip():
            try:
                sizes = sorted({int(part) for part in self.batch_sizes.split(",") if part.strip()})
            except ValueError:
                raise SettingsError(
                    f"BATCH_SIZES={self.batch_sizes!r} is not a comma-separated list of integers"
                ) from None
            if not sizes or sizes[0] < 1 or sizes[-1] != self.max_batch_size:
                raise SettingsError(
                    f"BATCH_SIZES={self.batch_sizes!r} must be positive and end at MAX_BATCH_SIZE={self.max_batch_size}"
                )
            return tuple(sizes)
        sizes, size = [], 1
        while size < self.max_batch_size:
            sizes.append(size)
            size *= 2
        sizes.append(self.max_batch_size)
        return tuple(sizes)


_MODEL_SOURCES = ("MODEL_CONFIG_FILE", "MODEL_REPOSITORY", "MODEL_BASE_PATH")


def _check(spec: dataclasses.Field, value) -> None:
    meta, env_name = spec.metadata, spec.name.upper()
    if meta["choices"] and value not in meta["choices"]:
        raise SettingsError(f"{env_name}={value!r} is not one of {', '.join(meta['choices'])}")
    if meta["minimum"] is not None and value < meta["minimum"]:
        raise SettingsError(f"{env_name}={value!r} is below its minimum {meta['minimum']}")
    if meta["maximum"] is not None and value > meta["maximum"]:
        raise SettingsError(f"{env_name}={value!r} is above its maximum {meta['maximum']}")


_PARSERS: dict[str, Callable[[str], object]] = {"int": int, "float": float, "str": str}
_NAMES = {spec.name.upper(): spec for spec in dataclasses.fields(Settings)}


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read every setting from `environ` (the process environment by default), then from SETTINGS_FILE.

    Raises SettingsError naming the variable (and the file and line) when a value does not parse
    or is out of range, or the file cannot be read.
    """
    environ = os.environ if environ is None else environ
    values = {}
    for name, spec in _NAMES.items():
        raw = environ.get(name)
        if raw is not None and raw != "":
            values[spec.name] = _parse(spec, raw, name)
    settings_file = values.get("settings_file", "")
    if settings_file:
        values.update(_read_settings_file(settings_file))
    return Settings(**values)


def _parse(spec: dataclasses.Field, raw: str, where: str):
    try:
        return _PARSERS[spec.type](raw.strip())
    except ValueError:
        raise SettingsError(f"{where}={raw!r} is not a valid {spec.type}") from None


def _read_settings_file(path: str) -> dict[str, object]:
    """The settings SETTINGS_FILE sets: `NAME=value` lines, blank lines and `#` comments; quotes around a value go.

    `NAME=` sets the default, whatever the environment says.
    """
    try:
        text = Path(path).expanduser().read_text()
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) else "it is not UTF-8 text"
        raise SettingsError(f"SETTINGS_FILE={path!r} cannot be read: {reason}") from None
    values = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, equals, raw = line.partition("=")
        name, raw = name.strip(), raw.strip()
        where = f"{path}, line {number}"
        if not equals or name not in _NAMES or name == "SETTINGS_FILE":
            raise SettingsError(f"{where}: {line!r} is not `NAME=value` with NAME one of the settings")
        if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "\"'":
            raw = raw[1:-1]
        spec = _NAMES[name]
        values[spec.name] = _parse(spec, raw, f"{where}: {name}") if raw else spec.default  # `NAME=`: the default
    return values


PER_MODEL = frozenset(spec.name for spec in dataclasses.fields(Settings) if spec.metadata["per_model"])


def read_model_settings(path: str | os.PathLike) -> dict[str, object]:
    """The settings one model's `settings.env` sets, in SETTINGS_FILE's format: only `per_model` ones may be set.

    Raises SettingsError naming the file, the line and the setting.
    """
    values = _read_settings_file(str(path))
    others = sorted(name.upper() for name in values if name not in PER_MODEL)
    if others:
        allowed = ", ".join(sorted(name.upper() for name in PER_MODEL))
        raise SettingsError(f"{path}: {', '.join(others)} cannot differ between models; a model may set {allowed}")
    return values


def reload_settings(current: Settings, environ: Mapping[str, str] | None = None) -> tuple[Settings, list[str]]:
    """At a SIGHUP: `current` with the reloadable settings read again; and the names of the others that changed.

    Raises SettingsError, as `load_settings` does, when what is read does not parse or validate:
    nothing is then applied. The other settings keep their values (they take a restart).
    """
    read = load_settings(environ)
    changes, ignored = {}, []
    for spec in dataclasses.fields(Settings):
        new, old = getattr(read, spec.name), getattr(current, spec.name)
        if new == old:
            continue
        if spec.metadata["reloadable"]:
            changes[spec.name] = new
        else:
            ignored.append(spec.name.upper())
    return dataclasses.replace(current, **changes), ignored


_current: Settings | None = None


def current_settings() -> Settings:
    """This process's settings: those `use_settings` set (a worker inherits its master's), else the environment's."""
    global _current
    if _current is None:
        _current = load_settings()
    return _current


def use_settings(settings: Settings) -> None:
    """Make `settings` this process's, and so those of every worker it forks from now on."""
    global _current
    _current = settings


def settings_table() -> str:
    """The README's configuration table, rendered from the declarations above."""
    rows = ["| Variable | Default | Unit | Meaning |", "|---|---|---|---|"]
    for spec in dataclasses.fields(Settings):
        default = f"`{spec.default}`" if spec.default != "" else "(empty)"
        meaning = ("↻ " if spec.metadata["reloadable"] else "") + spec.metadata["meaning"]
        if spec.metadata["per_model"]:
            meaning += " Per model (docs/models.md)."
        if spec.metadata["choices"]:
            meaning += " One of: " + ", ".join(f"`{choice}`" for choice in spec.metadata["choices"]) + "."
        rows.append(f"| `{spec.name.upper()}` | {default} | {spec.metadata['unit']} | {meaning} |")
    return "\n".join(rows)


if __name__ == "__main__":
    sys.stdout.write(settings_table() + "\n")
