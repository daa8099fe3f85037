"""Configs a user gets wrong, through `alerter check` and a running service's reload: each
problem is one `FILE:LINE:COL` line (exit 2, no traceback), and no secret is repeated in it,
nor in `/readyz`, which answers anyone.
"""

from __future__ import annotations

import signal
from pathlib import Path

import orjson
import pytest

from tests.support.proc import Service, alerter
from tests.support.service import API_KEY, config_yaml, rules_yaml, write_config

pytestmark = pytest.mark.timeout(120)

SECRET = "S3CRETvalue77"


def _line_of(path: Path, text: str) -> int:
    return next(i for i, line in enumerate(path.read_text(errors="replace").splitlines(), 1) if text in line)


async def _check(cfg: Path) -> str:
    result = await alerter("check", "-c", str(cfg))
    assert result.code == 2, (result.code, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and SECRET not in result.stderr + result.stdout
    return result.stderr


@pytest.mark.parametrize(
    ("base_url", "problem"),
    [
        (f"htps://user:{SECRET}@leap.example", "source.base_url: the URL must start with http:// or https://"),
        (f"https://user:{SECRET}@leap.example", "the URL must not hold a user or password"),
    ],
)
async def test_a_base_url_holding_credentials_is_refused_without_repeating_them(
    tmp_path: Path, base_url: str, problem: str
) -> None:
    cfg = write_config(tmp_path, config_yaml(base_url, "sqlite:///s.db"), rules_yaml("http://127.0.0.1:1/hook"))
    stderr = await _check(cfg)
    assert f"{cfg}:{_line_of(cfg, 'base_url')}:" in stderr and problem in stderr, stderr


async def test_values_yaml_cannot_build_are_placed_and_not_repeated(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, config_yaml("http://127.0.0.1:1", "sqlite:///s.db"), "")
    for value, problem in (
        (f"!!int {SECRET}", "not a valid value: expected an integer"),
        (f"*{SECRET}", "found an undefined alias (a value that starts with * must be quoted)"),
    ):
        cfg.write_text(config_yaml("http://127.0.0.1:1", "sqlite:///s.db", api_key=value))
        stderr = await _check(cfg)
        assert f"{cfg}:{_line_of(cfg, 'api_key')}:" in stderr and problem in stderr, stderr
    cfg.write_text(config_yaml("http://127.0.0.1:1", "sqlite:///s.db"))
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        rules_yaml("http://127.0.0.1:1/hook").replace(
            "  - name: everything\n", "  - name: odd\n    match: {delivery_period: 2025-13-01}\n    receivers: [crm]\n"
        )
        + "  - name: everything\n    receivers: [crm]\n"
    )
    stderr = await _check(cfg)
    line = _line_of(rules, "2025-13-01")
    col = rules.read_text().splitlines()[line - 1].index("2025-13-01") + 1
    assert f"{rules}:{line}:{col}: not a valid value: expected a date or date-time" in stderr, stderr


@pytest.mark.parametrize(
    ("receiver", "anchor", "problem"),
    [
        ("slack: {token: '${EMPTY_TOKEN}', channel: '#ops'}", "slack:", "the Slack token is empty"),
        (f"slack: {{token: {SECRET}, channel: ' '}}", "slack:", "the Slack channel is empty"),
        ("email: {to: [a@x.example], from: b@x.example, smtp: {host: ''}}", "email:", "the SMTP host is empty"),
        ("email: {to: [nope], from: b@x.example, smtp: {host: h}}", "email:", "to[0] is not an email address"),
        ("email: {to: [a@x.example], from: '', smtp: {host: h}}", "email:", "from is not an email address"),
        (
            "email: {to: [a@x.example], from: b@x.example, smtp: {host: h, cert_bundle: /nonexistent/ca.pem}}",
            "email:",
            "no readable file at /nonexistent/ca.pem",
        ),
    ],
)
async def test_receivers_that_could_never_send_are_refused_by_check(
    tmp_path: Path, receiver: str, anchor: str, problem: str
) -> None:
    rules = f"receivers:\n  - name: ops\n    {receiver}\nrules:\n  - name: all\n    receivers: [ops]\n"
    cfg = write_config(tmp_path, config_yaml("http://127.0.0.1:1", "sqlite:///s.db"), rules)
    result = await alerter("check", "-c", str(cfg), env={"EMPTY_TOKEN": ""})
    assert result.code == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and SECRET not in result.stderr
    rules_file = tmp_path / "rules.yaml"
    assert f"{rules_file}:{_line_of(rules_file, anchor)}:" in result.stderr and problem in result.stderr, result.stderr
    mail = rules.replace("to: [nope]", "to: ['Ops <ops@x.example>', a@x.example]")
    if mail != rules:  # a display name is an address too
        (tmp_path / "rules.yaml").write_text(mail)
        assert (await alerter("check", "-c", str(cfg))).code == 0


async def test_a_reload_that_cannot_be_read_is_rejected_and_says_nothing_secret(tmp_path: Path) -> None:
    from alerter.sim import Portfolio, SimServer

    async with SimServer(Portfolio(10, action_rate=0.0, seed=3), api_key=API_KEY) as sim:
        config = config_yaml(sim.url, f"sqlite:///{tmp_path}/s.db", log_format="json", interval="1h")
        cfg = write_config(tmp_path, config, rules_yaml("http://127.0.0.1:1/hook"))
        svc = await Service.start(str(cfg))
        try:
            await svc.wait_for_log("cycle_done")
            rules = tmp_path / "rules.yaml"
            rules.write_text(rules_yaml("http://127.0.0.1:1/hook") + "    match: {delivery_period: 2025-13-01}\n")
            svc.send(signal.SIGHUP)
            rejected = await svc.wait_for_log("rules_reload_rejected")
            assert rejected["problems"][0].startswith(f"{rules}:{_line_of(rules, '2025-13-01')}:"), rejected
            status, body = await svc.get("/readyz")
            assert status == 200 and orjson.loads(body)["rules_reload"]["result"] == "rejected"

            cfg.write_text(config.replace(sim.url, f"htp://leap:{SECRET}@127.0.0.1:1"))
            svc.send(signal.SIGHUP)
            await svc.wait_for_log("rules_reload_rejected", count=2)
            status, body = await svc.get("/readyz")
            assert status == 200 and "base_url" in body and SECRET not in body
            assert not any(SECRET in str(line) for line in svc.logs)
        finally:
            assert await svc.stop() == 0


async def test_messages_say_what_to_write_without_the_value(tmp_path: Path) -> None:
    state = f"postgresql://alerter:pa/{SECRET}@127.0.0.1:5432/alerter"
    config = config_yaml("http://127.0.0.1:1", state).replace(
        "http:\n  listen: 127.0.0.1:0\n", f"http:\n  listen: 127.0.0.1:0\n  auth:\n    api_tokens: [{SECRET[:5]}]\n"
    )
    rules = rules_yaml("http://127.0.0.1:1/hook", remind="{before_deadline: 2d}")
    cfg = write_config(tmp_path, config, rules)
    stderr = await _check(cfg)
    assert f"{cfg}:{_line_of(cfg, 'postgresql://')}:" in stderr
    assert "password holding /, #, ? or @ must be percent-encoded" in stderr
    assert "http.auth.api_tokens: api_tokens[0] is too short: use at least 16 characters" in stderr
    assert "5" not in stderr.split("api_tokens", 1)[1].splitlines()[0]  # not even the token's length
    rules_file = tmp_path / "rules.yaml"
    assert f"{rules_file}:{_line_of(rules_file, 'before_deadline')}:" in stderr
    assert "before_deadline: expected a list, got a string" in stderr, stderr


async def test_every_problem_once_at_its_place(tmp_path: Path) -> None:
    config = config_yaml("http://127.0.0.1:1", "sqlite:///s.db").replace(
        "  max_retries: 2\n", "  max_retries: 2\n  filters: {region: X, tags: vip, exclude_archived: true}\n"
    )
    rules = rules_yaml("http://127.0.0.1:1/hook").replace(
        "      secret: whsec_", "      secret:\n        - 5\n        - whsec_"
    )
    cfg = write_config(tmp_path, config, rules)
    stderr = await _check(cfg)
    # both filters' problems, where the first stopped the check
    assert "source.filters: unknown filter 'region'; 'tags' takes a list of strings; Leap's search takes" in stderr
    # the list's bad item alone, not also "should be a valid string" for the list
    rules_file = tmp_path / "rules.yaml"
    assert stderr.count("webhook.secret") == 1 and f"{rules_file}:{_line_of(rules_file, '- 5')}:" in stderr, stderr
    # a file that is not UTF-8: where
    rules_file.write_bytes(rules_file.read_bytes().replace(b"name: everything", b"name: caf\xe9"))
    stderr = await _check(cfg)
    line = next(i for i, text in enumerate(rules_file.read_bytes().splitlines(), 1) if b"name: caf" in text)
    assert f"{rules_file}:{line}:14: not UTF-8 text (save the file as UTF-8)" in stderr, stderr
