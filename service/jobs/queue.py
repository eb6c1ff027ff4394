"""huey's queue of jobs to run: SQLite in the jobs file by default, Redis when REDIS_URL is set.

A huey task names one job. huey brings the queue shared by every worker (and pod), priorities,
and retries: when part of a job fails, its task raises, and huey queues it again while retries
remain; the job then resumes where it stopped. The runner (runner.py) takes tasks from the
queue itself, inside the worker that holds the model, rather than through huey's consumer process.
"""

from __future__ import annotations

from collections.abc import Callable

import huey
from huey.api import Task

from service.settings import Settings

# What a task runs: job id, retries left -> None (set by the worker's runner).
JobHandler = Callable[[str, int], None]


class JobQueue:
    """The huey instance of one model's jobs and its one task, `run_job(job_id)`."""

    def __init__(self, settings: Settings, handler: JobHandler | None = None):
        name = f"tfms-jobs-{settings.served_model_name}"
        if settings.redis_url:
            self.huey = huey.PriorityRedisHuey(name, url=settings.redis_url, results=False, blocking=False)
        else:
            settings.jobs_db_path.parent.mkdir(parents=True, exist_ok=True)
            self.huey = huey.SqliteHuey(name, filename=str(settings.jobs_db_path), results=False)
        self.handler = handler

        @self.huey.task(retries=settings.job_retries, context=True, name="run_job")
        def run_job(job_id: str, task: Task | None = None) -> None:
            if self.handler is None:
                raise RuntimeError("no job runner in this process")
            self.handler(job_id, task.retries if task is not None else 0)

        self._run_job = run_job

    def enqueue(self, job_id: str, priority: int) -> str:
        """Queue the job's task at `priority` (higher runs first); the task's id."""
        task = self._run_job.s(job_id, priority=priority)
        self.huey.enqueue(task)
        return task.id

    def next_task(self) -> Task | None:
        """The next task due: a retry whose delay has passed goes back to the queue first."""
        for task in self.huey.read_schedule():
            self.huey.enqueue(task)
        return self.huey.dequeue()

    def execute(self, task: Task) -> None:
        """Run the task (huey requeues it if it raises and has retries left)."""
        self.huey.execute(task)

    def waiting_job_ids(self) -> set[str]:
        """Jobs whose task is in the queue or waiting to be retried."""
        tasks = [*self.huey.pending(), *self.huey.scheduled()]
        return {task.args[0] for task in tasks if task.args}
