"""A board's network link, shaped with ``tc`` on both ends of its veth pair: the board's side
shapes what it sends (its upload), the bridge's side what it receives (its download), as a
board's own Ethernet port or Wi-Fi radio would.

With ``sch_netem`` in the kernel one netem qdisc per direction gives rate, delay, jitter and
loss (with a rate set, netem keeps packets in order whatever the jitter). Without it (some
kernels are built without netem, e.g. Firecracker's) a token bucket (``tbf``) gives the rate
only, and the link says which properties it could not emulate."""

from __future__ import annotations

from dataclasses import dataclass, replace

from deepedge.netem._cmd import has_qdisc, tc

__all__ = ["LinkProfile", "Shaping", "qdisc_args", "shape_device"]

MTU_BYTES = 1514  # a full Ethernet frame, for netem's packet limit


@dataclass(frozen=True)
class LinkProfile:
    """A board's link to the cluster's switch or access point (one way: board <-> bridge)."""

    rate_bps: float  # bits per second, each direction
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss_pct: float = 0.0
    queue_ms: float = 50.0  # the longest a packet waits in the link's queue (a driver's buffer)

    def __post_init__(self) -> None:
        if not self.rate_bps > 0:
            raise ValueError(f"link rate {self.rate_bps} must be positive")
        if min(self.delay_ms, self.jitter_ms, self.loss_pct) < 0 or self.loss_pct > 100 or self.queue_ms <= 0:
            raise ValueError(f"impossible link {self}")

    @property
    def bytes_per_s(self) -> float:
        return self.rate_bps / 8

    def scaled(self, factor: float) -> LinkProfile:
        """The same link at ``factor`` of its rate (a degraded radio)."""
        return replace(self, rate_bps=self.rate_bps * factor)

    def describe(self) -> str:
        """``1 Gb/s, 0.2 ms`` or ``50 Mb/s, 3 ms ± 1 ms, 0.1 % loss``."""
        r = self.rate_bps
        rate = f"{r / 1e9:g} Gb/s" if r >= 1e9 else f"{r / 1e6:g} Mb/s" if r >= 1e6 else f"{r / 1e3:g} kb/s"
        parts = [rate]
        if self.delay_ms or self.jitter_ms:
            parts.append(f"{self.delay_ms:g} ms" + (f" ± {self.jitter_ms:g} ms" if self.jitter_ms else ""))
        if self.loss_pct:
            parts.append(f"{self.loss_pct:g} % loss")
        return ", ".join(parts)


@dataclass(frozen=True)
class Shaping:
    """What was applied to a link: ``qdisc`` (netem or tbf) and what could not be emulated."""

    qdisc: str
    missing: tuple[str, ...] = ()

    def describe(self) -> str:
        if not self.missing:
            return self.qdisc
        return f"{self.qdisc} ({', '.join(self.missing)} not emulated: this kernel has no sch_netem)"


def qdisc_args(link: LinkProfile, netem: bool) -> tuple[list[str], Shaping]:
    """The ``tc qdisc replace ... root`` arguments after ``root`` for ``link``."""
    rate = f"{max(1, round(link.rate_bps))}bit"
    if netem:
        queue_bytes = link.bytes_per_s * link.queue_ms / 1000
        args = ["netem"]
        if link.delay_ms or link.jitter_ms:
            args += ["delay", f"{link.delay_ms}ms"]
            if link.jitter_ms:
                args += [f"{link.jitter_ms}ms", "distribution", "normal"]
        if link.loss_pct:
            args += ["loss", "random", f"{link.loss_pct}%"]
        args += ["rate", rate, "limit", str(max(16, int(queue_bytes // MTU_BYTES)))]
        return args, Shaping("netem")
    missing = []
    if link.delay_ms:
        missing.append("delay")
    if link.jitter_ms:
        missing.append("jitter")
    if link.loss_pct:
        missing.append("loss")
    # The bucket holds at least 4 ms of traffic (a 250 Hz kernel refills it every 4 ms) and a
    # whole 64 KiB segmentation-offload packet (smaller buckets split them).
    burst = max(64 * 1024, int(link.bytes_per_s * 0.004))
    return ["tbf", "rate", rate, "burst", str(burst), "latency", f"{link.queue_ms}ms"], Shaping("tbf", tuple(missing))


def shape_device(dev: str, link: LinkProfile, netns: str | None = None) -> Shaping:
    """Shape what ``dev`` sends (in ``netns``, or this namespace) to ``link``."""
    args, shaping = qdisc_args(link, has_qdisc("netem"))
    tc("qdisc", "replace", "dev", dev, "root", *args, netns=netns)
    return shaping
