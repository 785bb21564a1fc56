"""Small models the notebooks train and serve (``raylite.models.gpt``: a character-level
GPT). Importing a model module needs torch."""
