"""The ML pipeline's plain functions, one job per module.

contract (dataset files, contract, validation of a file) · model (the scikit-learn pipeline) ·
training (data sets, candidate + MLflow run) · promotion (gate under lock + compare-and-set,
reconciliation) · registry (reads and tag names) · champion (loading by version) · monitoring
(drift verdict + MLflow run) · scoring · lineage · gate (pure decisions) · drift (Evidently) ·
validation (rules) · dataset (reading tables, feature roles) · datagen · stages (DVC entry points).
"""
