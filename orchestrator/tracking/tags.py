"""Every MLflow tag name this project writes or reads, in one place (runs, sweeps, ``simclr runs``)."""

RUN_NAME_TAG = "simclr.run_name"  # the run's name, the key `simclr train --name` resumes by
COMPLETE_TAG = "simclr.complete"  # "true" once the run trained its last epoch
CHECKPOINT_TAG = "simclr.checkpoint"  # where the run's newest checkpoint is: a path, or a bucket URI
RESTART_TAG_PREFIX = "simclr.restart."  # simclr.restart.N: one per restart after a lost worker or node
KIND_TAG = "simclr.kind"  # "sweep" on a sweep's parent run
SWEEP_TAG = "simclr.sweep"  # the sweep's name, on its parent and every child
TRIAL_TAG = "simclr.trial_id"
BEST_TRIAL_TAG = "simclr.best_trial"  # run name of the best trial, on the parent
STOPPED_EARLY_TAG = "simclr.stopped_early"  # "true" on trials ASHA stopped
DATA_PREPARED_BY_TAG = "simclr.data_prepared_by"  # "sweep" when a trial trained on its sweep's prepared data
REGISTERED_TAG = "simclr.registered_model"  # "NAME/VERSION": the Model Registry version of the run's encoder
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"  # "custom_model_development": the UI opens on training runs
