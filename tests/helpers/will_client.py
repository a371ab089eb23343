"""A client process for the last-will test: connects with a will, publishes a birth, prints
READY and waits to be killed."""

from __future__ import annotations

import asyncio
import sys
import time

from deepedge.broker_schemas import NodeBirth, NodeDeath, Topics
from deepedge.config import BrokerConfig
from deepedge.log_setup import configure_logging
from deepedge.transport import MqttTransport, Will


async def main(url: str, cluster: str, node: str) -> None:
    topics = Topics(cluster)
    will = Will(topics.node_status(node), NodeDeath(node=node, session="s1", reason="lost"))
    broker = BrokerConfig(url=url, keepalive_s=5)
    async with MqttTransport(broker, client_id=f"node-{node}", will=will) as t:
        await t.publish(
            topics.node_status(node), NodeBirth(node=node, session="s1", ts=time.time()), qos=1, retain=True
        )
        print("READY", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    configure_logging("warning")
    asyncio.run(main(*sys.argv[1:4]))
