"""transformer-tui's app: a Textual dashboard that runs, shows and steers the engine.

It imports engine/ and never the other way round. The engine runs in a thread worker and reports
through events (engine.events); the app turns them into a ``RunState`` (tui.state) and its panels
(tui.widgets) redraw from that state at a bounded rate.
"""
