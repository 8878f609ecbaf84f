"""All settings in one class. Nothing else in the code base reads the environment."""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

SIMULATOR_API_KEY = "sk-simulator"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MMJOBS_", env_file=".env", extra="ignore")

    database_url: str = "postgresql+psycopg://postgres@127.0.0.1:5432/mmjobs"
    redis_url: str = "redis://127.0.0.1:6379/0"

    # The ecosystem's own variable names, without our prefix.
    minimax_api_key: str | None = Field(
        default=None, validation_alias=AliasChoices("MINIMAX_API_KEY", "MMJOBS_MINIMAX_API_KEY")
    )
    minimax_base_url: str = Field(
        default="https://api.minimax.io",
        validation_alias=AliasChoices("MINIMAX_BASE_URL", "MMJOBS_MINIMAX_BASE_URL"),
    )

    # Intake
    max_body_bytes: int = 64 * 1024 * 1024
    default_max_attempts: int = 5
    job_expiry_seconds: int = 24 * 3600
    page_size_max: int = 200

    # Worker
    worker_concurrency: int = 200
    lease_seconds: float = 60.0
    lease_refresh_seconds: float = 10.0
    stream: bool = True
    upstream_connect_timeout: float = 10.0
    upstream_read_timeout: float = 300.0
    upstream_max_connections: int = 1000

    # Scheduler
    scheduler_interval: float = 0.5
    redispatch_after_seconds: float = 30.0
    dispatch_batch_size: int = 500

    # `mmjobs up`: where the embedded SQLite database and the development key live.
    data_dir: str = ".mmjobs"
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    simulator_port: int = 8765

    # Logging
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


@lru_cache
def get_settings() -> Settings:
    return Settings()
