"""Axolotl's loss watchdog: patience counts logged steps above the threshold in a row."""
import pytest

from ds_tp.train.watchdog import LossDiverged, LossWatchdog


def test_stops_after_patience_steps_in_a_row():
    dog = LossWatchdog(5.0, 2)
    dog.check(1, 6.0)
    dog.check(2, 4.0)  # back under: the count restarts
    dog.check(3, 6.0)
    with pytest.raises(LossDiverged, match="above loss_watchdog_threshold 5 for 2 logged steps in a row .up to step 4"):
        dog.check(4, 7.0)


def test_default_patience_and_off_without_threshold():
    dog = LossWatchdog(1.0, None)
    dog.check(1, 2.0)
    dog.check(2, 2.0)
    with pytest.raises(LossDiverged):
        dog.check(3, 2.0)
    LossWatchdog(None, 1).check(1, 1e9)  # no threshold: never stops


def test_early_stopping_counts_evaluations_without_improvement():
    from ds_tp.train.watchdog import EarlyStopping
    early = EarlyStopping(2)
    assert [early.should_stop(x) for x in (3.0, 2.0, 2.5, 1.5, 1.5, 1.6)] == [False, False, False, False, False, True]
    assert early.best == 1.5 and not EarlyStopping(None).should_stop(9.0)


def test_early_stopping_counts_on_after_a_resume():
    from ds_tp.train.watchdog import EarlyStopping
    before = EarlyStopping(3)
    [before.should_stop(x) for x in (2.0, 2.1, 2.2)]
    resumed = EarlyStopping(3, before.state())
    assert resumed.should_stop(2.3) and not EarlyStopping(3).should_stop(2.3)
