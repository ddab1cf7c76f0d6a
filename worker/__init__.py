"""Celery tasks and the training pipeline. Heavy libraries (torch, transformers, peft, trl) are
imported inside functions, never at module level, so a worker can fork safely."""
