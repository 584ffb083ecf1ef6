"""/v1/info device details (probes faked at the boundary), usage statistics and their time
series, /v1/stats, and the mDNS re-announcement (on 127.0.0.1 only)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from device_agent import platform_info
from device_agent.client import AgentRejectedError
from device_agent.discovery import async_browse
from device_agent.errors import AdvertiseError
from device_agent.mdns import Advertiser, machine_ipv4_addresses
from device_agent.stats import HISTOGRAM_BOUNDS_MS, SERIES_MINUTES, UsageStats, prometheus_text
from runtimes.backends import BackendInfo
from tests.fakes import make_image_bytes

LOOPBACK = ["127.0.0.1"]
CPUINFO = "processor\t: 0\nmodel name\t: Example CPU 3000\nflags\t: fpu\n"
MEMINFO = "MemTotal:        8048576 kB\nMemFree:  1 kB\n"


def _machine(
    monkeypatch: pytest.MonkeyPatch,
    files: dict[str, str],
    *,
    commands: dict[str, str] | None = None,
    globs: dict[str, list[str]] | None = None,
    system: str = "linux",
    arch: str = "x86_64",
) -> list[list[str]]:
    """Play a device: its files, the commands on PATH and their output, its platform."""
    ran: list[list[str]] = []
    commands = commands or {}

    def run(argv: list[str]) -> str | None:
        ran.append(argv)
        return commands.get(argv[0])

    monkeypatch.setattr(platform_info, "read_text", files.get)
    monkeypatch.setattr(platform_info, "which", lambda name: name if name in commands else None)
    monkeypatch.setattr(platform_info, "run_command", run)
    monkeypatch.setattr(platform_info, "list_dir", lambda pattern: (globs or {}).get(pattern, []))
    monkeypatch.setattr(platform_info, "system_platform", lambda: system)
    monkeypatch.setattr(platform_info, "machine", lambda: arch)
    return ran


def test_cpu_only_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    _machine(monkeypatch, {"/proc/cpuinfo": CPUINFO, "/proc/meminfo": MEMINFO})
    assert platform_info.cpu_model() == "Example CPU 3000"
    assert platform_info.ram_bytes() == 8048576 * 1024
    assert platform_info.accelerators() == []
    facts = platform_info.host_facts()
    assert facts["cpu_model"] == "Example CPU 3000" and facts["ram_bytes"] == 8048576 * 1024


def test_cuda_from_nvidia_smi_and_from_the_driver_file(monkeypatch: pytest.MonkeyPatch) -> None:
    smi = "NVIDIA RTX A2000, 6138, 535.104.05\n"
    ran = _machine(monkeypatch, {}, commands={"nvidia-smi": smi})
    assert platform_info.accelerators() == [
        {
            "kind": "cuda",
            "name": "NVIDIA RTX A2000",
            "memory_bytes": 6138 << 20,
            "driver": "535.104.05",
        }
    ]
    assert ran[0][0] == "nvidia-smi"
    driver = "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05\nGCC version: 12\n"
    _machine(monkeypatch, {"/proc/driver/nvidia/version": driver})
    assert platform_info.accelerators() == [
        {"kind": "cuda", "name": "NVIDIA GPU", "driver": driver.splitlines()[0]}
    ]


def test_jetson(monkeypatch: pytest.MonkeyPatch) -> None:
    release = "# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref\n"
    _machine(
        monkeypatch,
        {"/etc/nv_tegra_release": release, "/proc/device-tree/model": "NVIDIA Jetson Orin Nano"},
        arch="aarch64",
    )
    assert platform_info.accelerators() == [
        {
            "kind": "jetson",
            "name": "NVIDIA Jetson Orin Nano",
            "l4t": "R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref",
        }
    ]


def test_apple_neural_engine_and_macos_sysctl(monkeypatch: pytest.MonkeyPatch) -> None:
    commands = {"sysctl": "Apple M2\n"}
    _machine(monkeypatch, {}, commands=commands, system="darwin", arch="arm64")
    assert platform_info.accelerators() == [
        {"kind": "apple-neural-engine", "name": "Apple Neural Engine"}
    ]
    assert platform_info.cpu_model() == "Apple M2"
    _machine(monkeypatch, {}, system="darwin", arch="x86_64")  # an Intel Mac has none
    assert platform_info.accelerators() == []


def test_intel_gpu_needs_dri_and_the_intel_vendor(monkeypatch: pytest.MonkeyPatch) -> None:
    vendor = "/sys/class/drm/card0/device/vendor"
    other = "/sys/class/drm/card1/device/vendor"
    globs = {
        "/dev/dri/*": ["/dev/dri/card0", "/dev/dri/renderD128"],
        "/sys/class/drm/*/device/vendor": [
            vendor,
            other,
            "/sys/class/drm/card0-HDMI-A-1/device/vendor",
        ],
    }
    files = {
        vendor: "0x8086\n",
        other: "0x10de\n",
        "/sys/class/drm/card0/device/device": "0x46a6\n",
    }
    _machine(monkeypatch, files, globs=globs)
    assert platform_info.accelerators() == [
        {"kind": "intel-gpu", "name": "card0", "device_id": "0x46a6"}
    ]
    _machine(monkeypatch, files, globs={**globs, "/dev/dri/*": []})  # no render nodes
    assert platform_info.accelerators() == []


def test_runtime_details_report_providers_devices_and_extra_runtimes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _machine(monkeypatch, {}, system="darwin", arch="arm64")
    installed = {"tflite_runtime": "2.14.0", "coremltools": "7.1"}
    monkeypatch.setattr(platform_info, "has_module", lambda name: name in installed)
    versions = {"tflite-runtime": "2.14.0", "coremltools": "7.1"}
    monkeypatch.setattr(platform_info, "module_version", versions.get)
    monkeypatch.setattr(
        platform_info,
        "onnxruntime_providers",
        lambda: ["CoreMLExecutionProvider", "CPUExecutionProvider"],
    )
    monkeypatch.setattr(platform_info, "openvino_devices", lambda: ["CPU", "GPU"])
    infos = [
        BackendInfo("onnxruntime", ("onnx",), True, "1.20.0", ("CPUExecutionProvider",)),
        BackendInfo("openvino", ("openvino",), True, "2024.4", ("AUTO",)),
        BackendInfo("torchscript", ("torchscript",), False, reason="torch is not installed"),
    ]
    details = platform_info.runtime_details(infos)
    by_key = {r["key"]: r for r in details}
    assert by_key["onnxruntime"]["available_providers"] == [
        "CoreMLExecutionProvider",
        "CPUExecutionProvider",
    ]
    assert by_key["openvino"]["devices"] == ["CPU", "GPU"]
    assert "devices" not in by_key["torchscript"] and by_key["torchscript"]["available"] is False
    assert (by_key["tflite"]["version"], by_key["coremltools"]["version"]) == ("2.14.0", "7.1")
    assert "litert" not in by_key
    _machine(monkeypatch, {}, system="linux")  # coremltools is reported on macOS only
    assert "coremltools" not in {r["key"] for r in platform_info.runtime_details(infos)}


def test_info_has_details_for_the_paired_desktop_only_and_probes_once(
    agent: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from device_agent import service as service_module

    calls: list[int] = []
    real = service_module.device_details

    def counted(infos: list[BackendInfo]) -> dict[str, Any]:
        calls.append(1)
        out = real(infos)
        out["accelerators"] = [{"kind": "cuda", "name": "Fake GPU"}]
        return out

    monkeypatch.setattr(service_module, "device_details", counted)
    monkeypatch.setattr(platform_info, "openvino_devices", lambda: ["CPU"])
    with agent.client() as client:
        info = client.info()
        again = client.info()
    assert calls == [1] and again["accelerators"] == info["accelerators"]
    assert info["accelerators"] == [{"kind": "cuda", "name": "Fake GPU"}]
    assert {"cpu_model", "ram_bytes", "cpu_count", "os", "arch"} <= set(info)
    ort = next(r for r in info["runtimes"] if r["key"] == "onnxruntime")
    assert "CPUExecutionProvider" in ort["available_providers"] and ort["version"]
    assert info["concurrency"]["max_in_flight"] >= 1
    stranger = httpx.get(f"{agent.url}/v1/info").json()
    assert not {"accelerators", "runtimes", "models", "cpu_model"} & set(stranger)


# --- usage statistics ------------------------------------------------------------------------


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_usage_histogram_throughput_and_series() -> None:
    clock = Clock(1_700_000_080.0)  # 22:14:40 UTC
    stats = UsageStats(clock=clock)
    for ms in (0.5, 3.0, 3.0, 40.0, 9000.0):
        stats.record("m", ms, "1")
    stats.record_error("m", "1")
    usage = stats.versions("m")["1"]
    assert (usage["requests"], usage["errors"]) == (6, 1)
    buckets = usage["histogram"]["buckets"]
    assert list(buckets) == [*(str(int(b)) for b in HISTOGRAM_BOUNDS_MS), "+Inf"]
    assert (buckets["1"], buckets["2"], buckets["5"], buckets["50"], buckets["5000"]) == (
        1,
        1,
        3,
        4,
        4,
    )
    assert buckets["+Inf"] == usage["histogram"]["count"] == 5
    assert usage["histogram"]["sum_ms"] == 9046.5
    assert usage["latency_ms"]["p50"] == 3.0
    assert usage["throughput_rps"] == 0.1  # 6 requests over the last 60 s
    assert usage["series"] == [
        {"t": "2023-11-14T22:14:00+00:00", "requests": 6, "errors": 1, "mean_ms": 1809.3}
    ]

    clock.now += 30  # the next minute
    stats.record("m", 10.0, "2")
    assert stats.summary("m")["throughput_rps"] == round(7 / 60, 3)
    assert stats.versions("m")["1"]["throughput_rps"] == 0.1
    clock.now += 61  # a quiet minute later: nothing in the last 60 s
    assert stats.summary("m")["throughput_rps"] == 0.0
    assert [p["requests"] for p in stats.versions("m")["1"]["series"]] == [6]
    assert stats.versions("m", minutes=1)["1"]["series"] == []  # only the current minute


def test_series_is_a_bounded_ring_of_24_hours() -> None:
    clock = Clock(1_700_000_000.0)
    stats = UsageStats(clock=clock)
    for _ in range(SERIES_MINUTES + 100):  # one request a minute for 25 h 40 min
        stats.record("m", 5.0, "1")
        clock.now += 60
    clock.now -= 60
    usage = stats.version_usage("m", "1")
    assert usage is not None
    series = stats.versions("m", minutes=SERIES_MINUTES)["1"]["series"]
    assert len(series) == SERIES_MINUTES  # the oldest 100 minutes are gone
    assert series[0]["t"] < series[-1]["t"]
    assert len(usage.minutes._stamp) == SERIES_MINUTES
    assert stats.versions("m")["1"]["requests"] == SERIES_MINUTES + 100


def test_metrics_sum_and_count_are_counters_beyond_the_window() -> None:
    """Prometheus takes a summary's _sum and _count for counters: they cover every successful
    request since start, never only the window the quantiles come from (which would make
    them go down). Each version also has a cumulative histogram."""
    stats = UsageStats(window=5)
    seen = []
    for latency in [1.0] * 4 + [100.0] * 4 + [1.0] * 4:
        stats.record("m", latency, "1")
        text = prometheus_text(stats, [])
        values = dict(line.rsplit(" ", 1) for line in text.splitlines() if not line.startswith("#"))
        seen.append(
            (
                float(values['outpost_inference_latency_ms_sum{model="m"}']),
                int(values['outpost_inference_latency_ms_count{model="m"}']),
            )
        )
    stats.record_error("m", "1")
    assert seen[-1] == (408.0, 12)
    assert all(a[0] <= b[0] and a[1] < b[1] for a, b in zip(seen, seen[1:], strict=False))
    text = prometheus_text(stats, [])
    assert "# TYPE outpost_request_latency_ms histogram" in text
    buckets = [
        line for line in text.splitlines() if line.startswith("outpost_request_latency_ms_bucket")
    ]
    assert buckets[0] == 'outpost_request_latency_ms_bucket{model="m",version="1",le="1"} 8'
    assert buckets[-1] == 'outpost_request_latency_ms_bucket{model="m",version="1",le="+Inf"} 12'
    counts = [int(b.rsplit(" ", 1)[1]) for b in buckets]
    assert counts == sorted(counts) and len(buckets) == len(HISTOGRAM_BOUNDS_MS) + 1
    assert 'outpost_request_latency_ms_sum{model="m",version="1"} 408' in text
    assert 'outpost_request_latency_ms_count{model="m",version="1"} 12' in text


def test_metrics_text_without_limiter_counters_is_unchanged() -> None:
    stats = UsageStats()
    assert "outpost_inference_in_flight" not in prometheus_text(stats, [])
    text = prometheus_text(stats, [], {"in_flight": 2, "queued": 3, "rejected": 4})
    assert "outpost_inference_in_flight 2" in text and "outpost_inference_queued 3" in text
    assert "outpost_inference_rejected_total 4" in text


def test_stats_route_reports_versions_series_and_throughput(agent: Any, package: Path) -> None:
    with agent.client() as client:
        client.upload_package(package)
        for _ in range(2):
            client.infer_model("shapes", make_image_bytes())
        with pytest.raises(AgentRejectedError):
            client.infer(b"broken")
        report = client.usage(minutes=5)
        with pytest.raises(AgentRejectedError, match="minutes must be a whole number"):
            client._request("GET", "/v1/stats", params={"minutes": "0"})
    assert report["series_minutes"] == 5 and report["histogram_bounds_ms"] == list(
        HISTOGRAM_BOUNDS_MS
    )
    shapes = report["models"]["shapes"]
    assert shapes["throughput_rps"] == 0.05  # 3 requests within the last minute
    version = shapes["versions"]["1"]
    assert (version["requests"], version["errors"], version["histogram"]["count"]) == (3, 1, 2)
    assert sum(p["requests"] for p in version["series"]) == 3
    assert report["concurrency"]["rejected"] == 0


# --- mDNS re-announce ------------------------------------------------------------------------


def _advertiser(
    agent_id: str, current: list[str], poll_s: float = 0, port: int = 8765
) -> Advertiser:
    """An advertiser on loopback whose host addresses are ``current`` (changed by the test)."""
    return Advertiser(
        agent_id=agent_id,
        port=port,
        properties={"id": agent_id},
        interfaces=LOOPBACK,
        address_source=lambda: list(current),
        poll_interval_s=poll_s,
    )


def test_advertiser_reannounces_when_addresses_change() -> None:
    async def scenario() -> tuple[list[list[str]], Advertiser]:
        current = ["127.0.0.1"]
        advertiser = _advertiser("00ff00ff00ff00ff", current)
        await advertiser.async_start()
        updates: list[list[str]] = []
        zc = advertiser._zc
        assert zc is not None
        real = zc.async_update_service

        async def update(info: Any) -> Any:
            updates.append(info.parsed_addresses())
            return await real(info)

        zc.async_update_service = update  # type: ignore[method-assign]
        try:
            assert await advertiser.refresh() is False  # unchanged: nothing sent
            current[:] = ["127.0.0.1", "127.0.0.2"]
            assert await advertiser.refresh() is True
            current[:] = []  # no address for a moment: keep advertising the last ones
            assert await advertiser.refresh() is False
            assert advertiser.addresses == ["127.0.0.1", "127.0.0.2"]
        finally:
            await advertiser.async_stop()
        return updates, advertiser

    updates, advertiser = asyncio.run(scenario())
    assert updates == [["127.0.0.1", "127.0.0.2"]]
    assert advertiser.reannounced == 1 and advertiser._zc is None


def test_advertiser_polls_the_addresses_in_the_background() -> None:
    async def scenario() -> int:
        changed = threading.Event()
        current = ["127.0.0.1"]
        advertiser = _advertiser("00ff00ff00ff00fe", current, 0.02)
        await advertiser.async_start()
        try:
            current.append("127.0.0.3")
            for _ in range(500):
                if advertiser.reannounced:
                    changed.set()
                    break
                await asyncio.sleep(0.02)
        finally:
            await advertiser.async_stop()
        assert changed.is_set(), "the poller never re-announced"
        return advertiser.reannounced

    assert asyncio.run(scenario()) >= 1


def test_an_advertiser_with_no_address_yet_registers_when_one_comes() -> None:
    """Before DHCP there is no address: nothing is advertised (not 127.0.0.1, which would
    send desktops to themselves) until one appears."""

    async def scenario() -> tuple[list[str] | None, Advertiser, list[str]]:
        current: list[str] = []
        advertiser = _advertiser("00ff00ff00ff00fd", current)
        await advertiser.async_start()
        try:
            before = None if advertiser._info is None else advertiser.addresses
            assert await advertiser.refresh() is False  # still none
            current[:] = ["127.0.0.1"]
            assert await advertiser.refresh() is True
            found = await async_browse(LOOPBACK, timeout=10, want_id="00ff00ff00ff00fd")
        finally:
            await advertiser.async_stop()
        return before, advertiser, [d.agent_id for d in found]

    before, advertiser, found = asyncio.run(scenario())
    assert before is None and advertiser.addresses == ["127.0.0.1"]
    assert "00ff00ff00ff00fd" in found and advertiser._zc is None


def test_no_loopback_fallback_in_the_machine_addresses(monkeypatch: pytest.MonkeyPatch) -> None:
    import ifaddr

    loopback = ifaddr.Adapter("lo", "lo", [ifaddr.IP("127.0.0.1", 8, "lo")])
    monkeypatch.setattr(ifaddr, "get_adapters", lambda: [loopback])
    assert machine_ipv4_addresses() == []


def test_a_second_host_with_the_same_id_is_named_as_a_copied_data_dir() -> None:
    """A data folder copied to another device means two agents with one identity: the
    second is told so, not given an empty reason."""

    async def scenario() -> str:
        first, second = (
            _advertiser("00ff00ff00ff00fc", ["127.0.0.1"], port=port) for port in (8765, 8766)
        )
        await first.async_start()
        try:
            with pytest.raises(AdvertiseError) as clash:
                await second.async_start()
            return str(clash.value)
        finally:
            await second.async_stop()
            await first.async_stop()

    message = asyncio.run(scenario())
    assert "another host on the network already advertises this agent's id" in message
    assert "give each device its own data folder" in message
