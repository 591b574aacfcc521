"""A token that the cluster refuses is reported as refused, not as missing.

Reproduced before: a wrong token got "no authentication token was found", which sends the user
looking for a token file they already have. The cluster is the session's local Ray (token
authentication on, dashboard on loopback).
"""

from __future__ import annotations

import os

import pytest

from l2s_data.errors import JobSubmissionError
from l2s_data.submit import JobClient

pytestmark = pytest.mark.slow


def test_a_token_the_cluster_refuses_is_said_to_be_refused(ray_address):
    dash = os.environ["L2S_TEST_RAY_DASHBOARD"]
    with pytest.raises(JobSubmissionError) as err:
        JobClient(dash, token="0" * 64).list()
    msg = str(err.value)
    assert "refused the auth token" in msg and "none was found" not in msg
    assert "no authentication token was found" not in msg and dash in msg
