"""The ML pipeline's plain functions: data, validation, training, gate, registry, drift, scoring."""
