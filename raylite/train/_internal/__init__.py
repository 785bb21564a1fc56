"""raylite.train's implementation: the driver-side controller, the coordinator actor,
the worker actors and their session, storage and metrics helpers."""
