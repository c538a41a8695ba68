"""The one settings object: read from the environment and `.env` once, then passed around."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

EMBEDDED_DATABASE_URL = "sqlite:///./intake.db"
EMBEDDED_BROKER_URL = "sqla+sqlite:///./intake-broker.db"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="INTAKE_", env_file=".env", extra="ignore", populate_by_name=True
    )

    database_url: str = EMBEDDED_DATABASE_URL
    # An empty broker URL means the embedded broker: kombu's SQLAlchemy transport on SQLite.
    broker_url: str = ""
    redis_url: str = ""
    public_url: str = ""
    # Where verified webhooks are spooled while the database cannot take them; "" turns the
    # spool off (the webhook then answers 503, as the provider must retry).
    spool_dir: str = "./spool"
    trust_proxy: bool = False

    # Ingestion: how long an accepted message may wait before the reconciler re-enqueues it,
    # and how many attempts a message gets before it is parked as failed.
    reconcile_after_seconds: float = Field(default=60.0, gt=0)
    reconcile_every_seconds: float = Field(default=30.0, gt=0)
    max_attempts: int = Field(default=5, ge=1)
    lock_lease_seconds: float = Field(default=30.0, gt=0)
    lock_wait_seconds: float = Field(default=10.0, gt=0)
    batch_size: int = Field(default=200, ge=1)

    # Contacts API requests a minute per tenant, counted in Redis when redis_url is set; 0 is off.
    # Webhooks have no limit: verified provider traffic is never refused for load.
    rate_limit_api_per_minute: int = Field(default=600, ge=0)

    # Outbound events: how long the feed keeps them, and how webhooks are delivered.
    events_retention_days: float = Field(default=30.0, gt=0)
    events_allow_private: bool = False  # 1: webhooks may reach loopback and private addresses
    delivery_timeout_seconds: float = Field(default=10.0, gt=0)
    delivery_poll_seconds: float = Field(default=1.0, gt=0)
    delivery_backoff_scale: float = Field(default=1.0, gt=0)  # <1 shortens retries, for tests

    log_json: bool = False

    # The operator's own Meta app, for the shared route `/webhooks/whatsapp` that serves every
    # tenant (Meta allows one callback URL per app). Unset: that route answers 404.
    whatsapp_app_secret: SecretStr = SecretStr("")
    whatsapp_verify_token: SecretStr = SecretStr("")

    @field_validator("database_url")
    @classmethod
    def _psycopg_driver(cls, value: str) -> str:
        # psycopg 3 is the driver we ship; a bare postgresql:// would make SQLAlchemy look
        # for psycopg2, which is not installed.
        for prefix in ("postgresql://", "postgres://"):
            if value.startswith(prefix):
                return "postgresql+psycopg://" + value[len(prefix) :]
        return value

    @field_validator("public_url")
    @classmethod
    def _strip_trailing_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @property
    def effective_broker_url(self) -> str:
        return self.broker_url or EMBEDDED_BROKER_URL

    @property
    def broker_is_embedded(self) -> bool:
        return not self.broker_url


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
