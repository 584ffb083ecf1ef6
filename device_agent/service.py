"""The agent service: HTTP API first, then the mDNS advertisement; stopped in reverse."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web

from device_agent import PROTOCOL_VERSION, __version__
from device_agent.apikeys import ApiKeys
from device_agent.auth import ReplayGuard
from device_agent.errors import AdvertiseError, AgentError, one_line
from device_agent.http_api import answer_malformed_as_json, build_app
from device_agent.identity import load_or_create_identity
from device_agent.inference import InferenceLimiter
from device_agent.lock import DataDirLock
from device_agent.mdns import ADDRESS_POLL_S, ALL_HOSTS, Advertiser
from device_agent.pairing import Pairing
from device_agent.platform_info import device_details, host_facts, probe_runtimes
from device_agent.stats import UsageStats
from device_agent.store import ModelStore
from runtimes.backends import BackendRegistry

log = logging.getLogger(__name__)

T = TypeVar("T")
SHUTDOWN_TIMEOUT_S = 5.0


def _disk_free(folder: Path) -> int:
    return shutil.disk_usage(folder).free


class AgentService:
    """One agent: identity, pairing, model store, usage stats, HTTP server and mDNS advertisement.

    Args:
        data_dir: where the identity and the installed models live.
        host: address to listen on (``0.0.0.0`` for every interface).
        port: TCP port; 0 picks a free one (read it back from :attr:`port` after start).
        interfaces: IP addresses to advertise on; None advertises on every interface.
        advertise: False serves HTTP only (tests, or a device reached by address).
        free_space: bytes free on the disk holding a folder (default ``shutil.disk_usage``);
            uploads that would not fit are refused with 507.
        max_concurrency: inferences run at once (default: the CPU count).
        max_queue: requests that may wait for an inference slot (default 4x
            ``max_concurrency``); one more is refused with 503 and ``Retry-After``.
        address_poll_s: how often the advertiser checks the host's addresses (0: never).
    """

    def __init__(
        self,
        data_dir: Path,
        host: str = "0.0.0.0",
        port: int = 8765,
        interfaces: list[str] | None = None,
        *,
        advertise: bool = True,
        registry: BackendRegistry | None = None,
        free_space: Callable[[Path], int] | None = None,
        max_concurrency: int | None = None,
        max_queue: int | None = None,
        address_poll_s: float = ADDRESS_POLL_S,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.host = host
        self.port = port
        self.interfaces = interfaces
        self.advertise = advertise
        self.identity = load_or_create_identity(self.data_dir)
        self.exchange_public_b64 = self.identity.key.exchange_public_b64()
        self.pairing = Pairing(self.data_dir)
        self.replay_guard = ReplayGuard()
        self.store = ModelStore(self.data_dir, registry=registry)
        self.stats = UsageStats()
        self.runtimes = probe_runtimes(registry)
        self.facts = host_facts()
        self.tmp_dir = self.data_dir / "tmp"
        self.install_lock = asyncio.Lock()
        self.advertised = False
        self.loaded = False  # installed models loaded (GET /v1/ready)
        self.free_space: Callable[[Path], int] = free_space or _disk_free
        self.api_keys = ApiKeys(self.data_dir)
        concurrency = max(1, max_concurrency or os.cpu_count() or 1)
        queue = 4 * concurrency if max_queue is None else max(0, max_queue)
        self.limiter = InferenceLimiter(concurrency, queue)
        self.address_poll_s = address_poll_s
        self._details: dict[str, Any] | None = None
        self._details_lock = asyncio.Lock()
        self.app = build_app(self)
        self._install_executor = ThreadPoolExecutor(1, thread_name_prefix="outpost-install")
        self._infer_executor = ThreadPoolExecutor(concurrency, thread_name_prefix="outpost-infer")
        self._runner: web.AppRunner | None = None
        self._advertiser: Advertiser | None = None
        self._lock = DataDirLock(self.data_dir, "serve")

    @property
    def url(self) -> str:
        """A URL for this agent; the loopback address when it listens on every interface."""
        host = "127.0.0.1" if self.host in ALL_HOSTS else self.host
        return f"http://{host}:{self.port}"

    def txt_properties(self) -> dict[str, str]:
        facts = self.facts
        return {
            "id": self.identity.agent_id,
            "proto": str(PROTOCOL_VERSION),
            "version": __version__,
            "platform": facts["platform"],
            "arch": facts["arch"],
            "runtimes": ",".join(info.key for info in self.runtimes if info.available),
            "name": self.identity.name,
        }

    async def run_install(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._install_executor, fn)

    async def run_inference(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._infer_executor, fn)

    async def device_details(self) -> dict[str, Any]:
        """Accelerators and runtimes in detail, probed on first use off the event loop (the
        probes may start ``nvidia-smi`` or import OpenVINO), then cached."""
        async with self._details_lock:
            if self._details is None:
                self._details = await self.run_install(lambda: device_details(self.runtimes))
            return self._details

    def _prepare_disk(self) -> None:
        """Drop uploads an earlier run left half-received, then load the installed models."""
        if self.tmp_dir.is_dir():
            for leftover in self.tmp_dir.glob("upload-*"):
                with contextlib.suppress(OSError):
                    leftover.unlink()
        self.store.load()
        self.store.guard.watch_inferences()  # a runtime that crashes on a frame is known
        self.loaded = True

    async def async_start(self) -> None:
        """Take the data folder's lock (DataDirBusyError when another agent or an install
        holds it), load installed models, bind the HTTP server, then advertise the real port."""
        self._lock.acquire()
        try:
            await self.run_install(self._prepare_disk)
            runner = web.AppRunner(self.app, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
            await runner.setup()
            answer_malformed_as_json(runner)
            try:
                await web.TCPSite(runner, self.host, self.port).start()
            except OSError as exc:
                await runner.cleanup()
                raise AgentError(
                    f"cannot listen on {self.host}:{self.port}: {one_line(exc.strerror or exc)}; "
                    "pick another --port or --interface"
                ) from None
        except BaseException:
            self._lock.release()
            raise
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        self._lock.describe(self.url)
        log.info("agent %s listening on %s", self.identity.agent_id, self.url)
        if not self.advertise:
            return
        advertiser = Advertiser(
            agent_id=self.identity.agent_id,
            port=self.port,
            properties=self.txt_properties(),
            interfaces=self.interfaces,
            poll_interval_s=self.address_poll_s,
        )
        try:
            await advertiser.async_start()
        except AdvertiseError as exc:
            log.warning("%s; the agent still answers at %s", exc, self.url)
            return
        self._advertiser = advertiser
        self.advertised = True

    @property
    def advertised_addresses(self) -> list[str]:
        """The addresses the mDNS record names now (empty when not advertising, or while the
        host has no IPv4 address yet)."""
        advertiser = self._advertiser
        return list(advertiser.addresses) if advertiser is not None else []

    async def async_stop(self) -> None:
        """Withdraw the advertisement, then close the HTTP server and the worker threads."""
        advertiser, self._advertiser = self._advertiser, None
        if advertiser is not None:
            await advertiser.async_stop()
            self.advertised = False
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        self._infer_executor.shutdown(wait=False, cancel_futures=True)
        # an install under way finishes (the process would wait for its thread anyway)
        # before the folder is free for another agent
        await asyncio.to_thread(self._install_executor.shutdown, wait=True, cancel_futures=True)
        self._lock.release()
        if runner is not None:  # a start that failed has said why; nothing was serving
            log.info("agent %s stopped", self.identity.agent_id)
