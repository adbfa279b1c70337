"""The batch job on a Ray cluster: one actor per engine set, the driver streams files to them.

* Each actor (:class:`BatchActor`) builds one :class:`BatchWorker`: its models load once, in the
  actor's constructor, and again only when Ray restarts a dead actor (``max_restarts`` =
  BATCH_ACTOR_RESTARTS).
* Actors are sized from the settings: BATCH_CPUS_PER_ACTOR CPUs each (the engines' thread counts
  LLM_THREADS, STT_THREADS, TTS_THREADS, EMBEDDING_THREADS are capped to it, so the threads of all
  actors on a node sum to at most its cores), BATCH_GPUS_PER_ACTOR GPUs each.
* The driver walks IN_DIR lazily and keeps at most BATCH_INFLIGHT_PER_ACTOR files per actor in
  flight; a task carries a file's path, never its bytes. Actors read the file and write the outputs
  to OUT_DIR themselves (a shared filesystem on a multi-node cluster) and return a small record.
* Retries are bookkept by the driver (``max_task_retries=0``): when an actor dies, the file it was
  working on counts one attempt and goes back in the queue (to any live actor); the files queued
  behind it go back without losing an attempt. A file whose attempts exceed BATCH_MAX_RETRIES + 1
  is recorded as failed. The dead actor gets no work until Ray has restarted it (a ping answers);
  when every actor is gone for good the job stops (a rerun resumes).
* The driver alone appends to the manifest, once per file.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from typing import Any, Callable, Iterable, Iterator

from ..errors import MissingDependency
from .inputs import Task
from .manifest import BatchError
from .worker import BatchWorker, JobSpec

log = logging.getLogger("spark_voice.batch")

RESTART_WAIT_S = 900.0  # how long an actor may take to start, or to restart when no other actor is left


def import_ray():
    try:
        import ray
    except ImportError as exc:
        raise MissingDependency("ray", "ray", str(exc)) from None
    return ray


class BatchActor:
    """The body of a Ray actor (wrapped with ray.remote at run time, so no import of Ray here)."""

    def __init__(self, spec: JobSpec, index: int) -> None:
        logging.getLogger("spark_voice").setLevel(logging.WARNING)  # no per-turn INFO lines from actors
        self.index = index
        self.worker = BatchWorker(spec)

    def ready(self) -> dict[str, Any]:
        return {"worker": self.worker.name, "load_s": round(self.worker.load_seconds, 3),
                "providers": self.worker.providers()}

    def ping(self) -> str:
        return self.worker.name

    def process(self, task: Task) -> dict[str, Any]:
        rec = self.worker.process(task)
        rec["actor"] = self.index
        return rec


def engine_threads(settings: Any, stages: Iterable[str]) -> int:
    """The most threads one engine of the job uses (engines of one actor run one stage at a time,
    except the LLM and the TTS of an answer, which overlap as in the single-process pipeline)."""
    stages = set(stages)
    t = [settings.stt_threads]
    if "llm" in stages:
        t += [settings.llm_threads, settings.embedding_threads]
    if "tts" in stages:
        t.append(settings.tts_threads)
    return max(t)


def size_actors(settings: Any, stages: Iterable[str], actors: int | None, cluster_cpus: float,
                cluster_gpus: float) -> tuple[int, int, float]:
    """(actors, CPUs per actor, GPUs per actor) from the settings and the cluster's resources."""
    want = engine_threads(settings, stages)
    n = actors if actors else settings.batch_actors
    cpus = settings.batch_cpus_per_actor
    total = max(1, int(cluster_cpus))
    if cpus <= 0:  # auto: the engines' threads, shared out when N actors were asked for
        cpus = min(want, total) if not n else max(1, min(want, total // n))
    gpus = settings.batch_gpus_per_actor
    if gpus < 0:  # auto: a GPU each when the engines run on CUDA and the cluster has GPUs
        gpus = 1.0 if settings.backend == "cuda" and cluster_gpus >= 1 else 0.0
    if not n:
        n = max(1, total // cpus)
        if gpus > 0:
            n = max(1, min(n, int(math.floor(cluster_gpus / gpus + 1e-9))))
    if n * cpus > total:
        raise BatchError(f"{n} actors x {cpus} CPUs is more than the cluster's {total} CPUs: lower --actors or "
                         "BATCH_CPUS_PER_ACTOR")
    if gpus > 0 and n * gpus > cluster_gpus + 1e-9:
        raise BatchError(f"{n} actors x {gpus} GPUs is more than the cluster's {cluster_gpus:g} GPUs: lower "
                         "--actors or BATCH_GPUS_PER_ACTOR (0.5 puts two actors on one GPU)")
    return n, int(cpus), float(gpus)


def actor_settings_env(spec: JobSpec, cpus: int) -> dict[str, str]:
    env = dict(spec.settings_env)
    for key in ("LLM_THREADS", "STT_THREADS", "TTS_THREADS", "EMBEDDING_THREADS", "RAG_THREADS"):
        if key in env:
            env[key] = str(max(1, min(int(env[key]), cpus)))
    return env


class RayExecutor:
    mode = "ray"

    def __init__(self, spec: JobSpec, settings: Any, *, address: str | None = None, actors: int | None = None,
                 echo: Callable[[str], None] | None = None, init_kwargs: dict | None = None) -> None:
        self.ray = import_ray()
        self.spec, self.settings = spec, settings
        self.address, self.n_requested = address, actors
        self.echo = echo or (lambda _m: None)
        self.init_kwargs = init_kwargs or {}
        self.actors: list[Any] = []
        self.inflight: list[int] = []
        self.workers = 0
        self._own_ray = False
        self.retried = 0  # files sent again after an actor died
        self.lost_actors: set[int] = set()

    def ready(self) -> None:  # replaced by run_batch to time the start-up
        pass

    # ------------------------------------------------------------------ start / stop
    def start(self) -> None:
        ray, s = self.ray, self.settings
        if not ray.is_initialized():
            kwargs = dict(include_dashboard=False, logging_level=logging.WARNING, configure_logging=True)
            kwargs.update(self.init_kwargs)
            ray.init(address=self.address, **kwargs)
            self._own_ray = True
        res = ray.cluster_resources()
        n, cpus, gpus = size_actors(s, self.spec.stages, self.n_requested, res.get("CPU", 1), res.get("GPU", 0))
        spec = JobSpec(**{**self.spec.__dict__, "settings_env": actor_settings_env(self.spec, cpus)})
        actor_cls = ray.remote(BatchActor)
        self.actors = [actor_cls.options(num_cpus=cpus, num_gpus=gpus, max_restarts=s.batch_actor_restarts,
                                         max_task_retries=0).remote(spec, i) for i in range(n)]
        self.inflight = [0] * n
        refs = {a.ready.remote(): i for i, a in enumerate(self.actors)}
        infos, errors = {}, []
        for ref, i in refs.items():
            try:  # a cluster too busy to place the actor would otherwise keep us waiting forever
                infos[i] = ray.get(ref, timeout=RESTART_WAIT_S)
            except Exception as exc:  # the constructor raised (model missing ...), the process died, timeout
                errors.append(f"actor {i}: {_cause(exc)}")
                self.lost_actors.add(i)
        if not infos:
            raise BatchError("no Ray actor could start: " + "; ".join(errors))
        for e in errors:
            log.warning("batch: %s", e)
            self.echo(f"warning: {e}")
        self.workers = len(infos)
        loads = [v["load_s"] for v in infos.values()]
        nodes = len({v["worker"].split(":")[0] for v in infos.values()})
        self.echo(f"ray: {len(infos)} actor(s) x {cpus} CPU{'' if cpus == 1 else 's'}"
                  + (f" + {gpus:g} GPU" if gpus else "") + f" on {nodes} node(s), models loaded in {max(loads):.1f} s")
        self.ready()

    def close(self) -> None:
        ray = self.ray
        for a in self.actors:
            try:
                ray.kill(a)
            except Exception:
                pass
        self.actors = []
        if self._own_ray and ray.is_initialized():
            ray.shutdown()

    # ------------------------------------------------------------------ the loop
    def run(self, tasks: Iterable[Task]) -> Iterator[dict[str, Any]]:
        ray = self.ray
        from ray.exceptions import RayActorError

        it = iter(tasks)
        first = next(it, None)
        if first is None:
            return
        self.start()
        per_actor = max(1, int(self.settings.batch_inflight_per_actor))
        max_attempts = 1 + int(self.settings.batch_max_retries)
        healthy = set(range(len(self.actors))) - self.lost_actors
        pending: dict[Any, tuple[Task, int, int]] = {}  # ref -> (task, actor, submission number)
        pings: dict[Any, tuple[int, float]] = {}  # ping of a dead actor -> (actor, since)
        retry: deque[Task] = deque()
        deaths: dict[int, tuple[set[int], int]] = {}  # actor -> (files lost in its last death, the one running)
        queued = [first]
        seq = 0
        exhausted = False
        while True:
            while healthy:  # fill the window: the least busy healthy actor gets the next file
                idx = min(healthy, key=lambda i: self.inflight[i])
                if self.inflight[idx] >= per_actor:
                    break
                nxt: Task | None = None
                if retry:
                    nxt = retry.popleft()
                elif queued:
                    nxt = queued.pop()
                elif not exhausted:
                    nxt = next(it, None)
                    exhausted = nxt is None
                if nxt is None:
                    break
                seq += 1
                pending[self.actors[idx].process.remote(nxt)] = (nxt, idx, seq)
                self.inflight[idx] += 1
            if not pending:
                if exhausted and not retry:
                    return  # done; an actor still restarting is not waited for
                now = time.monotonic()
                for ref, (idx, since) in list(pings.items()):
                    if now - since > RESTART_WAIT_S:  # e.g. its node is gone and nowhere else fits it
                        del pings[ref]
                        self.lost_actors.add(idx)
                        self.echo(f"warning: actor {idx} did not come back in {RESTART_WAIT_S:.0f} s")
                if not pings:
                    left = len(retry) + (0 if exhausted else 1)
                    raise BatchError(f"every Ray actor died for good; {left}{'' if exhausted else '+'} files not "
                                     "processed (run the same command again to resume)")
            ready, _ = ray.wait(list(pending) + list(pings), num_returns=1, timeout=5.0)
            for ref in ready:
                if ref in pings:
                    idx, _since = pings.pop(ref)
                    try:
                        ray.get(ref)
                        healthy.add(idx)  # restarted, models loaded again
                    except RayActorError as exc:
                        self.lost_actors.add(idx)
                        self.workers -= 1
                        log.warning("batch: actor %d is gone: %s", idx, _cause(exc))
                        self.echo(f"warning: actor {idx} is gone: {_cause(exc)}")
                    continue
                task, idx, n = pending.pop(ref)
                self.inflight[idx] -= 1
                try:
                    rec = ray.get(ref)
                except RayActorError as exc:
                    if idx in healthy:  # no work for it until a ping says it is back
                        healthy.discard(idx)
                        pings[self.actors[idx].ping.options(max_task_retries=-1).remote()] = (idx, time.monotonic())
                    # of the files an actor lost in one death, only the oldest was running; the others
                    # were queued behind it and go back without losing an attempt
                    lost = deaths.get(idx)
                    if lost is None or n not in lost[0]:
                        lost = deaths[idx] = self._lost_in_death(pending, idx, n)
                    running = n == lost[1]
                    if running and task.attempt >= max_attempts:
                        yield _died(task, exc)
                        continue
                    if running:
                        task.attempt += 1
                    self.retried += 1
                    retry.append(task)
                    continue
                except Exception as exc:  # an error outside BatchWorker.process's own handling
                    yield _died(task, exc, error_type=type(exc).__name__)
                    continue
                yield rec

    def _lost_in_death(self, pending: dict[Any, tuple[Task, int, int]], idx: int,
                       n: int) -> tuple[set[int], int]:
        """(submission numbers of the files actor `idx` lost, the one it was running): the failed
        file and every other unfinished one sent to it; files it finished before dying (results
        ready, not yet collected) are not lost."""
        ray = self.ray
        others = [(ref, m) for ref, (_t, i, m) in pending.items() if i == idx]
        seqs = {n}
        if others:
            ready, _ = ray.wait([r for r, _m in others], num_returns=len(others), timeout=0)
            finished = set()
            for ref in ready:
                try:
                    ray.get(ref, timeout=0)
                    finished.add(ref)
                except Exception:
                    pass  # lost too
            seqs |= {m for ref, m in others if ref not in finished}
        return seqs, min(seqs)


def _cause(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    # Ray's messages are long; the first line and the line naming the Python error tell the story
    key = [ln for ln in text if "Error" in ln and ln is not text[0]][-1:] if text else []
    return " ".join([text[0][:300]] + [k.strip()[:300] for k in key]) if text else type(exc).__name__


def _died(task: Task, exc: BaseException, error_type: str = "WorkerDied") -> dict[str, Any]:
    return {"file": task.rel, "sha256": task.sha256, "size": task.size, "mtime_ns": task.mtime_ns,
            "status": "error", "stage": "worker", "error_type": error_type,
            "error": f"the worker died {task.attempt} time(s) while processing this file "
                     f"({type(exc).__name__}: {_cause(exc)})" if error_type == "WorkerDied"
            else f"{error_type}: {_cause(exc)}",
            "attempts": task.attempt, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
