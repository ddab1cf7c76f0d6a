"""Typed access to what create_app() put on the application."""

from __future__ import annotations

from typing import Any

from flask import current_app

from app.relay import Relay
from shared.db import Database
from shared.registry import AdapterRegistry
from shared.runs import FineTuneManager
from shared.settings import Settings


def manager() -> FineTuneManager:
    return current_app.extensions["tmde.manager"]


def settings() -> Settings:
    return current_app.extensions["tmde.settings"]


def database() -> Database:
    return current_app.extensions["tmde.db"]


def redis_client() -> Any:
    return current_app.extensions["tmde.redis"]


def relay() -> Relay:
    return current_app.extensions["tmde.relay"]


def registry() -> AdapterRegistry:
    return AdapterRegistry(settings().lora_output_dir)
