"""The baseline of ``deepedge bench daemon``: the cheapest reasonable telemetry agent, a bare
paho-mqtt loop that publishes psutil's CPU and memory once a second. Run as a subprocess:
``python -m deepedge.bench._baseline_agent HOST PORT TOPIC INTERVAL``."""

from __future__ import annotations

import json
import sys
import time

import paho.mqtt.client as mqtt
import psutil
from paho.mqtt.enums import CallbackAPIVersion


def main(host: str, port: int, topic: str, interval: float) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2)
    client.connect(host, port, keepalive=15)
    client.loop_start()
    psutil.cpu_percent(percpu=True)
    print("READY", flush=True)
    next_at = time.monotonic()
    while True:
        vm = psutil.virtual_memory()
        payload = {"ts": time.time(), "cpu": psutil.cpu_percent(percpu=True), "mem": vm.percent}
        client.publish(topic, json.dumps(payload))
        next_at += interval
        time.sleep(max(0.0, next_at - time.monotonic()))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4]))
