"""Settings, all read from the environment (see .env.example). Nothing differs between
development and production except what the environment says."""

from __future__ import annotations

import datetime as dt
import os
import secrets
import socket
import sys
from pathlib import Path

import dj_database_url
from cryptography.fernet import Fernet
from django.core.exceptions import ImproperlyConfigured
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from dashboard.csp import DEFAULT_POLICY
from dashboard.env import (
    env_bool,
    env_duration,
    env_float,
    env_int,
    env_list,
    env_named_paths,
    env_size,
    env_str,
)
from dashboard.private_files import private_dir, private_sqlite_file, read_private_text, write_private_text

BASE_DIR = Path(__file__).resolve().parent.parent
# Private to the account running the product (0700; its files 0600): it holds the database and secrets.
VAR_DIR = private_dir(Path(env_str("VAR_DIR", str(BASE_DIR / "var"))).expanduser())

# huggingface_hub reads its environment once, at import: fix it before anything imports it. The token is
# always passed explicitly (token=...) from a stored credential, never picked up from ~/.cache or HF_TOKEN.
os.environ.setdefault("HF_HUB_DISABLE_IMPLICIT_TOKEN", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

DEBUG = env_bool("DEBUG", False)
# `make run` sets DEV_SECRETS=1 so a first run on a laptop works with no configuration: secrets are then
# generated once into var/ and reused. Everywhere else they must come from the environment.
DEV_SECRETS = env_bool("DEV_SECRETS", DEBUG)


def _secret(name: str, generate: callable) -> str:  # type: ignore[valid-type]
    value = env_str(name)
    if value:
        return value
    stored = VAR_DIR / name.lower()
    existing = read_private_text(stored)
    if existing is not None:
        return existing.strip()
    if not DEV_SECRETS:
        raise ImproperlyConfigured(
            f"{name} is not set. Set it in the environment (see .env.example), or run with DEBUG=1 or "
            f"DEV_SECRETS=1 to have one generated into {stored}."
        )
    value = generate()
    write_private_text(stored, value)
    return value


SECRET_KEY = _secret("SECRET_KEY", lambda: secrets.token_urlsafe(50))
# Fernet keys for Hub tokens at rest, comma-separated: the first encrypts, all decrypt (key rotation).
CREDENTIALS_KEYS = [
    k.strip()
    for k in _secret("CREDENTIALS_KEY", lambda: Fernet.generate_key().decode()).split(",")
    if k.strip()
]
for _key in CREDENTIALS_KEYS:
    try:
        Fernet(_key)
    except (ValueError, TypeError) as _exc:
        raise ImproperlyConfigured(
            "CREDENTIALS_KEY must be comma-separated Fernet keys (32 url-safe base64 bytes each); "
            'make one with: python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"'
        ) from _exc

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "axes",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "models_app",
    "dashboard",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "dashboard.csp.ContentSecurityPolicyMiddleware",
    "dashboard.static_files.StaticFilesMiddleware",  # WhiteNoise, async-capable
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes asks: turns a refused login into the lockout page.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "dashboard.urls"
ASGI_APPLICATION = "dashboard.asgi.application"
WSGI_APPLICATION = None

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database: SQLite in var/ by default (WAL, so web and workers read while one writes), PostgreSQL for teams.
DATABASES = {
    "default": dj_database_url.parse(
        env_str("DATABASE_URL", f"sqlite:///{VAR_DIR / 'db.sqlite3'}"),
        # Kept open between requests and tasks (health-checked before reuse): a new connection per chat
        # message cost the web and the inference worker a connect each (SQLite's PRAGMAs; PostgreSQL's TCP and
        # auth) on the path to the first token. 0 closes each at the end of its request, as Django's default.
        conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 300, minimum=0),
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 30,
    }
    # A file, not memory, so worker subprocesses started by the tests see the test database.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test-db.sqlite3")}
    if DATABASES["default"]["NAME"] not in ("", ":memory:"):
        private_sqlite_file(Path(DATABASES["default"]["NAME"]))

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
# --- Login throttling (django-axes, database handler: shared by every web process, no extra service).
# Failed logins are counted per username and, separately, per client address; past the limit that account,
# or that address, is refused (429, even with the right password) until LOGIN_LOCKOUT_TIME after the last
# counted failure. Tries while locked out do not extend the lockout, so a stranger cannot keep an account
# locked for longer than that by trying on. A success clears that username's and address's failures.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
LOGIN_FAILURE_LIMIT = env_int("LOGIN_FAILURE_LIMIT", 10, minimum=1)
LOGIN_LOCKOUT_TIME = dt.timedelta(seconds=env_duration("LOGIN_LOCKOUT_TIME", 15 * 60))
AXES_FAILURE_LIMIT = LOGIN_FAILURE_LIMIT
AXES_COOLOFF_TIME = LOGIN_LOCKOUT_TIME
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]
AXES_RESET_ON_SUCCESS = True
AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT = False
AXES_LOCKOUT_CALLABLE = "dashboard.views.login_throttle.locked_out"
AXES_CLIENT_IP_CALLABLE = "dashboard.views.login_throttle.client_address"
AXES_DISABLE_ACCESS_LOG = True  # failures are what matter; a row per successful login is not kept
AXES_VERBOSE = False

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "overview"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = env_str("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
STATIC_ROOT.mkdir(exist_ok=True)  # whitenoise warns about a missing root even when serving from finders
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = True  # serve straight from the app folders too; collectstatic is optional

# --- Security: production values come from the environment (README, "Production").
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", False)
SESSION_COOKIE_SECURE = env_bool("SECURE_COOKIES", False)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
if env_bool("BEHIND_TLS_PROXY", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_CONTENT_TYPE_NOSNIFF = True
# Only the product's own scripts and styles run (dashboard/csp.py). Override to loosen it (say, for a proxy
# that injects a script); empty turns the header off.
CONTENT_SECURITY_POLICY = env_str("CONTENT_SECURITY_POLICY", DEFAULT_POLICY)
X_FRAME_OPTIONS = "DENY"
DATA_UPLOAD_MAX_MEMORY_SIZE = env_size("MAX_REQUEST_BODY", 8 * 2**20)

# --- Redis: Celery broker, channel layer, cancel flags, worker heartbeats.
REDIS_URL = env_str("REDIS_URL", "redis://127.0.0.1:6379/0")
# Keys this installation writes in Redis start with this, so several installs (or test workers) can share one.
REDIS_PREFIX = env_str("REDIS_PREFIX", "mlxcr")

_CHANNEL_LAYER_RETRY = AsyncRetry(
    ExponentialBackoff(cap=1.0, base=0.1), retries=3, supported_errors=(RedisConnectionError,)
)
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "dashboard.channel_layer.RedisChannelLayer",  # channels_redis, one round trip per send
        "CONFIG": {
            # Pooled connections go stale when Redis restarts; without a retry (redis-py's pools default to
            # none) the first command on each one fails: a chat or an SSE stream answered 500 after a restart.
            # Connection errors only: retrying a timed-out blocking read would hold a closing socket for longer.
            # socket_timeout: channels_redis blocks on Redis for 5 s per receive, and redis-py 8's default 5 s
            # socket timeout fired first, killing every websocket idle for 5 s (a long prompt, a quiet page).
            "hosts": [{"address": REDIS_URL, "retry": _CHANNEL_LAYER_RETRY, "socket_timeout": 10}],
            "prefix": f"{REDIS_PREFIX}:asgi",
            # A chat stream is a few hundred batched messages; the default 100 is too tight for 20 at once.
            "capacity": 1000,
            "expiry": 60,
        },
    }
}

# Django's cache (Discover's Hub answers, its outage backoff): in Redis by default, so the web processes, the
# CLI and the workers share one cache and a search made in one is answered from the cache in another.
# CACHE_URL=locmem:// keeps it in each process's memory instead (no Redis needed for it, nothing shared).
CACHE_URL = env_str("CACHE_URL", REDIS_URL)
CACHES = {
    "default": (
        {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}
        if CACHE_URL.startswith("locmem:")
        else {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": CACHE_URL,
            "KEY_PREFIX": f"{REDIS_PREFIX}:cache",
            # A Redis that is down must not hold a page: the callers treat a cache error as a miss.
            "OPTIONS": {"socket_connect_timeout": 2, "socket_timeout": 2},
        }
    )
}


# The Hub to talk to. Passed explicitly (endpoint=...) to every huggingface_hub call, so it can differ per
# process and tests can point at their local Hub.
HF_ENDPOINT = env_str("HF_ENDPOINT", "https://huggingface.co").rstrip("/")

# --- Hugging Face cache: the store. Extra named roots (an external drive) may be picked by name, never by path.
HF_HUB_CACHE = Path(
    env_str("HF_HUB_CACHE")
    or (
        Path(env_str("HF_HOME")) / "hub"
        if env_str("HF_HOME")
        else Path.home() / ".cache" / "huggingface" / "hub"
    )
).expanduser()
EXTRA_CACHE_ROOTS = env_named_paths("HF_EXTRA_CACHE_ROOTS")
if "default" in EXTRA_CACHE_ROOTS:
    raise ImproperlyConfigured("HF_EXTRA_CACHE_ROOTS: the name 'default' is taken by HF_HUB_CACHE")
CACHE_ROOTS = {"default": HF_HUB_CACHE, **EXTRA_CACHE_ROOTS}
# Directories of models converted or trained locally that staff may register (never deleted by cleanup).
LOCAL_MODEL_ROOTS = env_named_paths("LOCAL_MODEL_ROOTS")
NODE_NAME = env_str("NODE_NAME", socket.gethostname())

DOWNLOAD_DISK_RESERVE = env_size("DOWNLOAD_DISK_RESERVE", 2 * 10**9)
DOWNLOAD_MAX_ATTEMPTS = env_int("DOWNLOAD_MAX_ATTEMPTS", 3, minimum=1)
DOWNLOAD_STALL_TIMEOUT = env_duration("DOWNLOAD_STALL_TIMEOUT", 60)
DOWNLOAD_HEARTBEAT_TIMEOUT = env_duration("DOWNLOAD_HEARTBEAT_TIMEOUT", 120)
DOWNLOAD_TIME_LIMIT = env_duration("DOWNLOAD_TIME_LIMIT", 6 * 3600)

# A Hub (mirror, proxy) is not trusted: see models_app/services/hub_guard.py.
# Metadata files the product parses (config.json, tokenizer_config.json, *.index.json) are refused above this
# size, before and while downloading: real ones are kB; a 1 GiB config once took the web process to 2.3 GB.
HUB_METADATA_MAX_BYTES = env_size("HUB_METADATA_MAX_BYTES", 16 * 2**20)
# Hosts the Hub may redirect downloads to (https, port 443), besides HF_ENDPOINT's own origin; "*" stands for
# part of one DNS label. The defaults are where huggingface.co sends LFS and Xet files.
# hf_xet can also read a CAS from a local directory (`local:///path`): an offline mirror or a test double may
# use one, but a Hub that is not trusted must not point the worker at this machine's files, so it is off.
HUB_XET_LOCAL_CAS = env_bool("HUB_XET_LOCAL_CAS", False)
HUB_REDIRECT_HOSTS = env_list(
    "HUB_REDIRECT_HOSTS",
    [
        "cdn-lfs.hf.co",
        "cdn-lfs-*.hf.co",
        "cdn-lfs.huggingface.co",
        "cdn-lfs-*.huggingface.co",
        "cas-bridge.xethub.hf.co",
        "cas-server.xethub.hf.co",
        "transfer.xethub.hf.co",
    ],
)
# Every Hub answer must have sent its status line and headers within this time, however slowly it trickles.
HUB_HEADER_TIMEOUT = env_duration("HUB_HEADER_TIMEOUT", 30)
# Every whole Hub answer but a download's file bodies (model info, tree listings, token and update checks, the
# preview's config.json) must have arrived by then, however slowly it trickles.
HUB_REQUEST_TIMEOUT = env_duration("HUB_REQUEST_TIMEOUT", 60)
# The Pull page's preview (model info + config.json, in the web process) ends by then, whatever the Hub does.
HUB_PREVIEW_TIMEOUT = env_duration("HUB_PREVIEW_TIMEOUT", 30)
# Discover (search the Hub): Hub answers are cached (CACHES) this long per query, page and token, a page of
# results has at most DISCOVER_MAX_RESULTS models (the Hub's pages followed only that far; "More results" goes
# on from its cursor), a repo whose listing lacks its sizes is checked on its own, DISCOVER_DETAILS_CONCURRENCY
# at a time per page, and it gives up on the Hub after DISCOVER_TIMEOUT ("search unavailable").
DISCOVER_CACHE_TTL = env_duration("DISCOVER_CACHE_TTL", 600)
DISCOVER_MAX_RESULTS = env_int("DISCOVER_MAX_RESULTS", 50, minimum=1)
DISCOVER_TIMEOUT = env_duration("DISCOVER_TIMEOUT", 15)
DISCOVER_DETAILS_CONCURRENCY = env_int("DISCOVER_DETAILS_CONCURRENCY", 4, minimum=1)

CACHE_CLEANUP_MAX_AGE = env_duration("CACHE_CLEANUP_MAX_AGE", 0) or None
CACHE_CLEANUP_MAX_SIZE = env_size("CACHE_CLEANUP_MAX_SIZE", 0) or None
CACHE_CLEANUP_KEEP_REVISIONS = env_int("CACHE_CLEANUP_KEEP_REVISIONS", 1, minimum=1)
UPDATE_CHECK_INTERVAL = env_duration("UPDATE_CHECK_INTERVAL", 6 * 3600)

# --- Inference (one worker per host on the `inference` queue).
INFERENCE_KEEP_ALIVE = env_duration("INFERENCE_KEEP_ALIVE", 300)
INFERENCE_MAX_MODELS = env_int("INFERENCE_MAX_MODELS", 2, minimum=1)
INFERENCE_MEMORY_BUDGET = env_size("INFERENCE_MEMORY_BUDGET", 0)  # 0: 60% of the machine's memory
# Half-precision quantization scales are 8-30x slower on MLX's CPU backend (measured): cast to float32 there.
INFERENCE_CAST_FLOAT32 = env_bool("INFERENCE_CAST_FLOAT32", sys.platform != "darwin")
PROMPT_CACHE_BYTES = env_size("PROMPT_CACHE_BYTES", 2 * 2**30)
PROMPT_CACHE_ENTRIES = env_int("PROMPT_CACHE_ENTRIES", 16, minimum=1)
# How often an answer's new text goes out (the first text goes at once). Each message costs the sender, Redis,
# the web process and the client CPU that a small machine takes from the engine: on the fast model (~1,000
# tokens/s, 2 cores) decode went from 0.81 to 0.87 of raw stream_generate over the websocket and from 0.78 to
# 0.86 over SSE with a message every 50 ms instead of 25 (medians of three runs a side, alternated). 20 updates a
# second still read as a smooth stream.
CHAT_BATCH_INTERVAL = env_float("CHAT_BATCH_INTERVAL", 0.05)
# Generations the inference worker runs at once (its task threads), batched per model: concurrent answers
# share each forward pass (models_app/services/engine/batch.py). More wait in the queue.
INFERENCE_SLOTS = env_int("INFERENCE_SLOTS", 8, minimum=1)
# How long the web side waits for an inference worker to pick up a request before telling the user.
INFERENCE_PICKUP_TIMEOUT = env_float("INFERENCE_PICKUP_TIMEOUT", 10.0)
# Generations one API key may have in flight on the OpenAI-compatible API; more get 429. 0: no limit.
API_MAX_IN_FLIGHT_PER_KEY = env_int("API_MAX_IN_FLIGHT_PER_KEY", 8, minimum=0)
# Generations one user may have queued or running, chat page and API together (staff can override it per user
# in the admin's "User limits"). With one inference worker per host answering in arrival order, this also
# bounds how long anyone waits behind one user: at most this many of each other user's requests. 0: no limit.
INFERENCE_MAX_IN_FLIGHT_PER_USER = env_int("INFERENCE_MAX_IN_FLIGHT_PER_USER", 4, minimum=0)
# The size of one generation request (API body or chat conversation): messages, and characters of content.
INFERENCE_MAX_MESSAGES = env_int("INFERENCE_MAX_MESSAGES", 1000, minimum=1)
INFERENCE_MAX_PROMPT_CHARS = env_int("INFERENCE_MAX_PROMPT_CHARS", 1_000_000, minimum=1)
# Active API keys one user may hold (revoked keys do not count; staff can override it per user). 0: no limit.
API_MAX_KEYS_PER_USER = env_int("API_MAX_KEYS_PER_USER", 10, minimum=0)

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "models_app.api.auth.ApiKeyAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.LimitOffsetPagination",
    "PAGE_SIZE": 50,
    "EXCEPTION_HANDLER": "models_app.api.errors.exception_handler",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "MLX Control Room API",
    "DESCRIPTION": "Pull, manage and serve local MLX models.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    # Swagger UI served from the sidecar package: the docs work offline.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
}

LOG_LEVEL = env_str("LOG_LEVEL", "INFO").upper()
LOG_HOPS = env_bool("LOG_HOPS", False)
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"redact_secrets": {"()": "models_app.redaction.RedactSecretsFilter"}},
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "plain", "filters": ["redact_secrets"]},
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "httpx": {"level": "WARNING"},
        "httpx2": {"level": "WARNING"},  # huggingface_hub 2.4's HTTP client logs every request at INFO
        "httpcore": {"level": "WARNING"},
        # One debug line per generation with its hop timings (models_app.services.inference, `hops`).
        "models_app.hops": {"level": "DEBUG" if LOG_HOPS else "WARNING"},
    },
}

# --- Celery (dashboard/celery.py reads every CELERY_* name). JSON only; queues downloads/maintenance/inference.
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", REDIS_URL)
CELERY_RESULT_BACKEND = env_str("CELERY_RESULT_BACKEND", REDIS_URL)
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_DEFAULT_QUEUE = "maintenance"
CELERY_TASK_ROUTES = {
    "downloads.*": {"queue": "downloads"},
    "maintenance.*": {"queue": "maintenance"},
    "inference.*": {"queue": "inference"},
}
# A download is idempotent (the job row is the truth), so redeliver it when a worker dies mid-task.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
# One task at a time per process: downloads are long, and prefetching would park jobs behind them.
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SOFT_TIME_LIMIT = DOWNLOAD_TIME_LIMIT
CELERY_TASK_TIME_LIMIT = DOWNLOAD_TIME_LIMIT + 120
CELERY_TASK_IGNORE_RESULT = True
# Celery's Django fixup closes every database connection before and after each task unless told to reuse them;
# dashboard/celery.py closes them as Django does after a request instead (past DATABASE_CONN_MAX_AGE, or
# failing their health check), so a generation does not open a connection on its way to the first token.
CELERY_DB_REUSE_MAX = 2**62
CELERY_RESULT_EXPIRES = 3600
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_TRANSPORT_OPTIONS = {
    # Redelivery of an unacknowledged task waits this long; the reaper resolves dead jobs much sooner.
    "visibility_timeout": DOWNLOAD_TIME_LIMIT + 600,
    "global_keyprefix": f"{REDIS_PREFIX}:celery:",
}
CELERY_RESULT_BACKEND_TRANSPORT_OPTIONS = {"global_keyprefix": f"{REDIS_PREFIX}:celery:"}
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")
# What works on one machine's disk or memory runs on every machine (maintenance.on_every_node); the reaper and
# the update check work on the shared database and the Hub, so once for the cluster.
CELERY_BEAT_SCHEDULE = {
    "reap-stalled-downloads": {"task": "maintenance.reap_jobs", "schedule": 30.0},
    "reconcile-cache": {
        "task": "maintenance.on_every_node",
        "args": ["maintenance.reconcile_cache"],
        "schedule": 600.0,
    },
    "check-updates": {"task": "maintenance.check_updates", "schedule": float(UPDATE_CHECK_INTERVAL)},
    "clean-cache": {
        "task": "maintenance.on_every_node",
        "args": ["maintenance.clean_cache"],
        "schedule": 3600.0,
    },
    "unload-idle-models": {
        "task": "maintenance.on_every_node",
        "args": ["inference.expire_idle", "inference"],
        "schedule": 15.0,
        # Sent out from an inference worker: the maintenance one may be busy with downloads for minutes.
        "options": {"queue": "inference"},
    },
}
