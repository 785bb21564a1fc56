"""Serve's implementation: controller, replicas, proxy, routers and their policies."""
