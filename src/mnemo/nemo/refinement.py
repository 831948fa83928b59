"""NeMo's refinement: greedy causal pruning of a neuron set that removes the memorization signal,
whole layers first, then single neurons, both passes from the last value layer (mid block) back
to the first, and within a layer in the selection's order. A group is dropped when the set without
it scores strictly below the refinement threshold (tau, or the relaxed threshold when no selection
reached tau), as the official code decides.

Two ways to run the same search: `sequential` evaluates one candidate set per UNet call, as the
official code does; `batched` evaluates many candidate sets in one UNet call with a per-sample
neuron mask. Greedy pruning's decisions depend on each other, so it scores a speculative tree of
the likeliest next decisions (`speculation_tree`) and follows the branch the scores take. Both
make the same decisions; the batched one makes far fewer UNet calls, at the cost of scoring sets
off the path taken (free on a GPU with room in the batch, not on a CPU). One caveat: in a relaxed
search the threshold is itself a score, so a test that removes a neuron of negligible effect lands
on it within float noise, and the two modes (different batch shapes) may decide it differently.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from mnemo.nemo.blocking import ValueLayer, neuron_count
from mnemo.nemo.selection import as_mask
from mnemo.nemo.signal import SearchSignal

MODES = ("batched", "sequential")

# The sets the pruning accepted, widest first, with their scores (None: not scored yet).
Chain = list[tuple[torch.Tensor, float | None]]


@dataclass
class _PromptState:
    latents: torch.Tensor     # kept samples' x_T
    cond: torch.Tensor        # (1, tokens, dim)
    unblocked: torch.Tensor   # unblocked signal maps of the kept samples, prepared for the score
    tau: float = float("nan")  # a blocked set's score must reach it (<=) to remove the memorization
    threshold: float = float("nan")  # refinement drops a group when the set without it scores below this


class Refinement:
    """Candidate tests of one search mode, and the greedy pruning built on them."""

    def __init__(self, signal: SearchSignal, mode: str):
        if mode not in MODES:
            raise ValueError(f"config key 'localize.mode': {mode!r} is not one of {MODES}")
        self.signal = signal
        self.mode = mode

    def scores(self, state: _PromptState, sets: Sequence[torch.Tensor]) -> torch.Tensor:
        """Blocked score of each neuron set for the prompt (see `SearchSignal.scores`)."""
        return self.signal.scores(state.latents, state.cond, state.unblocked, sets)

    def sets_per_call(self, state: _PromptState) -> int:
        """Candidate sets scored per UNet call: one in sequential mode, as many as fit the batch in batched mode."""
        if self.mode == "sequential":
            return 1
        return max(1, self.signal.settings.batch_size // (len(state.latents) * self.signal.rows_per_sample))

    def first_passing(self, state: _PromptState, sets: Sequence[torch.Tensor],
                      passes: Callable[[float], bool]) -> tuple[int, list[float]]:
        """Index of the first set whose score `passes` (len(sets) if none), evaluating lazily.

        Sequential mode scores one set per UNet call; batched mode scores as many sets as fit
        in one call and stops at the first chunk that contains a passing set.
        """
        per_call = self.sets_per_call(state)
        seen: list[float] = []
        for begin in range(0, len(sets), per_call):
            chunk = self.scores(state, sets[begin:begin + per_call]).tolist()
            for offset, score in enumerate(chunk):
                seen.append(score)
                if passes(score):
                    return begin + offset, seen
        return len(sets), seen

    def refine(self, state: _PromptState, selection: Sequence[Sequence[int]], score: float,
               layers: Sequence[ValueLayer], chain: Chain) -> tuple[torch.Tensor, float]:
        """NeMo's refinement of a selection (per-layer index lists in selection order): whole layers,
        then single neurons, each pass from the last layer back to the first.

        The official code keeps the selection as lists, duplicates included, and un-blocks one
        neuron with `list.remove`. Removing one copy of a neuron listed twice leaves the blocked set
        as it is, so that test's score is the current set's: such tests are decided without a
        UNet call, with the same outcome.
        """
        total = neuron_count(layers)
        current = as_mask(selection, total)
        layer_groups = [as_mask([selected], total) for selected in reversed(selection) if selected]
        current, score = self.prune(state, current, score, layer_groups, chain)
        remaining = Counter()
        order = []
        for selected in reversed(selection):
            if any(current[n] for n in selected):
                order += list(selected)
                remaining.update(selected)
        position = 0
        while position < len(order):
            if remaining[order[position]] > 1:   # another copy keeps it blocked: the set is unchanged
                if score < state.threshold:
                    remaining[order[position]] -= 1
                position += 1
                continue
            end = position
            while end < len(order) and remaining[order[end]] == 1:
                end += 1
            groups = [as_mask([[n]], total) for n in order[position:end]]
            current, score = self.prune(state, current, score, groups, chain)
            for n in order[position:end]:
                if not current[n]:
                    remaining[n] = 0
            position = end
        return current, score

    def prune(self, state: _PromptState, current: torch.Tensor, score: float,
              groups: list[torch.Tensor], chain: Chain) -> tuple[torch.Tensor, float]:
        """Greedy pruning: drop each group (in order) if the set without it scores below the threshold.

        Each decision depends on the ones before it, so batched mode scores a speculative tree
        of the next decisions in one call and follows the branch the scores take (see
        `speculation_tree`). Returns the pruned set and its score (every set it returns has
        been scored); appends every set it accepts, with its score, to `chain`.
        """
        position, kept = 0, 0
        per_call = self.sets_per_call(state)
        while position < len(groups):
            keep_rate = (kept + 1) / (position + 2)   # Laplace estimate from this pass's decisions
            tree = speculation_tree(current, groups[position:], keep_rate, per_call)
            outcome = dict(zip(tree, self.scores(state, list(tree.values())).tolist(), strict=True))
            decisions: tuple[bool, ...] = ()
            while decisions in tree:
                dropped = outcome[decisions] < state.threshold
                if dropped:
                    current, score = tree[decisions], outcome[decisions]
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
