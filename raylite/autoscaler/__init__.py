"""The autoscaler: adds and removes (virtual) nodes of declared node types to fit the
demand, and learns which types the provider cannot supply right now.

```python
import raylite
from raylite import autoscaler

raylite.init(num_cpus=0)           # or init(autoscaler={...}) to start both at once
scaler = autoscaler.start({
    "node_types": {
        "cpu-spot":     {"resources": {"CPU": 2}, "max_workers": 4},
        "cpu-ondemand": {"resources": {"CPU": 2}, "max_workers": 4},
        "gpu":          {"resources": {"CPU": 4, "GPU": 1}, "labels": {"acc": "T4"}},
    },
    "idle_timeout_s": 30,
})
scaler.provider.set_unavailable("cpu-spot")   # the local provider's demo knobs
raylite.util.state.get_autoscaler_status()    # what it sees and did, and why
```

Pieces: :mod:`~raylite.autoscaler.policy` (a pure function: demand, nodes, node types,
availability -> launches and terminations with reasons; its bin packing is in
:mod:`~raylite.autoscaler.packing`), :mod:`~raylite.autoscaler.provider`
(:class:`NodeProvider` and :class:`LocalNodeProvider`), :mod:`~raylite.autoscaler.monitor`
(the loop). Differences from Ray: the loop is a thread of the driver that started it,
not a process beside the head; it manages only nodes of its declared types (the nodes
``init()`` started are never removed); configuration is a dict or dataclass, not a YAML
file with a head node type and ``node_config``.
"""

from __future__ import annotations

from raylite.autoscaler.config import NODE_TYPE_LABEL, AutoscalerConfig, NodeTypeConfig
from raylite.autoscaler.monitor import Autoscaler, get, start, stop
from raylite.autoscaler.policy import Decision, availability_scores, decide
from raylite.autoscaler.provider import LocalNodeProvider, NodeProvider
from raylite.autoscaler.sdk import request_resources

__all__ = ["Autoscaler", "AutoscalerConfig", "NodeTypeConfig", "NodeProvider",
           "LocalNodeProvider", "Decision", "decide", "availability_scores", "start", "stop",
           "get", "request_resources", "NODE_TYPE_LABEL"]
