"""Many runs: sweep files, workers, and the Optuna storage they share."""
