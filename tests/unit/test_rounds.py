"""The deterministic merge of a parallel round (`pick_winner`): pure, no Docker."""

import itertools

from policies import decide, load_policy, pick_winner

POLICY = load_policy("default")


def sequential_choice(best, threshold, candidates, direction="minimize"):
    """Evaluate the same proposals one after another against the round's starting best, keeping the
    best of those that beat it (ties: smaller diff, then earlier): the reference for the merge."""
    chosen = None
    for i, (value, size) in enumerate(candidates):
        if value is None or decide(POLICY, direction=direction, best=best, candidate=value,
                                   threshold=threshold)[0] != "keep":
            continue
        if chosen is None:
            chosen = i
            continue
        old_value, old_size = candidates[chosen]
        better = value < old_value if direction == "minimize" else value > old_value
        if better or (value == old_value and size < old_size):
            chosen = i
    return chosen


def test_best_improvement_wins():
    assert pick_winner(POLICY, direction="minimize", best=2.0, threshold=0.01,
                       candidates=[(1.9, 3), (1.8, 5), (2.5, 1)]) == 1


def test_maximize_picks_the_highest():
    assert pick_winner(POLICY, direction="maximize", best=0.5, threshold=0.01,
                       candidates=[(0.6, 3), (0.7, 5), (0.4, 1)]) == 1


def test_no_improvement_beyond_the_threshold_keeps_nothing():
    assert pick_winner(POLICY, direction="minimize", best=2.0, threshold=0.1,
                       candidates=[(1.95, 1), (None, 1), (2.0, 1)]) is None


def test_tie_goes_to_the_smaller_diff_then_the_earlier_proposal():
    assert pick_winner(POLICY, direction="minimize", best=2.0, threshold=0.01,
                       candidates=[(1.5, 9), (1.5, 2), (1.5, 2)]) == 1


def test_failed_runs_never_win():
    assert pick_winner(POLICY, direction="minimize", best=2.0, threshold=0.01,
                       candidates=[(None, 1), (1.995, 1)]) is None


def test_merge_equals_sequential_evaluation_in_any_finishing_order():
    """Whatever order the runs finish in, the winner is the one sequential evaluation picks."""
    values = [None, 1.7, 1.9, 1.7, 2.3, 1.95]
    sizes = [1, 4, 2, 3, 1, 1]
    candidates = list(zip(values, sizes))
    expected = sequential_choice(2.0, 0.02, candidates)
    assert expected == 3
    for order in itertools.permutations(range(len(candidates)), 4):
        subset = [candidates[i] for i in sorted(order)]
        got = pick_winner(POLICY, direction="minimize", best=2.0, threshold=0.02, candidates=subset)
        assert got == sequential_choice(2.0, 0.02, subset)
