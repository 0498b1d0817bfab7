"""Using trained runs: restoring parameters, predictions, ensembles."""
