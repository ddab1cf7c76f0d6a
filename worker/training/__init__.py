"""LoRA training: backends behind one interface, callbacks, model resolution, artifacts."""
