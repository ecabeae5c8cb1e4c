"""Task messaging: one contract (`Broker`), a RabbitMQ and an in-process implementation.

Open one with `open_broker(url, topology)`; see `base` for the semantics both keep.
"""

from common.broker.amqp import AmqpBroker
from common.broker.amqp_topology import delete_topology
from common.broker.base import (
    Broker,
    BrokerError,
    Consumer,
    Handler,
    Incoming,
    Outgoing,
    ProgressNote,
    Reject,
    Subscription,
)
from common.broker.factory import open_broker
from common.broker.memory import MemoryBroker
from common.broker.topology import DEFAULT_DELAY_TIERS_MS, Topology

__all__ = [
    "DEFAULT_DELAY_TIERS_MS",
    "AmqpBroker",
    "Broker",
    "BrokerError",
    "Consumer",
    "Handler",
    "Incoming",
    "MemoryBroker",
    "Outgoing",
    "ProgressNote",
    "Reject",
    "Subscription",
    "Topology",
    "delete_topology",
    "open_broker",
]
