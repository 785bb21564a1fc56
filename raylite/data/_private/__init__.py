"""raylite.data's implementation: the plan (ops), the streaming executor, splits."""
