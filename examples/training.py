"""Data-parallel training on the mesh: every host runs this same program.

    wgmesh lab exec h1 -- python examples/training.py        (and the same on h2, h3, ...)

- The hosts elect a supervisor (`LeaderElection`, timeouts 0.5-1 s); the others are workers.
- Each round the supervisor gives one shard of work to each active worker (`request` with retries and an
  idempotency key, so a retried task is computed once); a worker answers with a gradient of the model
  (300k float32 values, 1.2 MB), encoded as `--encoding` says (float16 by default: 2x smaller; int8 with
  a scale per block: 4x; float32: lossless, see examples/gradients.py).
- The supervisor averages the gradients, steps the model and broadcasts it (signed, relayed) with its
  version; every host keeps the last model it received.
- When the supervisor's host dies, the others elect a new one, which resumes from the last broadcast
  model (the version it holds) instead of starting again.
- A worker that becomes slow (`wgmesh p2p send HOST train.slow '{"seconds": 3}'`) is retired by the
  supervisor's `WorkerPool`; a spare takes its place and its open task is given to another worker.

It prints one JSON object per line (`t` is monotonic seconds): `supervisor` (this host was elected),
`resumed` (the version it starts from), `pool` (active workers and spares), `round` (version, loss,
bytes received), `replaced`, and `model` (a worker received a new version). Ctrl-C stops it.
Identity and directory come from the agent's state directory (WGMESH_STATE_DIR, set by `lab exec`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from gradients import ENCODINGS, decode, encode

from keys.store import load_key
from keys.types import IdentityPrivateKey
from p2p import (
    ElectionTiming,
    LeaderElection,
    Message,
    Node,
    NodeConfig,
    P2PError,
    ReplacementPolicy,
    WorkerPerformance,
    WorkerPool,
)

SIZE = 300_000  # model parameters: a 1.2 MB float32 gradient
LEARNING_RATE = 0.5
# Wider than Raft's 150-300 ms (bench.election measures those): a supervisor busy averaging 1.2 MB
# gradients on a loaded machine must not be deposed for a late heartbeat.
TIMING = ElectionTiming(election_timeout_min=0.5, election_timeout_max=1.0, heartbeat_interval=0.1)
# Several handlers per peer: election messages from the supervisor must not wait behind a task.
# Every host is connected to every other over the tunnels, so a broadcast needs no relaying (ttl 1).
CONFIG = NodeConfig(
    heartbeat_interval=0.2,
    dead_after=1.5,
    backoff_initial=0.05,
    backoff_max=1.0,
    handlers_per_peer=4,
    gossip_ttl=1,
)


def say(event: str, **fields: Any) -> None:
    print(json.dumps({"t": round(time.monotonic(), 4), "event": event, **fields}), flush=True)


def target() -> np.ndarray:
    """What the model learns: the same on every host (a fixed seed)."""
    return np.random.default_rng(15).normal(0.0, 1.0, SIZE).astype(np.float32)


class Trainer:
    def __init__(self, node: Node, election: LeaderElection, args: argparse.Namespace) -> None:
        self.node = node
        self.election = election
        self.args = args
        self.target = target()
        self.version = 0
        self.model = np.zeros(SIZE, dtype=np.float32)
        self.slow_s = 0.0
        self.rng = np.random.default_rng(node.node_id)
        node.handle("train.task", self.on_task)
        node.handle("train.model", self.on_model)
        node.handle("train.slow", self.on_slow)

    # --- worker ----------------------------------------------------------------------------------------

    async def on_task(self, message: Message) -> dict[str, Any]:
        task = message.data
        if not isinstance(task, dict) or type(task.get("version")) is not int:
            raise ValueError("a task is {version, shard}")
        if "model" in task:  # the supervisor's model wins, also over a newer one from its predecessor
            self.adopt(task["version"], decode(task["model"]))
        if task["version"] != self.version:
            return {"have": self.version}  # the supervisor sends the model with the task
        await asyncio.sleep(self.args.work_seconds + self.slow_s)
        encoded = await asyncio.to_thread(self.gradient, self.model)
        return {"version": self.version, "gradient": encoded}

    def gradient(self, model: np.ndarray) -> dict[str, Any]:
        noise = self.rng.normal(0.0, 0.05, SIZE).astype(np.float32)
        return encode((model - self.target) + noise, self.args.encoding)

    async def on_model(self, message: Message) -> None:
        data = message.data
        if isinstance(data, dict) and type(data.get("version")) is int and data["version"] > self.version:
            self.adopt(data["version"], decode(data["model"]))
            say("model", version=self.version, supervisor=message.sender)

    async def on_slow(self, message: Message) -> dict[str, float]:
        seconds = message.data.get("seconds") if isinstance(message.data, dict) else None
        if not isinstance(seconds, int | float) or not 0 <= seconds <= 60:
            raise ValueError('send {"seconds": N} with 0 <= N <= 60')
        self.slow_s = float(seconds)
        say("slowed", seconds=self.slow_s)
        return {"slow_s": self.slow_s}

    def adopt(self, version: int, model: np.ndarray) -> None:
        self.version, self.model = version, model

    # --- supervisor ------------------------------------------------------------------------------------

    async def supervise(self, term: int) -> None:
        loop = asyncio.get_running_loop()
        say("supervisor", term=term)
        say("resumed", version=self.version)
        workers = sorted(p for p in self.node.connected_peers)
        pool = WorkerPool(
            active=workers[: self.args.workers],
            spares=workers[self.args.workers :],
            now=loop.time(),
            performance=WorkerPerformance(stale_after=2.0, task_timeout=30.0),
            policy=ReplacementPolicy(slower_than=4.0, min_latency=1.0, cooldown=2.0),
        )
        say("pool", active=list(pool.active), spares=list(pool.spares))
        while True:
            started = loop.time()
            gradients, received = await self.round(pool, term)
            # the arithmetic runs in a thread (numpy releases the GIL): the event loop keeps answering
            self.model, loss, encoded = await asyncio.to_thread(self.step, self.model, gradients)
            self.version += 1
            await self.node.broadcast("train.model", {"version": self.version, "model": encoded})
            say(
                "round",
                version=self.version,
                loss=round(loss, 6),
                workers=len(gradients),
                received_bytes=received,
                seconds=round(loop.time() - started, 3),
            )

    def step(
        self, model: np.ndarray, gradients: list[np.ndarray]
    ) -> tuple[np.ndarray, float, dict[str, Any]]:
        model = model - LEARNING_RATE * np.mean(gradients, axis=0)
        loss = float(np.mean((model - self.target) ** 2))
        return model, loss, encode(model, "float32")

    async def round(self, pool: WorkerPool, term: int) -> tuple[list[np.ndarray], int]:
        """One gradient per shard; tasks follow the pool's replacements."""
        loop = asyncio.get_running_loop()
        shards = max(1, len(pool.active))
        running: dict[str, tuple[int, asyncio.Task[dict[str, Any]]]] = {}
        done: dict[str, np.ndarray] = {}
        received = 0

        def give(task_id: str, worker: int | None) -> None:
            if worker is None:
                return
            request = self.task(worker, task_id, term)
            running[task_id] = (worker, asyncio.create_task(request))

        for shard in range(shards):
            give(f"v{self.version}-s{shard}", pool.assign(f"v{self.version}-s{shard}", loop.time()))
        while len(done) < shards:
            self.review(pool, running, give)
            unassigned = [f"v{self.version}-s{s}" for s in range(shards)]
            for task_id in unassigned:
                if task_id not in done and task_id not in running:
                    give(task_id, pool.assign(task_id, loop.time()))
            if not running:
                await asyncio.sleep(0.2)  # no worker to give tasks to: wait for one to connect
                continue
            finished, _ = await asyncio.wait(
                [t for _, t in running.values()], timeout=0.25, return_when=asyncio.FIRST_COMPLETED
            )
            for task_id, (worker, request) in list(running.items()):
                if request not in finished:
                    continue
                del running[task_id]
                try:
                    answer = request.result()
                    gradient = decode(answer["gradient"])
                except (P2PError, ValueError, KeyError, TypeError) as e:
                    pool.completed(worker, task_id, False, loop.time())
                    say("task_failed", task=task_id, worker=worker, error=str(e)[:200])
                    continue
                pool.completed(worker, task_id, True, loop.time())
                done[task_id] = gradient
                received += len(answer["gradient"]["data"])
        for _, request in running.values():
            request.cancel()
        return list(done.values()), received

    def review(self, pool: WorkerPool, running: dict[str, Any], give: Any) -> None:
        now = asyncio.get_running_loop().time()
        for peer in self.node.connected_peers:
            if peer not in pool.active and peer not in pool.spares and peer not in pool.retired:
                if len(pool.active) < self.args.workers:
                    pool.add_active(peer, now)
                else:
                    pool.add_spare(peer, now)
                say("pool", active=list(pool.active), spares=list(pool.spares))
            pool.heard(peer, now)
        for event in pool.review(now):
            say(
                "replaced",
                retired=event.retired,
                replacement=event.replacement,
                reason=event.reason,
                reassigned=[list(pair) for pair in event.reassigned],
            )
            say("pool", active=list(pool.active), spares=list(pool.spares))
            for task_id, worker in event.reassigned:
                if task_id in running:
                    running.pop(task_id)[1].cancel()
                give(task_id, worker)

    async def task(self, worker: int, task_id: str, term: int) -> dict[str, Any]:
        request = {"version": self.version, "shard": task_id}
        key = f"{term}-{task_id}-{worker}"
        answer = await self.node.request(
            worker, "train.task", request, timeout=5.0, retries=2, idempotency_key=key
        )
        if isinstance(answer, dict) and "have" in answer:  # it missed a broadcast: send the model along
            request["model"] = encode(self.model, "float32")
            answer = await self.node.request(
                worker, "train.task", request, timeout=5.0, retries=2, idempotency_key=key + "-model"
            )
        if not isinstance(answer, dict) or "gradient" not in answer:
            raise ValueError(f"worker {worker} answered {str(answer)[:100]}")
        return answer

    # --- both ------------------------------------------------------------------------------------------

    async def run(self) -> None:
        supervising: asyncio.Task[None] | None = None
        try:
            async for change in self.election.changes():
                leading = change.leader == self.node.node_id
                if leading and supervising is None:
                    supervising = asyncio.create_task(self.supervise(change.term))
                elif not leading and supervising is not None:
                    supervising.cancel()
                    supervising = None
                    say("follower", term=change.term, leader=change.leader)
        finally:
            if supervising is not None:
                supervising.cancel()


async def main_async(args: argparse.Namespace) -> int:
    state = Path(args.state_dir or os.environ.get("WGMESH_STATE_DIR") or "/var/lib/wgmesh")
    key = load_key(state / "identity.key", IdentityPrivateKey)
    node = Node(state / "p2p-directory.json", key, config=CONFIG)
    async with node, LeaderElection(node, timing=TIMING) as election:
        trainer = Trainer(node, election, args)
        say("started", node=node.node_id, encoding=args.encoding)
        await trainer.run()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description="Data-parallel training on the mesh (run on every host).")
    parser.add_argument("--encoding", choices=ENCODINGS, default="float16", help="gradient encoding")
    parser.add_argument("--workers", type=int, default=3, help="active workers (the others are spares)")
    parser.add_argument("--work-seconds", type=float, default=0.2, help="compute time per task")
    parser.add_argument("--state-dir", help="the agent's state directory (default: $WGMESH_STATE_DIR)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    try:
        return asyncio.run(main_async(args))
    except KeyboardInterrupt:
        return 0
    except (OSError, ValueError) as e:
        print(f"training: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
