"""transformer-tui's app: a Textual client of run directories that starts, shows and steers runs.

It imports engine/ and never the other way round. A run is a process of its own (engine/runs.py);
the app follows its events.jsonl in thread workers (tui/follow.py), folds the events into a
``DashboardState`` (tui.state), and its panels (tui.widgets) redraw from that state at a bounded rate.
The App (tui/app.py) routes between the screens in tui/screens/.
"""
