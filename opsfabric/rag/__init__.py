"""The RAG pipeline: corpus → chunks → embeddings → versioned Qdrant collections → answers → evaluation.

Plain functions only (no Prefect import): ``tasks/ingest.py``, ``tasks/rag.py`` and the DVC stage
CLI (``python -m opsfabric.rag.stages``) call them. Heavy libraries (torch, sentence-transformers,
llama-index, qdrant-client, ragas) are imported inside the functions that use them.
"""
