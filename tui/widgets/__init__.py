"""One module per panel of the dashboard; each draws from a tui.state.DashboardState."""
