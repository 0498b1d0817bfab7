"""Work one process does while the others of a multi-process run wait.

Preparing a tfds dataset, a cache part or the training-set statistics
writes files that several processes would otherwise race to write (tfds's
`FileExistsError: Cannot rename .../incomplete.*`): one process prepares,
the others wait for its word through the `jax.distributed` key-value store
(a bounded wait that also carries its failure) and then open what it wrote
(`prepare_once`). Where each process writes its own share and process 0
then reads them all (the cache parts' image sums), process 0 waits for
every process's word (`prepare_everywhere`). The workdir's lock is taken
the same way (files.folder_lock).
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable
from typing import TypeVar

import jax

T = TypeVar("T")

# ImageNet's first preparation takes hours; a waiting process gives up after this.
PREPARE_TIMEOUT_S = 12 * 3600

# How often each name has been waited on in this process: every process makes
# the same calls in the same order, so (name, count) is the same key on all.
_calls: collections.Counter[str] = collections.Counter()


def _client():
    from jax._src import distributed  # the coordination service jax.distributed.initialize started

    return distributed.global_state.client


def prepare_once(
    what: str,
    prepare: Callable[[], T],
    open_prepared: Callable[[], T],
    *,
    is_preparer: bool,
    error_type: type[Exception] = RuntimeError,
    timeout_s: float = PREPARE_TIMEOUT_S,
) -> T:
    """`prepare()` in the preparing process; `open_prepared()` in the others,
    once it has finished.

    Every process of the group calls this with the same `what`, in the same
    order. A failure in the preparer reaches the others as `error_type`
    naming it; so does a wait longer than `timeout_s` (one line each).
    """
    if jax.process_count() == 1:
        return prepare()
    _calls[what] += 1
    key = f"alexnet_jax/prepared/{what}/{_calls[what]}"
    client = _client()
    if is_preparer:
        try:
            result = prepare()
        except BaseException as error:
            client.key_value_set(key, f"{type(error).__name__}: {error}".splitlines()[0])
            raise
        client.key_value_set(key, "ok")
        return result
    _wait_for_word(client, key, "another process", what, error_type, timeout_s)
    return open_prepared()


def prepare_everywhere(
    what: str,
    prepare: Callable[[], T],
    *,
    error_type: type[Exception] = RuntimeError,
    timeout_s: float = PREPARE_TIMEOUT_S,
) -> T:
    """`prepare()` in every process; process 0 returns only once all of them
    have finished theirs, so it may then read what every process wrote.

    Every process calls this with the same `what`, in the same order. A
    failure in another process reaches process 0 as `error_type` naming it;
    so does a wait longer than `timeout_s`. The others do not wait.
    """
    if jax.process_count() == 1:
        return prepare()
    _calls[what] += 1
    key = f"alexnet_jax/prepared_everywhere/{what}/{_calls[what]}"
    client = _client()
    try:
        result = prepare()
    except BaseException as error:
        client.key_value_set(f"{key}/{jax.process_index()}", f"{type(error).__name__}: {error}".splitlines()[0])
        raise
    client.key_value_set(f"{key}/{jax.process_index()}", "ok")
    if jax.process_index() == 0:
        for process in range(1, jax.process_count()):
            _wait_for_word(client, f"{key}/{process}", f"process {process}", what, error_type, timeout_s)
    return result


def _wait_for_word(client, key: str, who: str, what: str, error_type: type[Exception], timeout_s: float) -> None:
    """Blocks until `who` sets `key` after preparing `what`; raises
    `error_type` (one line) unless its word is "ok"."""
    logging.info("Waiting for %s to prepare %s (at most %d s)", who, what, timeout_s)
    try:
        word = client.blocking_key_value_get(key, int(timeout_s * 1000))
    except Exception as error:  # the deadline, or the coordinator gone with its process
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise error_type(
            f"waited for {who} to prepare {what}, in vain after at most {timeout_s:.0f} s ({reason}): "
            f"see that process's log"
        ) from None
    if word != "ok":
        raise error_type(f"{who} failed to prepare {what}: {word}")
