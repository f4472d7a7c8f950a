"""Celery's ``celery.utils`` import paths that user code relies on (only those)."""
