"""A load generator for ``deepedge bench ingest``: simulated nodes publishing telemetry at a
fixed aggregate rate. ``python -m deepedge.bench._ingest_publisher HOST PORT CLUSTER FIRST COUNT RATE SECONDS``."""

from __future__ import annotations

import sys
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from deepedge.broker_schemas import NodeBirth, Telemetry, Topics, encode


def main(host: str, port: int, cluster: str, first: int, count: int, rate: float, seconds: float) -> None:
    topics = Topics(cluster)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{first}")
    client.max_queued_messages_set(0)
    client.connect(host, port, keepalive=30)
    client.loop_start()
    names = [f"sim{i:05d}" for i in range(first, first + count)]
    for n in names:
        client.publish(
            topics.node_status(n),
            encode(NodeBirth(node=n, session="bench", ts=time.time(), cpu_cores=4)),
            qos=1,
            retain=True,
        )
    topic = [topics.node_telemetry(n) for n in names]
    print("READY", flush=True)
    sys.stdin.readline()  # go
    start = time.monotonic()
    sent = 0
    per_core = (10.0, 20.0, 30.0, 40.0)
    while (now := time.monotonic()) - start < seconds:
        due = int((now - start) * rate)
        while sent < due:
            i = sent % count
            msg = Telemetry(
                node=names[i],
                ts=time.time(),
                cpu_percent=25.0,
                cpu_per_core=per_core,
                mem_total_bytes=8 << 30,
                mem_used_bytes=2 << 30,
                mem_percent=25.0,
            )
            client.publish(topic[i], encode(msg), qos=0)
            sent += 1
        time.sleep(0.001)
    time.sleep(0.5)
    client.loop_stop()
    print(f"SENT {sent}", flush=True)


if __name__ == "__main__":
    a = sys.argv[1:]
    main(a[0], int(a[1]), a[2], int(a[3]), int(a[4]), float(a[5]), float(a[6]))
