"""The forgetting probe: fixed general prompts for measuring drift outside the tuned domain."""
