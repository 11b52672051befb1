"""The attribute names a study stores on Optuna: the study's (parent run, fingerprint) and each
trial's (point, seed, MLflow run, outcome, the runner's bookkeeping flags)."""

ATTR_PARENT = "mlflow_parent_run_id"  # study: the MLflow parent run
ATTR_FINGERPRINT = "rho.fingerprint"  # study: ``StudySpec.fingerprint`` of the spec that created it
ATTR_KEY, ATTR_POINT, ATTR_SEED = "rho.key", "rho.point", "rho.seed"  # trial: ``Point.key``, overrides, seed
ATTR_RUN, ATTR_REASON = "mlflow_run_id", "failure_reason"  # trial: its MLflow child run, why it failed
ATTR_METRIC_PREFIX, ATTR_DURATION = "metric.", "duration_s"  # trial: final metrics, seconds it ran
ATTR_SAMPLED = "rho.sampled"  # trial: drawn by the sampler (counts against ``search.n_trials``)
ATTR_SURPLUS = "rho.surplus"  # trial: asked for after the search budget ran out; nothing ran
ATTR_DEVICE_SECONDS = "cost.device_seconds"  # trial: device-seconds its run trained so far (per epoch)
ATTR_DUPLICATE = "rho.duplicate"  # trial: a point another trial had already taken; nothing ran
