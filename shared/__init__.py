"""Code used by both the API (`app/`) and the workers (`worker/`): settings, storage, events."""
