"""NeMo's refinement: greedy causal pruning of a neuron set that removes the memorization signal,
whole layers first, then single neurons, both passes from the last value layer (mid block) back
to the first, and within a layer in the selection's order. A group is dropped when the set without
it scores strictly below the refinement threshold (tau, or the relaxed threshold when no selection
reached tau), as the official code decides.

The search of one prompt is written once, as a generator that yields the candidate sets it needs
scored (`Request`) and receives their scores; how the requests are scored is the search mode's:
- `sequential`: one candidate set per UNet call, one prompt after another, as the official code;
- `lockstep`: every prompt's next test in one batched UNet call per round (`run_lockstep`): the
  same tests as one by one, nothing speculative, far fewer calls. With `witness_first` a test is
  first scored on one sample, the one that decided the prompt's last test: a set fails when any
  sample scores above the edge, so where that sample alone does, the others are never drawn, and
  only where it passes are they drawn in the next round (fewer rows, more calls: for CPUs);
- `speculative`: one prompt at a time, many candidate sets per call: greedy pruning's decisions
  depend on each other, so it scores a tree of the likeliest next decisions (`speculation_tree`) and
  follows the branch the scores take. Fewest calls; the sets off the path cost compute, free on a
  GPU with room in the batch, not on a CPU.
All make the same decisions. A set's score depends on the batch it is computed in by float noise
(about 2e-6 on CPU: the kernels sum in another order), so a lockstep or speculative score within
`SETTLE_BAND` of a decision's edge is scored again alone, in the one-by-one batch shape, and the
decision is made on that score (`Refinement.settle`), as is a relaxed threshold. In a relaxed search
the threshold is itself a score, so a test that removes a neuron of no effect lands exactly on it
when every set is scored in batch 1, as the official code scores them; a drop therefore needs the
score below the threshold by more than `TIE_TOLERANCE`.
"""

from __future__ import annotations

import heapq
import time
from collections import Counter
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, replace
from typing import TypeVar

import torch
from tqdm.auto import tqdm

from mnemo.nemo.blocking import ValueLayer, neuron_count
from mnemo.nemo.selection import as_mask
from mnemo.nemo.signal import SearchSignal, set_scores

MODES = ("lockstep", "sequential", "speculative")
# Scores closer than this to the refinement threshold count as equal to it (not below): what one
# set's score differs by between batch shapes on CPU is about 2e-6.
TIE_TOLERANCE = 1e-5
# Scores of a batched search this close to a decision's edge are settled in the one-by-one batch
# shape. Above the batch-shape noise (2e-6 in fp32 on CPU), so that no decision can flip; below
# TIE_TOLERANCE less that noise, so that an exact tie at the threshold is not scored twice.
SETTLE_BAND = 5e-6
# Seconds between refreshes of the lockstep search's progress bar.
PROGRESS_INTERVAL = 10.0

# The sets the pruning accepted, widest first, with their scores (None: not scored yet).
Chain = list[tuple[torch.Tensor, float | None]]
Result = TypeVar("Result")


@dataclass
class _PromptState:
    latents: torch.Tensor     # kept samples' x_T
    cond: torch.Tensor        # (1, tokens, dim)
    unblocked: torch.Tensor   # unblocked signal maps of the kept samples, prepared for the score
    tau: float = float("nan")  # a blocked set's score must reach it (<=) to remove the memorization
    threshold: float = float("nan")  # refinement drops a group when the set without it scores below this
    fails_from: float | None = None  # the pending test fails if any sample scores this (+ SETTLE_BAND) or more
    witness: int = 0          # the sample that decided the prompt's last test (scored first with witness_first)

    @property
    def drop_edge(self) -> float:
        """Refinement drops a group when the set without it scores below this (see TIE_TOLERANCE)."""
        return self.threshold - TIE_TOLERANCE

    def drops(self, score: float) -> bool:
        return score < self.drop_edge


def _drawn_samples(state: _PromptState, samples: torch.Tensor) -> _PromptState:
    """The prompt's state restricted to some of its samples (itself when every one is drawn)."""
    if len(samples) == len(state.latents):
        return state
    return replace(state, latents=state.latents[samples], unblocked=state.unblocked[samples])


# What a search asks for: the candidate sets of one prompt to score; it is sent their scores back.
Request = tuple[_PromptState, list[torch.Tensor]]
Search = Generator[Request, list[float], Result]


@dataclass
class SearchCost:
    """UNet calls and seconds a search took; in lockstep a round's calls and seconds are shared
    among its prompts in proportion to the rows each put in the batch."""
    unet_calls: float = 0.0
    seconds: float = 0.0


class Refinement:
    """Candidate tests of one search mode, and the greedy pruning built on them."""

    def __init__(self, signal: SearchSignal, mode: str, witness_first: bool = False):
        if mode not in MODES:
            raise ValueError(f"config key 'localize.mode': {mode!r} is not one of {MODES}")
        self.signal = signal
        self.mode = mode
        self.witness_first = witness_first and mode == "lockstep"

    def scores(self, state: _PromptState, sets: Sequence[torch.Tensor]) -> torch.Tensor:
        """Blocked score of each neuron set for the prompt (see `SearchSignal.scores`)."""
        return self.scores_many([(state, list(sets))])[0]

    def scores_many(self, requests: Sequence[Request]) -> list[torch.Tensor]:
        """Scores of several prompts' requests, in one batched signal computation: the max over
        each set's samples."""
        return set_scores(self.sample_scores_many(requests))

    def sample_scores_many(self, requests: Sequence[Request]) -> list[torch.Tensor]:
        """Per-sample scores of several prompts' requests: (sets, samples) each."""
        return self.signal.sample_scores_many([(state.latents, state.cond, state.unblocked, sets)
                                               for state, sets in requests])

    def settle(self, state: _PromptState, candidate: torch.Tensor, score: float, edge: float | None = None) -> float:
        """The score a decision is made on: in a batched mode, a score within SETTLE_BAND of the
        decision's `edge` (always, without an edge) is recomputed with the set alone, in the batch
        shape the one-by-one search scores every set in, so every mode decides on the same numbers."""
        if self.mode == "sequential" or (edge is not None and abs(score - edge) >= SETTLE_BAND):
            return score
        return float(self.scores(state, [candidate])[0])

    def sets_per_call(self, state: _PromptState) -> int:
        """Candidate sets one test round scores for a prompt: as many as fit the batch when speculating,
        otherwise one (the next real test)."""
        if self.mode != "speculative":
            return 1
        return max(1, self.signal.settings.batch_size // (len(state.latents) * self.signal.rows_per_sample))

    # -- driving searches ---------------------------------------------------------------------
    def run(self, search: Search[Result], cost: SearchCost | None = None,
            count_calls: Callable[[], int] = lambda: 0) -> Result:
        """Drive one prompt's search to its end, scoring each request on its own."""
        began, calls = time.perf_counter(), count_calls()
        try:
            state, sets = next(search)
            while True:
                state, sets = search.send(self.scores(state, sets).tolist())
        except StopIteration as stop:
            if cost is not None:
                cost.unet_calls += count_calls() - calls
                cost.seconds += time.perf_counter() - began
            return stop.value

    def run_lockstep(self, searches: Sequence[Search[Result]], costs: Sequence[SearchCost],
                     count_calls: Callable[[], int] = lambda: 0) -> list[Result]:
        """Drive many prompts' searches together: each round scores every pending request in one
        batched signal computation (`scores_many`), then sends each prompt its scores.
        A prompt's setup (its first request) is timed and counted on its own. The progress bar
        (finished prompts, rounds, scored rows) is there because a long search otherwise prints
        nothing for an hour."""
        results: list[Result] = [None] * len(searches)  # type: ignore[list-item]
        pending: dict[int, Request] = {}
        # miniters=0: tqdm's default adapts miniters to the prompt rate, after which update(0) never redraws
        bar = tqdm(total=len(searches), desc="lockstep search", unit="prompt", mininterval=PROGRESS_INTERVAL,
                   miniters=0)
        rounds = scored_rows = 0

        def advance(index: int, scores: list[float] | None) -> None:
            try:
                pending[index] = next(searches[index]) if scores is None else searches[index].send(scores)
            except StopIteration as stop:
                results[index] = stop.value
                pending.pop(index, None)
                bar.update()

        for index in range(len(searches)):
            began, calls = time.perf_counter(), count_calls()
            advance(index, None)
            costs[index].unet_calls += count_calls() - calls
            costs[index].seconds += time.perf_counter() - began
        probed: dict[int, float] = {}   # prompts whose witness sample passed: its score; the rest come next
        while pending:
            began, calls = time.perf_counter(), count_calls()
            order = list(pending)
            drawn = [self._samples_to_draw(pending[i], i in probed) for i in order]
            scored = self.sample_scores_many([(_drawn_samples(pending[i][0], samples), pending[i][1])
                                              for i, samples in zip(order, drawn, strict=True)])
            rows = [len(samples) * len(pending[i][1]) for i, samples in zip(order, drawn, strict=True)]
            round_calls, round_seconds = count_calls() - calls, time.perf_counter() - began
            rounds, scored_rows = rounds + 1, scored_rows + sum(rows)
            bar.set_postfix(rounds=rounds, rows=scored_rows, refresh=False)
            bar.update(0)   # shows the round count between finished prompts, at most every mininterval
            for i, samples, n, per_sample in zip(order, drawn, rows, scored, strict=True):
                began, calls = time.perf_counter(), count_calls()
                state, sets = pending[i]
                if len(samples) == len(state.latents):          # every sample drawn
                    if len(sets) == 1:
                        state.witness = int(per_sample[0].argmax())
                    advance(i, per_sample.max(dim=1).values.tolist())  # settling a near-tie: the prompt's alone
                elif i not in probed:                           # the witness alone
                    score = float(per_sample[0, 0])
                    if score >= state.fails_from + SETTLE_BAND:
                        advance(i, [score])   # fails, whatever the others score: a failing test's score is not used
                    else:
                        probed[i] = score
                else:                                           # the others, after the witness passed
                    full = torch.empty(len(state.latents))
                    full[samples] = per_sample[0]
                    full[state.witness] = probed.pop(i)
                    state.witness = int(full.argmax())
                    advance(i, [float(full.max())])
                costs[i].unet_calls += round_calls * n / sum(rows) + count_calls() - calls
                costs[i].seconds += round_seconds * n / sum(rows) + time.perf_counter() - began
        bar.close()
        return results

    def _samples_to_draw(self, request: Request, probed: bool) -> torch.Tensor:
        """Which samples of a prompt's pending test the next round scores: its witness alone, the
        others once the witness passed, or every one (without `witness_first`, for a request of
        several sets or one without a failure edge)."""
        state, sets = request
        every = torch.arange(len(state.latents))
        if not self.witness_first or len(sets) != 1 or state.fails_from is None or len(every) == 1:
            return every
        return every[every != state.witness] if probed else every[state.witness:state.witness + 1]

    # -- the search's steps, as generators of requests ----------------------------------------
    def first_passing(self, state: _PromptState, sets: Sequence[torch.Tensor]) -> Search[tuple[int, list[float]]]:
        """Index of the first set that removes the signal, scoring at most tau (len(sets) if none),
        testing lazily in order; also the scores seen. A speculative search scores as many sets per
        request as fit the batch and stops at the first chunk that contains a passing set."""
        per_call = self.sets_per_call(state)
        seen: list[float] = []
        state.fails_from = state.tau
        for begin in range(0, len(sets), per_call):
            chunk = yield state, list(sets[begin:begin + per_call])
            for offset, score in enumerate(chunk):
                score = self.settle(state, sets[begin + offset], score, state.tau)
                seen.append(score)
                if score <= state.tau:
                    return begin + offset, seen
        return len(sets), seen

    def refine(self, state: _PromptState, selection: Sequence[Sequence[int]], score: float,
               layers: Sequence[ValueLayer], chain: Chain,
               after_layers: Callable[[int, int], object] = lambda kept, tests: None,
               ) -> Search[tuple[torch.Tensor, float]]:
        """NeMo's refinement of a selection (per-layer index lists in selection order): whole layers,
        then single neurons, each pass from the last layer back to the first. `after_layers` hears
        the neurons the layer pass kept and the single-neuron tests to come (one round each).

        The official code keeps the selection as lists, duplicates included, and un-blocks one
        neuron with `list.remove`. Removing one copy of a neuron listed twice leaves the blocked set
        as it is, so that test's score is the current set's: such tests are decided without a
        UNet call, with the same outcome.
        """
        total = neuron_count(layers)
        current = as_mask(selection, total)
        layer_groups = [as_mask([selected], total) for selected in reversed(selection) if selected]
        current, score = yield from self.prune(state, current, score, layer_groups, chain)
        remaining = Counter()
        order = []
        for selected in reversed(selection):
            if any(current[n] for n in selected):
                order += list(selected)
                remaining.update(selected)
        after_layers(int(current.sum()), len(order))
        position = 0
        while position < len(order):
            if remaining[order[position]] > 1:   # another copy keeps it blocked: the set is unchanged
                score = self.settle(state, current, score, state.drop_edge)
                if state.drops(score):
                    remaining[order[position]] -= 1
                position += 1
                continue
            end = position
            while end < len(order) and remaining[order[end]] == 1:
                end += 1
            groups = [as_mask([[n]], total) for n in order[position:end]]
            current, score = yield from self.prune(state, current, score, groups, chain)
            for n in order[position:end]:
                if not current[n]:
                    remaining[n] = 0
            position = end
        return current, score

    def prune(self, state: _PromptState, current: torch.Tensor, score: float,
              groups: list[torch.Tensor], chain: Chain) -> Search[tuple[torch.Tensor, float]]:
        """Greedy pruning: drop each group (in order) if the set without it scores below the threshold.

        Each decision depends on the ones before it; a speculative search asks for a tree of the
        next decisions at once and follows the branch the scores take (see `speculation_tree`),
        the others for the next test alone. Returns the pruned set and its score (every set it
        returns has been scored); appends every set it accepts, with its score, to `chain`.
        """
        position, kept = 0, 0
        per_call = self.sets_per_call(state)
        while position < len(groups):
            keep_rate = (kept + 1) / (position + 2)   # Laplace estimate from this pass's decisions
            tree = speculation_tree(current, groups[position:], keep_rate, per_call)
            state.fails_from = state.drop_edge   # the group is kept
            scores = yield state, list(tree.values())
            outcome = dict(zip(tree, scores, strict=True))
            decisions: tuple[bool, ...] = ()
            while decisions in tree:
                tested = self.settle(state, tree[decisions], outcome[decisions], state.drop_edge)
                dropped = state.drops(tested)
                if dropped:
                    current, score = tree[decisions], tested
                    chain.append((current, score))
                else:
                    kept += 1
                position += 1
                decisions += (dropped,)
        return current, score


def speculation_tree(current: torch.Tensor, groups: Sequence[torch.Tensor], keep_rate: float,
                     size: int) -> dict[tuple[bool, ...], torch.Tensor]:
    """The `size` most likely next tests of greedy pruning: the neuron set each one scores, keyed
    by the decisions before it.

    Decision i (True = group i dropped) changes the set every later test removes from, so the
    possible futures form a binary tree; with a group kept at rate `keep_rate` (independently),
    expanding it best-first gives the tests whose outcomes resolve the most decisions per
    call. The key () is the next real test; a key is only present with its parent.
    """
    tree: dict[tuple[bool, ...], torch.Tensor] = {}
    frontier = [(-1.0, 0, (), current)]   # (-probability of reaching the test, tie-break, decisions, set held)
    pushed = 1
    while frontier and len(tree) < size:
        negative, _, decisions, base = heapq.heappop(frontier)
        tested = base & ~groups[len(decisions)]
        tree[decisions] = tested
        if len(decisions) + 1 < len(groups):
            for dropped, chance, next_base in ((True, 1 - keep_rate, tested), (False, keep_rate, base)):
                heapq.heappush(frontier, (negative * chance, pushed, decisions + (dropped,), next_base))
                pushed += 1
    return tree
