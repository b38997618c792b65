"""Evaluation, sampling and verifier scoring over several processes (`accelerate launch`).

The sharding sits above the generation backend: it decides which problems this process does, never
how a backend batches them. Under `accelerate launch --num_processes N -m mathtune eval|sample|verifier
score` every process loads the model on its own device (accelerate's PartialState picks it), takes
its share of the problems and appends its rows, whole lines fsynced, to its own part file
(`shards/<name>.rank<r>-of-<N>.jsonl` beside the output file). After a barrier, rank 0 merges the
rows of every part into the one output file in problem order, written atomically, and removes the
parts; it then scores and writes metrics as one process would.

- Which process does a problem depends only on the problems and N: problems are dealt longest first
  (by an expected length) to the least loaded rank, ties to the lower rank and the lower id, so the
  ranks finish together and a relaunch deals the same way.
- Resume is per problem, not per rank: the rows of the merged file and of every part file (written
  by a launch with any N) count as done; a relaunch, with this N or another, does only the rest.
- Every check that can refuse a launch runs on all ranks and is agreed on (`raise_if_any`): a rank
  never waits at a barrier for a rank that has stopped. Rank 0 prints the one error line.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from mathtune.errors import MathtuneError
from mathtune.io import append_jsonl, atomic_write_text, read_jsonl_tolerant
from mathtune.training.distributed import launched_distributed

SHARDS_DIR = "shards"
T = TypeVar("T")


class CollectiveError(MathtuneError):
    """A refusal every rank reached together: printed by rank 0 only (the CLI skips `quiet` ones)."""

    def __init__(self, message: str, quiet: bool) -> None:
        super().__init__(message)
        self.quiet = quiet


@dataclass(frozen=True)
class Processes:
    """This process's place among the launched ones: rank 0 of 1 without `accelerate launch`."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            _state().wait_for_everyone()

    def gather(self, value: Any) -> list[Any]:
        """Every rank's `value`, in rank order, on every rank (a collective: all ranks must call it)."""
        if self.world == 1:
            return [value]
        from accelerate.utils import gather_object

        return gather_object([value])

    def raise_if_any(self, error: str | None) -> None:
        """Agree on a refusal: if any rank has an error, every rank raises (rank 0's message, or the
        first rank's with its number), so no rank is left waiting at a later barrier."""
        errors = self.gather(error)
        first = next(((rank, e) for rank, e in enumerate(errors) if e is not None), None)
        if first is not None:
            rank, message = first
            raise CollectiveError(message if rank == 0 or self.world == 1 else f"rank {rank}: {message}",
                                  quiet=not self.main)

    def refuse(self, message: str) -> None:
        """A refusal every rank reaches on its own (same config, same files): one line, from rank 0."""
        raise CollectiveError(message, quiet=not self.main)

    def agreed(self, check: Callable[[], T]) -> T:
        """`check()` on every rank; a MathtuneError on any rank stops all of them together."""
        result, error = None, None
        try:
            result = check()
        except MathtuneError as exc:
            if self.world == 1:
                raise
            error = str(exc)
        self.raise_if_any(error)
        return result  # type: ignore[return-value]

    def check_same(self, fingerprint: dict[str, Any], what: str,
                   first_difference: Callable[[dict[str, Any], dict[str, Any]], str | None]) -> None:
        """Refuse a launch whose ranks would produce different things (other files, data or settings
        on another machine): every rank's fingerprint must equal rank 0's (`first_difference`:
        fingerprint.first_difference, passed in: fingerprint.py imports from evaluate/)."""
        if self.world == 1:
            return
        fingerprints = self.gather(fingerprint)
        for rank, other in enumerate(fingerprints[1:], start=1):
            difference = first_difference(fingerprints[0], other)
            if difference:
                raise CollectiveError(f"rank {rank} of {self.world} would write {what} of other settings than "
                                      f"rank 0 ({difference}); launch every process with the same command, "
                                      "files and data", quiet=not self.main)


def current_processes() -> Processes:
    """Rank and world size from accelerate's PartialState under `accelerate launch` (gloo on CPUs,
    NCCL on GPUs; it also makes this rank's GPU the current one), else rank 0 of 1."""
    if not launched_distributed():
        return Processes()
    state = _state()
    return Processes(state.process_index, state.num_processes)


def _state() -> Any:
    import torch
    from accelerate import PartialState

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    # More processes than GPUs on this machine (2 on one GPU, as scripts/gpu_check.sh runs): accelerate
    # would give rank 1 a cuda:1 that is not there; the processes share the GPU ("cuda" is cuda:0 for
    # all) and their few collectives (a barrier, small objects) go over gloo.
    return PartialState(cpu=gpus < int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


@contextmanager
def main_process_output(path: Path, open_guard: Callable[[], AbstractContextManager[Path]]) -> Iterator[Path]:
    """The output dir for all ranks: rank 0 prepares and locks it (`open_guard`, e.g. io.output_dir_guard),
    the others wait for it; a refusal there (a non-empty dir, a held lock) stops every rank."""
    processes = current_processes()
    if processes.world == 1:
        with open_guard() as prepared:
            yield prepared
        return
    with ExitStack() as stack:
        error, prepared = None, path
        if processes.main:
            try:
                prepared = stack.enter_context(open_guard())
            except MathtuneError as exc:
                error = str(exc)
        processes.raise_if_any(error)
        yield prepared
        processes.barrier()  # rank 0 keeps the lock until every rank is done with the dir


def assign(ids: list[str], weights: list[float], world: int) -> dict[str, int]:
    """The rank of every problem id: longest first to the least loaded rank (ties: lower rank; equal
    weights: lower id first), so ranks get about the same work and any launch with `world` processes
    deals exactly the same way."""
    if len(set(ids)) != len(ids):
        raise MathtuneError("problem ids repeat; processes cannot share the problems out by id")
    loads = [0.0] * world
    owner: dict[str, int] = {}
    for weight, problem_id in sorted(zip(weights, ids, strict=True), key=lambda pair: (-pair[0], pair[1])):
        rank = min(range(world), key=lambda r: (loads[r], r))
        owner[problem_id] = rank
        loads[rank] += max(weight, 1.0)
    return owner


class ShardedRows:
    """One JSONL output (predictions.jsonl, samples.jsonl, verifier_scores.jsonl) written by all ranks.

    `ids` are the rows' ids in output order, `weights` their expected cost. With one process and no
    part files the rows go straight into the output file, as they always did; otherwise each rank
    appends to its own part file and `merge` writes the output file."""

    def __init__(self, path: Path, processes: Processes, ids: list[str], weights: list[float],
                 keep: Callable[[dict[str, Any]], bool] = lambda row: True) -> None:
        self.path, self.processes, self.ids, self.weights, self.keep = path, processes, ids, weights, keep
        self.parts_dir = path.parent / SHARDS_DIR
        self.owner = assign(ids, weights, processes.world)
        self.direct = processes.world == 1 and not self._parts()
        self.own_part = self.parts_dir / f"{path.stem}.rank{processes.rank}-of-{processes.world}.jsonl"

    def _parts(self) -> list[Path]:
        return sorted(self.parts_dir.glob(f"{self.path.stem}.rank*-of-*.jsonl")) if self.parts_dir.is_dir() else []

    def merged_only(self) -> bool:
        """No part files: whatever is done is in the output file."""
        return not self._parts()

    def done(self) -> dict[str, dict[str, Any]]:
        """The finished rows by id: the output file's and every part's, whichever launch wrote them.
        A part holding rows its rank was not dealt (another world size's dir with other problems)
        is refused: nothing says those rows belong to this work."""
        rows = {row["id"]: row for row in read_jsonl_tolerant(self.path) if self.keep(row)}
        known = set(self.ids)
        for part in self._parts():
            rank, world = _part_rank(part)
            owner = self.owner if world == self.processes.world else assign(self.ids, self.weights, world)
            for row in read_jsonl_tolerant(part):
                if not self.keep(row):
                    continue
                if row["id"] not in known or owner[row["id"]] != rank:
                    raise MathtuneError(f"{part} was written by a launch of {world} processes for other problems "
                                        f"(row {row['id']!r}); remove {self.parts_dir} or -o another directory")
                rows.setdefault(row["id"], row)
        return rows

    def mine(self, done: dict[str, Any]) -> list[int]:
        """Positions (in output order) of the unfinished rows this rank was dealt."""
        return [index for index, row_id in enumerate(self.ids)
                if row_id not in done and self.owner[row_id] == self.processes.rank]

    def append(self, rows: list[dict[str, Any]]) -> None:
        if self.direct:
            append_jsonl(self.path, rows)
            return
        self.own_part.parent.mkdir(parents=True, exist_ok=True)
        append_jsonl(self.own_part, rows)

    def merge(self) -> list[dict[str, Any]] | None:
        """After every rank's last append: on rank 0, every row in output order (the output file
        rewritten from the parts, atomically, then the parts removed); None on the other ranks."""
        self.processes.barrier()
        rows: list[dict[str, Any]] | None = None
        error = None
        if self.processes.main:
            try:
                done = self.done()
                missing = [row_id for row_id in self.ids if row_id not in done]
                if missing:
                    raise MathtuneError(f"{len(missing)} rows missing after every rank finished (first "
                                        f"{missing[0]!r}): {self.path.parent} must be one directory all "
                                        "machines share (a network file system)")
                rows = [done[row_id] for row_id in self.ids]
                if self._parts():
                    atomic_write_text(self.path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
                    shutil.rmtree(self.parts_dir, ignore_errors=True)
            except MathtuneError as exc:
                error = str(exc)
        self.processes.raise_if_any(error)
        return rows


def expected_length(problem: Any) -> float:
    """A problem's expected cost in characters: its prompt grows with the question, and the solution
    generated tends to be as long as the reference's."""
    return float(len(problem.question) + len(problem.solution))


def _part_rank(part: Path) -> tuple[int, int]:
    """(rank, world) from `<name>.rank<r>-of-<N>.jsonl`."""
    rank, _, world = part.name.rsplit(".", 2)[-2].removeprefix("rank").partition("-of-")
    return int(rank), int(world)
