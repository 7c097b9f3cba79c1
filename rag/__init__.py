"""Cited-answer service: hybrid retrieval over your documents, with citations you can check."""
