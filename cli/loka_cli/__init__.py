"""`loka`: the command line for TrainingRuns (also `kubectl loka`). It stands on the core (`loka_api`), talks to the
API server with the `kubernetes` client like kubectl (kubeconfig, `--context`, `--namespace`), and never imports
the operator or the trainer."""
