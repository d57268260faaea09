"""The path of a run: the driver (Ray session, MLflow run, TorchTrainer) and what runs on its workers."""
