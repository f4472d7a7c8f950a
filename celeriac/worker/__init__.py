"""The worker: a consumer that fetches in batches, executors that run tasks, a supervisor."""
