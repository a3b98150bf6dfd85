"""Model API faults through the real anthropic SDK: 500, 529, 401, a 502 page, malformed JSON, a hang.

The proposer turns each into `ModelUnavailable` (the loop stops with one line) or `ProposalFailed`
(the loop records `proposal_failed` and goes on); never a traceback, and the key is never printed.
"""

from __future__ import annotations

import pytest

from agent.proposal import ModelUnavailable, ProposalContext, ProposalFailed
from tests.fake_messages_api import FakeMessagesAPI, error_reply as error, tool_use_reply
from tests.faults.kit import fast_workspace, said, sealab

KEY = "sk-ant-fault-test-SECRET-0123456789abcdef"
MALFORMED = '{"id": "msg_1", "type": "message", "content": ['


def tool_use(name: str, tool_input: dict) -> dict:
    return tool_use_reply([(name, tool_input)], {"input_tokens": 100, "output_tokens": 10})


CASES = [  # id, script, exception, text in its message, requests made (max_retries=2: 3 tries)
    ("500", [error(500, "api_error", "Internal server error")] * 3, ModelUnavailable, "HTTP 500 api_error", 3),
    ("529", [error(529, "overloaded_error", "Overloaded")] * 3, ModelUnavailable, "HTTP 529 overloaded_error", 3),
    ("401", [error(401, "authentication_error", f"invalid x-api-key: {KEY}")], ModelUnavailable,
     "HTTP 401 authentication_error", 1),
    ("502-page", [("raw", 502, "<html><body>502 Bad Gateway</body></html>")] * 3, ModelUnavailable, "HTTP 502", 3),
    ("malformed-json", [("raw", 200, MALFORMED)], ProposalFailed, "malformed response", 1),
    ("hang", [("hang", 3)] * 3, ModelUnavailable, "timed out", 3),
]


@pytest.mark.parametrize("script,kind,text,tries", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_proposer_maps_api_faults(script, kind, text, tries, monkeypatch):
    """Each API fault becomes one line of the right class after the SDK's retries, without the key."""
    from agent.claude import ClaudeProposer

    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    with FakeMessagesAPI(script) as api:
        proposer = ClaudeProposer(base_url=api.base_url, max_retries=2, timeout=0.5)
        ctx = ProposalContext(program="p", train_source="LR = 0.1\n", read_file=lambda path: None)
        with pytest.raises(kind) as caught:
            proposer.propose(ctx)
        assert len(api.requests) == tries
    message = str(caught.value)
    assert text in message and "\n" not in message and KEY not in message
    for r in api.requests:  # the key went only where it belongs: the auth header
        assert KEY in (r["headers"].get("x-api-key", "") + r["headers"].get("authorization", ""))
        assert KEY not in r["raw"]


@pytest.mark.docker
def test_loop_records_failed_proposals_stops_and_resumes(tmp_path, base_image):
    """In `sealab run`: a malformed reply is `proposal_failed` and the loop goes on; 529s past the SDK's
    retries, then a 401, stop it with one line (no traceback, no key); with the API healthy again,
    --resume finishes the run."""
    from executor.ledger import Ledger

    root = fast_workspace(tmp_path, base_image)
    run = ["run", "--experiments", "2", "--tag", "m", "--proposer", "claude"]
    with FakeMessagesAPI([("raw", 200, MALFORMED), *[error(529, "overloaded_error", "Overloaded")] * 5]) as api:
        env = {"ANTHROPIC_API_KEY": KEY, "ANTHROPIC_BASE_URL": api.base_url}
        first = sealab(*run, cwd=root, env=env)
        api.push(error(401, "authentication_error", f"invalid x-api-key: {KEY}"))
        second = sealab(*run, "--resume", cwd=root, env=env)
        api.push(tool_use("edit_train_py", {"old": "LR = 0.5 ", "new": "LR = 0.2 "}),
                 tool_use("submit", {"description": "LR 0.5 -> 0.2"}))
        third = sealab(*run, "--resume", cwd=root, env=env)
        tries = len(api.requests)
    for proc in (first, second):
        assert proc.returncode in (3, 4), proc.stderr  # 3 per the README; see test_model_unavailable_exits_3
        lines = said(proc.stderr)
        assert len(lines) == 1 and lines[0].startswith("sealab: error: the model is unavailable: "), proc.stderr
        assert "Traceback" not in proc.stderr
    assert "HTTP 529 overloaded_error" in first.stderr and "HTTP 401 authentication_error" in second.stderr
    assert third.returncode == 0, third.stderr
    assert tries == 1 + 5 + 1 + 2
    ledger = Ledger(root / ".sealab" / "ledger.db")
    [failed] = ledger.events("proposal_failed")
    assert "malformed response" in failed["reason"]
    records = [r for r in ledger.records() if r.get("run_tag") == "m"]
    assert [r["decision"] for r in records][0] == "baseline" and len(records) == 2
    assert records[1]["proposal"]["description"] == "LR 0.5 -> 0.2" and records[1]["status"] == "ok"
    assert records[1]["metrics"]["hyperparameters"]["LR"] == 0.2
    for proc in (first, second, third):
        assert KEY not in proc.stdout + proc.stderr
    for path in (root / ".sealab").rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path


@pytest.mark.docker
def test_model_unavailable_exits_3(tmp_path, base_image):
    """`sealab run` exits 3 when the model API is unavailable, as documented."""
    root = fast_workspace(tmp_path, base_image)
    with FakeMessagesAPI([error(401, "authentication_error", "invalid x-api-key")]) as api:
        proc = sealab("run", "--experiments", "1", "--tag", "u", "--proposer", "claude", cwd=root,
                      env={"ANTHROPIC_API_KEY": KEY, "ANTHROPIC_BASE_URL": api.base_url})
    assert proc.returncode == 3, proc.stderr
