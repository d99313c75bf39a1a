"""Training jobs for ``zps-worker``: the built-in digits models and user jobs."""

from zps.jobs.runner import BUILTIN_JOBS, JobContext, resolve_job, train_digits

__all__ = ["BUILTIN_JOBS", "JobContext", "resolve_job", "train_digits"]
