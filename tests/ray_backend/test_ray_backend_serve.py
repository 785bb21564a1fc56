"""raylite.serve's tests, unchanged, on a real Ray cluster: the controller, proxy and
replicas are Ray actors made through the seam (``conftest.py``).

Left out, each for its reason (the rest of those modules runs here):
- the fault tests (``test_a_killed_replica_is_replaced``, ``test_a_dead_proxy_is_replaced``,
  ``test_failed_health_check_replaces_the_replica``): they find and kill raylite's
  worker processes;
- tests that redeploy or wait for replicas in loops (``test_redeploying_new_code...``,
  ``test_user_config_reaches_running_replicas``, ``test_graceful_shutdown...``,
  ``test_requests_spread_over_replicas...``, ``test_full_queue_answers_503``,
  ``test_a_client_that_disconnects_cancels_its_request``): each starts several Ray
  workers (seconds each on this 2-core machine) and would take the Ray tests past their
  budget of a few minutes; they use nothing the kept tests do not;
- ``test_values_become_responses``, ``test_longest_prefix_wins``,
  ``test_external_scaler_endpoint`` (they pass on Ray: 13-24 s each here) and the rest of
  ``test_serve_http``: the proxy's routing and REST code is the same on both backends,
  and the Ray tests have a budget of a few minutes;
- ``test_put_declarative_config_then_delete_shuts_serve_down``: it shuts Serve down,
  which the module's fixture owns.
"""

from __future__ import annotations

import pytest
from test_serve_handles import (  # noqa: F401  (collected here, with this directory's fixtures)
    test_batching_with_a_batch_size_function,
    test_calls_methods_and_await,
    test_composition_and_responses_passed_into_calls,
    test_streaming_through_a_handle,
)
from test_serve_http import (  # noqa: F401
    test_replica_error_is_a_500_with_its_text_and_the_proxy_stays_up,
    test_streaming_response_arrives_piece_by_piece,
    test_topology_in_the_rest_api,
)

pytestmark = pytest.mark.timeout(240)


def test_serve_runs_on_ray_actors(serve_url):
    import ray

    from raylite import serve

    @serve.deployment(ray_actor_options={"num_cpus": 0})
    def echo(request):
        return "on ray"

    serve.run(echo.bind(), name="ray-probe", route_prefix="/ray-probe")
    try:
        import httpx

        assert httpx.get(f"{serve_url}/ray-probe", timeout=30).text == "on ray"
        # Serve's controller is a Ray actor, in Ray's actor table
        controller = ray.get_actor("SERVE_CONTROLLER", namespace="serve")
        assert isinstance(controller, ray.actor.ActorHandle)
    finally:
        serve.delete("ray-probe")
