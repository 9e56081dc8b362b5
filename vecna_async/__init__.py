"""vecna_async: an asyncio-native task queue on Redis.

The public surface, re-exported; see the README for a tour and ``vecna_async.exceptions`` for the
error tree.
"""

from vecna_async.backend.results import AsyncResult, ChainAsyncResult, ChordAsyncResult
from vecna_async.config import Config, RedisConfig
from vecna_async.context import Context
from vecna_async.exceptions import (
    ArgumentTypeError,
    BrokerRefused,
    BrokerUnavailable,
    ConfigError,
    InvalidCronSpec,
    InvalidSignature,
    MessageTooLarge,
    ResultTimeout,
    ResultTooLarge,
    RetryTaskLater,
    TaskCanceled,
    TaskFailed,
    TaskNotRegistered,
    TaskTimeout,
    UnsupportedRedis,
    VecnaError,
    WorkerStartupFailed,
)
from vecna_async.messages import DeadLetter, State, TaskState
from vecna_async.server import Server
from vecna_async.tasks.registry import TaskHandle
from vecna_async.tasks.signature import Arg, Signature
from vecna_async.tasks.workflows import Chain, Chord, Group
from vecna_async.worker.worker import Worker

__all__ = [
    "Arg",
    "ArgumentTypeError",
    "AsyncResult",
    "BrokerRefused",
    "BrokerUnavailable",
    "Chain",
    "ChainAsyncResult",
    "Chord",
    "ChordAsyncResult",
    "Config",
    "ConfigError",
    "Context",
    "DeadLetter",
    "Group",
    "InvalidCronSpec",
    "InvalidSignature",
    "MessageTooLarge",
    "RedisConfig",
    "ResultTimeout",
    "ResultTooLarge",
    "RetryTaskLater",
    "Server",
    "Signature",
    "State",
    "TaskCanceled",
    "TaskFailed",
    "TaskHandle",
    "TaskNotRegistered",
    "TaskState",
    "TaskTimeout",
    "UnsupportedRedis",
    "VecnaError",
    "Worker",
    "WorkerStartupFailed",
]
__version__ = "0.2.0"
