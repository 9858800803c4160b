"""Settings, read from the environment through the typed helpers of ``browser.core.env``.

Every variable is documented in docs/settings.md. With ``DATABASE_URL`` and ``REDIS_URL`` unset
the product starts its own embedded PostgreSQL and Redis under ``BROWSER_DATA_DIR``.
"""

from __future__ import annotations

import re
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

from browser.core import embedded
from browser.core.env import env_bool, env_database_url, env_int, env_list, env_path, env_redis_url, env_str

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = env_path("BROWSER_DATA_DIR", BASE_DIR / ".data")
# Converted model weights and other per-machine caches (never shared between workers).
CACHE_DIR = env_path("BROWSER_CACHE_DIR", DATA_DIR / "cache")

PRODUCTION = env_bool("BROWSER_PRODUCTION", False)
DEBUG = env_bool("BROWSER_DEBUG", not PRODUCTION)
_DEV_KEY = "dev-only-insecure-key-never-used-in-production-0123456789abcdef"
SECRET_KEY = env_str("BROWSER_SECRET_KEY", "" if PRODUCTION else _DEV_KEY)
if PRODUCTION and len(SECRET_KEY) < 50:
    raise ImproperlyConfigured("BROWSER_SECRET_KEY must be set to at least 50 random characters in production")
ALLOWED_HOSTS = env_list("BROWSER_ALLOWED_HOSTS", ["127.0.0.1", "localhost", "testserver"])
CSRF_TRUSTED_ORIGINS = env_list("BROWSER_CSRF_TRUSTED_ORIGINS", [])

_database = env_database_url("DATABASE_URL")
_redis = env_redis_url("REDIS_URL")
# The embedded servers for the URLs left unset. Importing the settings starts nothing: only their
# ports are read (or chosen and remembered); they start when a process first needs them (see
# browser/core/embedded.py), and `manage.py embedded stop` stops them.
EMBEDDED_SERVERS = tuple(name for name, url in (("postgres", _database), ("redis", _redis)) if url is None)
EMBEDDED = bool(EMBEDDED_SERVERS)
if EMBEDDED and not env_bool("BROWSER_EMBEDDED_AUTOSTART", True):
    raise ImproperlyConfigured("set DATABASE_URL and REDIS_URL, or allow BROWSER_EMBEDDED_AUTOSTART")
EMBEDDED_ENDPOINTS = embedded.endpoints(DATA_DIR) if EMBEDDED else None
if EMBEDDED_ENDPOINTS is not None:
    from browser.core.env import parse_database_url

    _database = _database or parse_database_url("embedded database", EMBEDDED_ENDPOINTS.database_url)
    _redis = _redis or EMBEDDED_ENDPOINTS.redis_url
assert _database is not None and _redis is not None

DATABASES = {"default": _database.django()}
if EMBEDDED:
    DATABASES["default"]["ENGINE"] = "browser.core.embedded_db"  # starts the servers on first connection
# Seconds a database connection is kept for the next request of the same thread (0: one per
# request). gunicorn's configuration sets 60 for the web processes: opening a connection costs a
# PostgreSQL backend fork, a large share of a short request (docs/settings.md).
DATABASES["default"]["CONN_MAX_AGE"] = env_int("BROWSER_DB_CONN_MAX_AGE", 0, minimum=0, maximum=3600)
# A Celery worker lowers its CPU priority by this much (os.nice) when it starts, so that a harvest
# on the machine that also serves the site leaves the CPU to requests first. 0: unchanged.
WORKER_NICE = env_int("BROWSER_WORKER_NICE", 10, minimum=0, maximum=19)
REDIS_URL = _redis

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.postgres",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "browser.core",
    "browser.catalog",
    "browser.corpora",
    "browser.runs",
    "browser.examples",
    "browser.labels",
    "browser.search",
    "browser.accounts",
    "browser.exports",
    "browser.imports",
    "browser.graphs",
    "workers",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "browser.api.uploads.UploadCapMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "browser.core.middleware.RejectNulMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "browser.accounts.middleware.ReadAccessMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "browser.urls"
WSGI_APPLICATION = "browser.wsgi.application"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "browser" / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_TZ = True
USE_I18N = False
STATIC_URL = "/static/"
STATIC_ROOT = DATA_DIR / "static"
STATICFILES_DIRS = [BASE_DIR / "browser" / "static"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
# Uploads larger than this are refused (a corpus file goes through the CLI, not the web).
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("BROWSER_MAX_UPLOAD_BYTES", 10 * 1024 * 1024, minimum=1024)
# Uploaded files (which DATA_UPLOAD_MAX_MEMORY_SIZE does not cap): a file, and a whole request,
# checked on the declared length and counted while streaming (browser/api/uploads.py); over: 413.
# The defaults fit the largest upload the API takes, 16 Neuronpedia batches of 64 MiB.
BROWSER_MAX_FILE_BYTES = env_int("BROWSER_MAX_FILE_BYTES", 64 * 1024 * 1024, minimum=1024)
BROWSER_MAX_REQUEST_BYTES = env_int("BROWSER_MAX_REQUEST_BYTES", 16 * 64 * 1024 * 1024 + 1024 * 1024, minimum=1024)
FILE_UPLOAD_HANDLERS = [
    "browser.api.uploads.CappedUploadHandler",
    "django.core.files.uploadhandler.MemoryFileUploadHandler",
    "django.core.files.uploadhandler.TemporaryFileUploadHandler",
]
# Work a web request asks a worker for (try your own text, steering): a sign-in, this rate per user,
# this long a wait, and a queued task not started within the expiry is discarded, never run.
BROWSER_COMPUTE_RATE = env_str("BROWSER_COMPUTE_RATE", "30/min")
BROWSER_COMPUTE_WAIT_S = env_int("BROWSER_COMPUTE_WAIT_S", 20, minimum=1, maximum=300)
BROWSER_COMPUTE_EXPIRES_S = env_int("BROWSER_COMPUTE_EXPIRES_S", 30, minimum=1, maximum=3600)
if BROWSER_COMPUTE_EXPIRES_S < BROWSER_COMPUTE_WAIT_S:  # a task would expire while its request still waits
    raise ImproperlyConfigured("BROWSER_COMPUTE_EXPIRES_S must be at least BROWSER_COMPUTE_WAIT_S")
# Failed sign-ins allowed per username and client address within the period (DRF rate syntax).
BROWSER_SIGN_IN_RATE = env_str("BROWSER_SIGN_IN_RATE", "10/hour")
for _rate in ("BROWSER_COMPUTE_RATE", "BROWSER_SIGN_IN_RATE"):
    if not re.fullmatch(r"[1-9]\d*/(s|sec|m|min|h|hour|d|day)", globals()[_rate]):
        raise ImproperlyConfigured(f"{_rate}={globals()[_rate]!r} is not a rate such as 10/min or 30/hour")

if PRODUCTION:
    SECURE_SSL_REDIRECT = env_bool("BROWSER_SSL_REDIRECT", True)
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env_int("BROWSER_HSTS_SECONDS", 31536000, minimum=0)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# Anonymous visitors may read pages and the API (never write). Off: everything needs a sign-in.
BROWSER_ANONYMOUS_READ = env_bool("BROWSER_ANONYMOUS_READ", True)
# The machine-label explainer: "offline" (a summary of top tokens and contexts) or an
# OpenAI-compatible endpoint (BROWSER_EXPLAINER_URL, e.g. http://127.0.0.1:8080/v1).
BROWSER_EXPLAINER_URL = env_str("BROWSER_EXPLAINER_URL", "")
BROWSER_EXPLAINER_MODEL = env_str("BROWSER_EXPLAINER_MODEL", "gpt-4o-mini")
BROWSER_EXPLAINER_KEY = env_str("BROWSER_EXPLAINER_KEY", "")

CACHES = {
    "default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL,
                "KEY_PREFIX": "browser"}
}
REST_FRAMEWORK = {
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "browser.api.auth.BearerTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["browser.api.permissions.CanRead"],
    "DEFAULT_THROTTLE_CLASSES": [
        "rest_framework.throttling.AnonRateThrottle",
        "rest_framework.throttling.UserRateThrottle",
    ],
    "DEFAULT_THROTTLE_RATES": {
        "anon": env_str("BROWSER_API_ANON_RATE", "600/min"),
        "user": env_str("BROWSER_API_USER_RATE", "6000/min"),
    },
    "EXCEPTION_HANDLER": "browser.api.errors.api_exception_handler",
    "DEFAULT_PAGINATION_CLASS": "browser.api.pagination.StableCursorPagination",
    "PAGE_SIZE": 100,
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Neuron browser API",
    "VERSION": "1",
    "DESCRIPTION": (
        "Units, examples, labels and exports. Stable unit ids are model/source/index. Version 1 is "
        "stable: fields are only added, never renamed or removed; errors always have the shape "
        '{"error": {"status", "code", "message", "fields"?}}.'
    ),
    "SERVE_INCLUDE_SCHEMA": False,
    # Swagger UI served from the vendored sidecar package: the docs work offline.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
}

# Celery: tasks take ids only; a task killed with its worker is redelivered, never lost.
CELERY_BROKER_URL = REDIS_URL
CELERY_RESULT_BACKEND = REDIS_URL
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_TASK_SOFT_TIME_LIMIT = env_int("BROWSER_TASK_SOFT_TIME_LIMIT_S", 6 * 3600, minimum=10)
CELERY_TASK_TIME_LIMIT = CELERY_TASK_SOFT_TIME_LIMIT + 300
# Longer than the longest task, or an unacknowledged task is delivered twice.
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": CELERY_TASK_TIME_LIMIT + 600}
CELERY_RESULT_EXPIRES = 3600

# Jobs that survive faults (docs/settings.md, README "Jobs").
# A claimed shard whose worker has not beaten its heart for this long is redone by another.
SHARD_LEASE_S = env_int("BROWSER_SHARD_LEASE_S", 90, minimum=2, maximum=86_400)
# A shard that keeps failing (its workers crash on it) stops being retried after this many claims.
SHARD_MAX_ATTEMPTS = env_int("BROWSER_SHARD_MAX_ATTEMPTS", 3, minimum=1, maximum=100)
# Transient errors (a lost database or broker connection) are retried this many times in all.
# 8 attempts wait 2+4+8+16+32+60+60 s: a database or broker restart of up to about 3 minutes.
JOB_MAX_ATTEMPTS = env_int("BROWSER_JOB_MAX_ATTEMPTS", 8, minimum=1, maximum=100)
# How often an idle worker looks for stalled runs (expired shards, a finalize whose worker died).
RESUME_EVERY_S = env_int("BROWSER_RESUME_EVERY_S", 30, minimum=1, maximum=3600)
# Prefix of the Celery queue names (gpu, default): lets several deployments or test sessions
# share one Redis without taking each other's tasks.
QUEUE_PREFIX = env_str("BROWSER_QUEUE_PREFIX", "")
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env_str("BROWSER_LOG_LEVEL", "WARNING")},
}
