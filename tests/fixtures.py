"""Remote helpers that many test modules share (import: ``from fixtures import ...``;
``tests/`` is on the path of the driver, and so of its workers).

- ``Signal``: a gate (``raylite.testing.SignalActor`` as a 0-CPU actor): a call of
  ``sig.wait`` returns once ``sig.send`` was called.
- ``Attempts``: a counter (``CounterActor``), for counting the runs of retried tasks.
- ``blocked(sig, value)``: a task that waits at ``sig`` and then returns ``value``.
"""

from __future__ import annotations

import raylite
from raylite.testing import CounterActor, SignalActor

Signal = raylite.remote(num_cpus=0)(SignalActor)
Attempts = raylite.remote(num_cpus=0)(CounterActor)


@raylite.remote
def blocked(sig, value=None):
    raylite.get(sig.wait.remote())
    return value
