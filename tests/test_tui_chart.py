"""The loss chart's decisions (tui/chart.py): round ticks, the recent window, the log scale; and the
drawn chart of a long run: the train curve from the first step to the last, on top."""

from __future__ import annotations

import math

from tui.chart import chart_view, log_ticks, recent_start, step_ticks, tick_label, value_ticks


def test_value_ticks_are_round_and_enclose_the_range():
    ticks, spacing = value_ticks(1.0, 9.7, most=5)
    assert ticks == [0.0, 2.5, 5.0, 7.5, 10.0] and spacing == 2.5
    assert [tick_label(t, spacing) for t in ticks] == ["0.0", "2.5", "5.0", "7.5", "10.0"]
    ticks, spacing = value_ticks(2.33, 6.98, most=4)
    assert ticks == [2.0, 4.0, 6.0, 8.0]
    assert [tick_label(t, spacing) for t in ticks] == ["2", "4", "6", "8"]
    ticks, spacing = value_ticks(1.234, 1.262, most=4)  # the recent window of a long run
    assert ticks[0] <= 1.234 and ticks[-1] >= 1.262 and spacing == 0.01
    assert tick_label(ticks[1], spacing) == "1.24"


def test_value_ticks_of_a_flat_series_still_span_something():
    ticks, _ = value_ticks(3.0, 3.0)
    assert ticks[0] < 3.0 < ticks[-1]


def test_log_ticks_are_round_values_inside_the_range():
    assert log_ticks(1.0, 10.0) == [1.0, 2.0, 5.0, 10.0]
    assert log_ticks(1.2, 9.7) == [1.5, 2.0, 3.0, 5.0, 7.0]
    narrow = log_ticks(2.1, 2.9)
    assert all(2.1 <= t <= 2.9 for t in narrow)


def test_step_ticks_are_whole_round_steps():
    assert step_ticks(1, 360) == [100, 200, 300]
    assert step_ticks(1, 3600) == [1000, 2000, 3000]
    assert step_ticks(5, 5) == [5]


def test_the_recent_window_is_the_last_tenth_of_the_steps_and_fits_y_to_it():
    steps = list(range(1, 3601))
    losses = [9.7 * math.exp(-s / 400) + 1.2 for s in steps]
    view = chart_view((steps, losses), ([250, 3500], [5.0, 1.3]), ([1000, 3600], [20.0, 38.0]),
                      window="recent")
    assert recent_start(3600, 1) == 3600 - 359.9
    assert view.train.xs[0] >= 3240 and view.train.xs[-1] == 3600
    assert view.val.xs == [3500] and view.bleu.xs == [3600]
    assert view.y_range[0] <= min(view.train.ys) and view.y_range[1] >= max(view.train.ys)
    assert view.y_range[1] - view.y_range[0] < 0.2  # zoomed in: the whole run spans 1.2..10.9


def test_log_scale_plots_log10_of_the_losses_with_labels_in_loss_units():
    steps = list(range(1, 101))
    losses = [10.0 / s ** 0.5 for s in steps]
    view = chart_view((steps, losses), ([], []), ([], []), log=True)
    assert view.log and view.train.ys[0] == 1.0  # log10(10)
    assert [round(10 ** t, 9) for t in view.y_ticks] == [float(label) for label in view.y_labels]
    assert view.y_range[0] <= min(view.train.ys) and view.y_range[1] >= max(view.train.ys)


def test_a_few_steps_have_a_window_of_at_least_twenty_steps():
    view = chart_view(([1, 2, 3, 4, 5], [5, 4, 3, 2, 1]), ([], []), ([], []), window="recent")
    assert view.train.xs == [1, 2, 3, 4, 5]
