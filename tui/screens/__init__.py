"""One module per screen: the dashboard of one run (with how it starts runs), the list of runs,
the dialogs."""
