"""``python -m examples.downstream_demo`` end to end: two workers charge 3,000 orders through a
quota'd API that fails for 5 s in the middle; every order is charged, none dead-lettered."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.kafka


def test_the_downstream_demo_charges_every_order_through_a_quota_and_an_outage(
        kafka_bootstrap: str) -> None:
    done = subprocess.run([sys.executable, "-m", "examples.downstream_demo"], cwd=REPO,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
                               "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "charged 3000 of 3000 orders, 0 dead-lettered" in done.stdout
    # the outage really happened: the API answered 503s, and later every order was charged
    failed = [int(n) for n in re.findall(r"503 (\d+)", done.stdout)]
    assert failed and max(failed) > 0, done.stdout[-2000:]
