"""raylite.llm's tests, unchanged, on a real Ray cluster: the OpenAI app is Serve
deployments on Ray actors and batch inference is raylite.data on Ray tasks and actors
(``conftest.py``).

Left out, for the Ray tests' budget of a few minutes (each test here costs Ray worker
starts of seconds on this 2-core machine): the chat, raw-SSE, error and abort tests of
``test_llm_serve`` (the same app and proxy code as the ones kept) and the row-error tests
of ``test_llm_data`` but one; the engine's own tests need no cluster."""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")
pytest.importorskip("openai")

from test_llm_data import (  # noqa: E402,F401  (collected here, with this directory's fixtures)
    gpt,
    test_batch_inference_adds_the_generated_columns,
    test_failing_rows_continue_with_their_error,
)
from test_llm_serve import (  # noqa: E402,F401
    client,
    dirs,
    llm_url,
    test_completion_equals_the_engine_offline,
    test_models_are_listed,
    test_streaming_pieces_add_up_with_usage_last,
)

pytestmark = pytest.mark.timeout(240)
