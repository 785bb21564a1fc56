"""Live views of a raylite cluster for Jupyter (ipywidgets 8), with static fallbacks.

- :class:`ClusterView`: nodes as cards (resources, store, labels, workers, tasks).
- :class:`PlacementView`: placement groups and their bundles on the nodes that hold them.
- :class:`AutoscalerView`: a timeline of demand, nodes per type, launches and failures,
  with the autoscaler's reasons.
- :class:`Timeline`: tasks per worker over time (a Gantt chart of ``raylite.timeline()``).
- :class:`ServeView`: Serve's deployments: replicas over time against their targets,
  ongoing and queued requests, and each application's topology as a graph.
- :class:`TrainView`: a Train run: per-rank metric curves, where each rank runs,
  checkpoints with their scores, restarts.
- :class:`LLMView`: LLM engines: tokens/s, running and waiting sequences, KV blocks,
  prefix-cache hits, time to first token.
- :func:`progress`: ``raylite.get`` with a progress bar.

Views only read the state API and the event stream (the ServeView: Serve's status); one
shared, throttled thread keeps all live views current, and stops at
``raylite.shutdown()``. Rendering is done by pure
functions of state dicts (``raylite.widgets.render``), which also give each view a static
HTML and text form where no widget frontend exists (GitHub, nbviewer, plain Python).
ipywidgets is imported only when a view is made.
"""

from __future__ import annotations

from raylite.widgets.autoscaler import AutoscalerView
from raylite.widgets.cluster import ClusterView
from raylite.widgets.llm import LLMView
from raylite.widgets.placement import PlacementView
from raylite.widgets.progress import progress
from raylite.widgets.serve import ServeView
from raylite.widgets.timeline import Timeline
from raylite.widgets.train import TrainView

__all__ = ["ClusterView", "PlacementView", "AutoscalerView", "Timeline", "ServeView",
           "TrainView", "LLMView", "progress"]
