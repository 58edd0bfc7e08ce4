"""Tests of the claim record shared by the stability and robustness jobs."""

import json

import numpy as np
import pytest

from odenet.jobs._claims import Claim, claims_table, write_claims_report


def test_claim_rejects_a_holds_value_outside_true_false_report():
    with pytest.raises(ValueError, match="holds must be True, False or 'report'"):
        Claim("A1", "s", 1.0, 1.0, 1e-12, holds="maybe")
    with pytest.raises(ValueError, match="non-empty string"):
        Claim("", "s", 1.0, 1.0, 1e-12, holds=True)


def test_numpy_bool_is_stored_as_a_plain_bool():
    c = Claim("A1", "s", 1.0, 1.0, 1e-12, holds=np.bool_(True))
    assert c.holds is True


def test_report_files_hold_every_claim_and_a_failed_claim_is_marked(tmp_path):
    claims = [Claim("A1", "gain", 3325.26, 3325.2567, 1e-12, holds=True),
              Claim("B2", "axis limits", {"rk4": 2.7853}, {"rk4": 2.7}, 1e-4, holds=False),
              Claim("F3", "trained flows", None, {"resnet": 0.1}, None, holds="report")]
    payload = write_claims_report(tmp_path, claims, title="Stability")
    data = json.loads((tmp_path / "results.json").read_text())
    assert data == json.loads(json.dumps(payload))
    assert [c["id"] for c in data["claims"]] == ["A1", "B2", "F3"]
    assert data["claims"][1]["holds"] is False and data["claims"][2]["holds"] == "report"
    md = (tmp_path / "claims.md").read_text()
    assert "3 claims: 1 hold, 1 do not, 1 reported" in md
    assert "| B2 | axis limits | rk4: 2.7853 | rk4: 2.7 | 1.0000e-04 | **no** |" in md
    assert claims_table(claims).count("\n") == 5
