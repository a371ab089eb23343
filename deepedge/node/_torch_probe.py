"""What the training worker's torch can do, asked once when the node starts: the daemon runs
``python -m deepedge.training.probe`` (with the worker's interpreter; the daemon never imports
torch), bounded by a timeout, and puts the answer — with this board's ``[training]`` device,
backend and precision resolved against it — in its birth (``NodeBirth.torch``). The coordinator
does not plan a board whose torch cannot all-reduce and says why.

A board whose worker command is not deepedge's worker (a stand-in, a wrapper that does not run
``deepedge.training.worker``) is not probed: its birth carries no ``torch`` (unknown, planned as
before, with gloo)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import Sequence
from typing import Any

import structlog
from msgspec.structs import replace

from deepedge import compat
from deepedge.broker_schemas import TorchInfo
from deepedge.config import TrainingConfig
from deepedge.devices import DeviceError, device_kind, precision_problem, resolve_device

__all__ = ["PROBE_TIMEOUT_S", "TorchProbe", "probe_command", "run_probe", "torch_info"]

log = structlog.get_logger("deepedge.node")

PROBE_TIMEOUT_S = 120.0  # importing torch and initialising CUDA on a small board takes a while
WORKER_MODULE = "deepedge.training.worker"
_TEXT = 256  # TorchInfo's strings are at most this long


def probe_command(worker_command: Sequence[str]) -> list[str] | None:
    """The worker's command with ``deepedge.training.worker`` replaced by the probe module, so it
    runs under the same interpreter and wrapper; None for a worker command that is not deepedge's."""
    if WORKER_MODULE not in worker_command:
        return None
    return [("deepedge.training.probe" if part == WORKER_MODULE else part) for part in worker_command]


async def run_probe(command: Sequence[str], timeout_s: float = PROBE_TIMEOUT_S) -> dict[str, Any]:
    """The probe's JSON answer (its last JSON object line), or ``{"error": ...}`` when it cannot
    start, times out (killed, its whole process group) or prints no answer."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
    except OSError as exc:
        return {"error": f"cannot start the torch probe {command[0]!r}: {exc}"}
    try:
        async with compat.timeout(timeout_s):
            out, err = await proc.communicate()
    except TimeoutError:
        return {"error": f"the torch probe did not answer within {timeout_s:g} s"}
    finally:
        if proc.returncode is None:  # timed out or cancelled (the daemon stops)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
    for line in reversed(out[-65536:].splitlines()):
        with contextlib.suppress(ValueError):
            answer = json.loads(line)
            if isinstance(answer, dict):
                return answer
    tail = err[-300:].decode(errors="replace").strip()
    return {"error": f"the torch probe exited {proc.returncode} without an answer: {tail or 'no output'}"}


def _short(x: object) -> str:
    return str(x)[:_TEXT]


def torch_info(answer: dict[str, Any], training: TrainingConfig) -> TorchInfo:
    """The birth's ``torch`` from the probe's answer and this board's ``[training]``: where it
    trains (``training.device`` resolved), that device's kind, name, memory and precisions. A
    failed probe, a device the board does not have, or a precision the device lacks sets
    ``error`` (the coordinator then does not plan the board, and says why)."""
    info = TorchInfo(backend=training.backend, precision=training.precision)
    if "error" in answer or "torch" not in answer:
        return replace(info, error=_short(answer.get("error") or "the torch probe gave no answer"))
    try:
        devices = [d for d in answer.get("devices") or [] if isinstance(d, dict)]
        cuda = bool(answer.get("cuda")) and bool(devices)
        info = replace(
            info,
            version=_short(answer.get("torch", "")),
            distributed=bool(answer.get("distributed")),
            gloo=bool(answer.get("gloo")),
            nccl=bool(answer.get("nccl")),
            cuda=cuda,
            cuda_devices=min(1024, len(devices) if cuda else 0),
        )
        try:
            device = resolve_device(training.device, cuda, len(devices) if cuda else 0)
        except DeviceError as exc:
            why = str(exc) + (f" ({answer['cuda_error']})" if answer.get("cuda_error") else "")
            return replace(info, error=_short(why))
        gpu = devices[int(device.split(":")[1])] if device != "cpu" else {}
        kind = device_kind(device, bool(gpu.get("integrated")))
        bf16, fp16 = (bool(gpu.get("bf16")), bool(gpu.get("fp16"))) if gpu else (True, True)
        problem = precision_problem(training.precision, kind, bf16=bf16, fp16=fp16)
        return replace(
            info,
            device=device,
            kind=kind,
            device_name=_short(gpu.get("name", "")),
            device_memory=max(0, min(2**53, int(gpu.get("total_memory", 0)))),
            bf16=bf16,
            fp16=fp16,
            error=_short(problem or ""),
        )
    except (TypeError, ValueError, IndexError) as exc:  # an answer of the wrong shape
        return replace(info, error=_short(f"the torch probe's answer is malformed: {exc}"))


class TorchProbe:
    """The probe of this daemon's start: ``info`` once it answered (None before, and for a board
    that is not probed)."""

    def __init__(self) -> None:
        self.info: TorchInfo | None = None
        self.task: asyncio.Task[None] | None = None

    def start(
        self, command: Sequence[str] | None, training: TrainingConfig, timeout_s: float = PROBE_TIMEOUT_S
    ) -> None:
        if command is None:
            log.info("node.torch_not_probed", why="node.worker_command does not run deepedge.training.worker")
            return

        async def probe() -> None:
            try:
                self.info = torch_info(await run_probe(command, timeout_s), training)
            except Exception as exc:  # a bug here must not lose the answer: the board is not planned
                self.info = TorchInfo(error=_short(f"the torch probe failed: {type(exc).__name__}: {exc}"))
            if self.info.error:
                log.warning("node.torch_probe", error=self.info.error, version=self.info.version)
            else:
                log.info(
                    "node.torch_probe",
                    version=self.info.version,
                    device=self.info.device,
                    kind=self.info.kind,
                    distributed=self.info.distributed,
                    gloo=self.info.gloo,
                    nccl=self.info.nccl,
                )

        self.task = asyncio.create_task(probe(), name="torch-probe")

    @property
    def pending(self) -> bool:
        return self.task is not None and not self.task.done()

    async def wait(self, timeout_s: float) -> None:
        """Wait for the answer at most ``timeout_s`` (the probe goes on after that)."""
        if self.task is not None and not self.task.done():
            await asyncio.wait({self.task}, timeout=timeout_s)

    async def stop(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()
            with contextlib.suppress(BaseException):
                await self.task
