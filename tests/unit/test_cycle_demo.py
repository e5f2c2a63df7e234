"""`make demo-cycle`'s cycle is made local everywhere it names a server: every template's MinIO, every judge, and the
reward model the next burst asks (a left-over example endpoint would send a stage to a port nobody serves)."""

from __future__ import annotations

import json

from localcluster.cycle_demo import cycle_manifest
from loka_api.cycle import RewardCycle


def test_the_demo_cycle_names_only_the_servers_the_demo_starts() -> None:
    body = cycle_manifest(
        storage="http://127.0.0.1:1", judge="http://127.0.0.1:2/v1", reward_model="http://127.0.0.1:3"
    )
    spec = RewardCycle.model_validate(body).spec

    urls = {u for u in json.dumps(body).replace('"', " ").split() if u.startswith("http")}
    assert urls == {"http://127.0.0.1:1", "http://127.0.0.1:2/v1", "http://127.0.0.1:3"}
    assert {j.model for j in spec.evaluation.judges} == {"digits", "length"}
    assert spec.iterations == 2  # one full iteration, then the burst the reward model rewards
