"""A live-feed test environment as a plain module (tests import it from here, fixtures from
tests/app/conftest.py build it): the app, its Redis, and helpers to make runs and emit events."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import fakeredis
from flask import Flask

from shared.events import Emitter, RedisPublisher
from shared.models import FineTuneRun
from shared.runs import new_run_id


@dataclass
class FeedEnv:
    app: Flask
    redis: fakeredis.FakeRedis

    def make_run(self, status: str = "running", **values: Any) -> str:
        run_id = new_run_id()
        with self.app.extensions["tmde.db"].session() as session:
            session.add(
                FineTuneRun(
                    id=run_id,
                    status=status,
                    triggered_by="api",
                    base_model="tiny",
                    config="{}",
                    **values,
                )
            )
        return run_id

    def finish(self, run_id: str, status: str = "completed", **values: Any) -> None:
        assert self.app.extensions["tmde.manager"].runs.finish(run_id, status, **values)

    def emitter(self, run_id: str) -> Emitter:
        return Emitter(run_id, [RedisPublisher(self.redis)])

    @property
    def relay(self) -> Any:
        return self.app.extensions["tmde.relay"]
