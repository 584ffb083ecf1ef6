"""Pairing and authentication: one-time codes, the lockout, 401 for the unpaired, pinned keys."""

from __future__ import annotations

import json
import re
import stat
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from device_agent.auth import AuthError, KeyPair, ReplayGuard, new_nonce, verify
from device_agent.cli import main
from device_agent.client import (
    AgentClient,
    AgentRejectedError,
    FingerprintMismatchError,
    SignedAuth,
    pair_with_agent,
)
from device_agent.http_api import PUBLIC_ROUTES
from device_agent.pairing import CODE_FILE, LOCKOUT_S, MAX_WRONG_CODES, issue_code
from tests.fakes import EXPECTED, make_image_bytes

DISCOVERY_KEYS = {
    "agent_id",
    "name",
    "version",
    "protocol",
    "protocol_min",
    "public_key",
    "fingerprint",
    "exchange_key",
    "paired",
    "agent_time",
}


def _code(agent: Any, clock: Any = time.time) -> str:
    return issue_code(agent.service.data_dir, clock).code


def _wrong(code: str) -> str:
    return f"{(int(code) + 1) % 1_000_000:06d}"


def _pair(agent: Any, code: str, desktop: KeyPair | None = None) -> bytes:
    return pair_with_agent(
        agent.url, desktop or KeyPair.generate(), agent.service.identity.agent_id, code
    )


def _refused(agent: Any, code: str, desktop: KeyPair | None = None) -> AgentRejectedError:
    with pytest.raises(AgentRejectedError) as err:
        _pair(agent, code, desktop)
    return err.value


def test_pairing_happy_path_pins_both_sides(agent: Any, package: Path) -> None:
    desktop = KeyPair.generate()
    code = _code(agent)
    pinned = _pair(agent, code, desktop)
    assert pinned == agent.service.identity.key.public_raw
    assert not (agent.service.data_dir / CODE_FILE).exists()  # used up
    paired = json.loads((agent.service.data_dir / "paired.json").read_text())
    assert [d["fingerprint"] for d in paired["desktops"]] == [desktop.fingerprint]
    with AgentClient(agent.url, key=desktop, agent_key=pinned) as client:
        info = client.info()
        assert info["paired"] is True and "runtimes" in info
        client.upload_package(package)
        assert client.infer(make_image_bytes())["detections"] == list(EXPECTED)
        assert client.stats()["models"]["shapes"]["requests"] == 1
    # the agent remembers the desktop across restarts
    agent.stop()
    from tests.device_agent.conftest import AgentThread

    again = AgentThread(agent.service.data_dir).start()
    try:
        with AgentClient(again.url, key=desktop, agent_key=pinned) as client:
            assert client.stats()["agent_id"] == agent.service.identity.agent_id
    finally:
        again.stop()


def test_wrong_code_is_refused_and_the_right_one_still_works(agent: Any) -> None:
    code = _code(agent)
    err = _refused(agent, _wrong(code))
    assert err.status == 403 and "wrong pairing code" in err.message
    assert f"{MAX_WRONG_CODES - 1} tries left" in err.message
    _pair(agent, code)


def test_expired_code_is_refused(agent: Any) -> None:
    code = _code(agent, clock=lambda: time.time() - 301)  # issued 5 min 1 s ago
    err = _refused(agent, code)
    assert err.status == 403 and "expired" in err.message
    assert not (agent.service.data_dir / CODE_FILE).exists()


def test_code_is_single_use(agent: Any) -> None:
    code = _code(agent)
    _pair(agent, code)
    err = _refused(agent, code)
    assert err.status == 403 and "no pairing code is active" in err.message


def test_a_paired_desktop_can_pair_again_with_a_new_code(agent: Any) -> None:
    """Re-pairing (e.g. after the desktop lost its pin) verifies the request once, not twice:
    a second check of the same signed request would refuse it as a replay."""
    desktop = KeyPair.generate()
    first = _pair(agent, _code(agent), desktop)
    assert _pair(agent, _code(agent), desktop) == first


def test_a_large_pairing_request_is_refused_before_it_is_read(agent: Any) -> None:
    """Anyone on the network may send a pairing request: its body is read under 16 KiB, not
    the image routes' 64 MiB, with a length or chunked; a real pairing still works after."""
    stranger = SignedAuth(KeyPair.generate(), agent_id=agent.service.identity.agent_id)
    big = json.dumps({"desktop_key": "x", "exchange_key": "y", "proof": "z" * (1 << 20)})

    def chunked() -> Any:
        yield big.encode()

    with httpx.Client(auth=stranger) as http:
        for body in (big.encode(), chunked()):
            response = http.post(f"{agent.url}/v1/pair", content=body)
            assert response.status_code == 413, response.text
            assert "a pairing request is at most 16384 bytes" in response.json()["error"]
    _pair(agent, _code(agent))


def test_ten_wrong_codes_lock_pairing(agent: Any) -> None:
    code = _code(agent)
    for _ in range(MAX_WRONG_CODES - 1):
        assert _refused(agent, _wrong(code)).status == 403
    last = _refused(agent, _wrong(code))
    assert last.status == 429 and "locked pairing for 10 minutes: wait, then run outpost-agent pair" in last.message
    # locked: even a fresh, right code is refused
    locked = _refused(agent, _code(agent))
    assert locked.status == 429 and "locked" in locked.message
    # once the lockout is over, pairing works again
    later = time.time() + LOCKOUT_S + 1
    agent.service.pairing.clock = lambda: later
    _pair(agent, _code(agent, clock=lambda: later))


def _route_paths(agent: Any) -> list[tuple[str, str, str]]:
    routes = []
    for route in agent.service.app.router.routes():
        canonical = route.resource.canonical
        path = re.sub(r"\{[^}]+\}", "shapes", canonical)
        routes.append((route.method, canonical, path))
    return routes


def test_every_route_answers_401_to_an_unpaired_client(agent: Any, package: Path) -> None:
    agent.client().upload_package(package)  # a paired desktop installed something
    stranger = KeyPair.generate()
    strangers = [
        None,  # no signature at all
        SignedAuth(stranger, agent_id=agent.service.identity.agent_id),  # an unpaired key
    ]
    routes = _route_paths(agent)
    assert len(routes) >= 8
    covered = {(method, canonical) for method, canonical, _ in routes}
    new_routes = {("GET", "/v1/ready"), ("GET", "/v1/metrics"), ("DELETE", "/v1/pair")}
    assert new_routes <= covered
    # the only routes open to strangers: discovery, the pairing exchange and readiness
    assert PUBLIC_ROUTES == {("GET", "/v1/info"), ("POST", "/v1/pair"), ("GET", "/v1/ready")}
    for method, canonical, path in routes:
        for auth in strangers:
            response = httpx.request(
                method, f"{agent.url}{path}", content=make_image_bytes(), auth=auth
            )
            head = method == "HEAD"  # answers as its GET does, without the body
            if head and ("GET", canonical) in PUBLIC_ROUTES:
                assert response.status_code == 200 and response.content == b""
            elif (method, canonical) == ("GET", "/v1/info"):
                assert response.status_code == 200
                assert set(response.json()) == DISCOVERY_KEYS  # no models, no runtimes
                assert response.json()["paired"] is False
            elif (method, canonical) == ("GET", "/v1/ready"):
                # Open on purpose: local supervisors (systemd, container healthchecks) probe
                # readiness without a key. A stranger learns the status and nothing else.
                assert response.status_code == 200
                assert response.json() == {"status": "ready"}
            elif (method, canonical) in PUBLIC_ROUTES:
                assert response.status_code in (400, 403), (method, path, response.text)
            else:
                assert response.status_code == 401, (method, path, auth, response.text)
                if not head:
                    assert "not paired" in response.json()["error"]
    assert agent.client().stats()["models"]["shapes"]["requests"] == 0  # nothing got through


def test_unknown_routes_answer_401_too(agent: Any) -> None:
    assert httpx.get(f"{agent.url}/v1/secret").status_code == 401


def test_pinned_key_mismatch_is_refused(agent: Any) -> None:
    impostor_pin = KeyPair.generate().public_raw
    with AgentClient(agent.url, key=agent.desktop_key, agent_key=impostor_pin) as client:
        with pytest.raises(FingerprintMismatchError, match="fingerprint mismatch") as err:
            client.stats()
    # a reset device has a new id: pairing the old one again cannot work, so it says what does
    hostport = agent.url.removeprefix("http://")
    assert f"it has a new id: run outpost devices add {hostport}, pair the id" in str(err.value)
    # pairing with a device id the answering agent's key does not have
    with pytest.raises(FingerprintMismatchError, match="fingerprint mismatch"):
        pair_with_agent(agent.url, KeyPair.generate(), "0123456789abcdef", _code(agent))


def _signed(agent: Any, request: httpx.Request) -> httpx.Request:
    flow = agent.auth().auth_flow(request)
    return next(flow)


def test_replayed_or_altered_requests_are_refused(agent: Any, package: Path) -> None:
    agent.client().upload_package(package)  # a model to send images to
    with httpx.Client() as http:
        request = _signed(agent, httpx.Request("GET", f"{agent.url}/v1/stats"))
        assert http.send(request).status_code == 200
        replay = http.send(request)
        assert replay.status_code == 401 and "replayed" in replay.json()["error"]

        request = _signed(agent, httpx.Request("GET", f"{agent.url}/v1/stats"))
        moved = httpx.Request("GET", f"{agent.url}/v1/health", headers=request.headers)
        assert http.send(moved).status_code == 401  # the path is signed

        request = _signed(
            agent, httpx.Request("POST", f"{agent.url}/v1/infer", content=make_image_bytes())
        )
        altered = httpx.Request(
            "POST", f"{agent.url}/v1/infer", headers=request.headers, content=b"x" * 10
        )
        altered.headers["Content-Length"] = "10"
        response = http.send(altered)  # its image is read after its admission, then checked
        assert response.status_code == 401 and "sha256" in response.json()["error"]

        body = b'{"size": 100, "sha256": "' + b"0" * 64 + b'"}'
        request = _signed(agent, httpx.Request("POST", f"{agent.url}/v1/uploads", content=body))
        altered = httpx.Request(
            "POST", f"{agent.url}/v1/uploads", headers=request.headers, content=body[:-2] + b"1}"
        )
        response = http.send(altered)  # read and checked before the handler runs
        assert response.status_code == 401 and "sha256" in response.json()["error"]
    assert agent.client().stats()["models"]["shapes"]["requests"] == 0  # nothing got through


def test_a_device_whose_clock_is_off_is_signed_for_with_its_own_clock(
    agent: Any, package: Path
) -> None:
    """An offline LAN has no NTP, and a device without an RTC battery boots hours off: the
    desktop signs with the agent's clock, taken from answers the agent signed (GET /v1/info,
    or a 401 for the timestamp alone, after which the request is signed again, once)."""
    ahead = 7200.0
    agent.service.replay_guard.clock = lambda: time.time() + ahead
    desktop = KeyPair.generate()
    pinned = _pair(agent, _code(agent), desktop)  # GET /v1/info first: paired at once
    with AgentClient(agent.url, key=desktop, agent_key=pinned) as client:
        assert client.stats()["agent_id"] == agent.service.identity.agent_id  # refused, resent
        assert abs(client.auth.clock_offset - ahead) < 5
        assert client.upload_package(package, resumable=True)["version"] == "1"
        assert client.infer(make_image_bytes())["detections"] == list(EXPECTED)
    with AgentClient(agent.url, key=desktop, agent_key=pinned) as client:
        # a one-request push is a stream that cannot be signed again: the clock is read first
        assert client.put_package(package)["version"] == "1"
        assert abs(client.auth.clock_offset - ahead) < 5
    # a clock that moves again between the two: the second refusal is the error
    drift = iter(range(2, 100))
    agent.service.replay_guard.clock = lambda: time.time() + ahead * next(drift)
    with AgentClient(agent.url, key=desktop, agent_key=pinned) as client:
        with pytest.raises(AgentRejectedError) as off:
            client.stats()
    assert off.value.status == 401 and "off this agent's clock" in off.value.message


def test_an_altered_answer_is_refused(agent: Any) -> None:
    auth = agent.auth()
    request = httpx.Request("GET", f"{agent.url}/v1/stats")
    flow = auth.auth_flow(request)
    signed = next(flow)
    real = httpx.Client().send(signed)
    forged = httpx.Response(
        200, headers=real.headers, content=real.content.replace(b"{", b'{"x": 1, ', 1)
    )
    with pytest.raises(AuthError, match="altered"):
        flow.send(forged)


def test_signatures_verify_with_each_key_loaded_once() -> None:
    from device_agent import auth

    a, b = KeyPair.generate(), KeyPair.generate()
    signed = a.sign(b"message")
    assert verify(a.public_raw, signed, b"message")
    assert not verify(a.public_raw, signed, b"other message")
    assert not verify(b.public_raw, signed, b"message")  # another key, even once cached
    assert not verify(b"short", signed, b"message")  # not a key at all: refused, not raised
    assert auth._public_key(a.public_raw) is auth._public_key(a.public_raw)


def test_replay_guard_refuses_stale_timestamps() -> None:
    guard = ReplayGuard(window_s=300)
    now = 1_000_000.0
    with pytest.raises(AuthError, match="clocks must agree"):
        guard.check(str(int(now - 301)), new_nonce(), now=now)
    nonce = new_nonce()
    guard.check(str(int(now)), nonce, now=now)
    with pytest.raises(AuthError, match="replayed"):
        guard.check(str(int(now)), nonce, now=now + 10)


def test_agent_pair_command_writes_a_private_code(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["pair", "--data-dir", str(tmp_path), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert re.fullmatch(r"\d{6}", shown["code"])
    assert shown["agent_id"] == shown["fingerprint"][:16]
    stored = json.loads((tmp_path / CODE_FILE).read_text())
    assert stored["code"] == shown["code"]
    if sys.platform != "win32":
        assert stat.S_IMODE((tmp_path / CODE_FILE).stat().st_mode) == 0o600
    assert main(["pair", "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "outpost devices pair " + shown["agent_id"] + " --code" in out
