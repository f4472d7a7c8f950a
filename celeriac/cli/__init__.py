"""The ``celeriac`` command line (Celery's ``celery`` command, same flags)."""
