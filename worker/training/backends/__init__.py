"""Training backends. Each module exposes `train(job: TrainJob) -> TrainResult`."""
