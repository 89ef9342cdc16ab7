"""Operating the platform as a whole: lineage ("where did this come from") and the ops report.

``records`` reads MLflow, the index registry and ``dvc.lock`` into plain records (the edge);
``lineage`` and ``report`` are pure functions over those records.
"""
